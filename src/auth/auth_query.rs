//! `auth_query`: the secret of a user the config does not list is looked up on the server itself, through a
//! dedicated `auth_user`, so adding a database role needs no change to shardpool. As in PgBouncer, the query gets the
//! user name as its only parameter (`$1`, sent in a Bind, never spliced into the text) and answers with the name and
//! the `pg_authid.rolpassword`-style secret; no row or a NULL secret means the user may not log in.
//!
//! Answers are cached per (database, user) for `auth_cache_ttl` (negative ones for `auth_cache_negative_ttl`), so a
//! burst of logins costs one lookup and a dropped role or changed password takes effect within the TTL. The cache is
//! bounded; a few idle `auth_user` connections per server are kept for the next lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::StoredSecret;
use crate::backend::server::{ServerConn, ServerIoError};
use crate::backend::{ConnectError, ServerTarget};
use crate::protocol::backend::{parse_data_row, put_message};
use crate::protocol::frontend::{write_bind, write_parse, write_sync};
use crate::protocol::tag;

/// Lookups run at once per server; as many idle `auth_user` connections are kept for later ones.
const LOOKUPS_PER_SERVER: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("cannot log in as auth_user: {0}")]
    Connect(#[from] ConnectError),
    #[error("auth_query failed: {0}")]
    Query(#[from] ServerIoError),
    #[error("auth_query timed out after {0:?}")]
    Timeout(Duration),
    #[error("auth_query returned {0} rows for one user")]
    TooManyRows(usize),
    #[error("auth_query must return two columns (name, secret), got {0}")]
    BadShape(usize),
    #[error("auth_query returned a secret that is not valid UTF-8")]
    NotUtf8,
}

/// What to look up with, taken from the config at each login (so a reload applies at once).
pub struct LookupSettings<'a> {
    pub query: &'a str,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub capacity: usize,
    pub timeout: Duration,
}

struct Entry {
    secret: Option<StoredSecret>,
    expires: Instant,
}

/// Idle `auth_user` connections by server (host, port, database).
type IdleConns = HashMap<(String, u16, String), Vec<Box<ServerConn>>>;

/// Cached lookups and the idle `auth_user` connections, one per proxy.
#[derive(Default)]
pub struct AuthQueryCache {
    entries: Mutex<HashMap<(String, String), Entry>>,
    idle: Mutex<IdleConns>,
    gates: Mutex<HashMap<(String, u16, String), Arc<Semaphore>>>,
}

fn server_key(target: &ServerTarget) -> (String, u16, String) {
    (target.host.clone(), target.port, target.database.clone())
}

impl AuthQueryCache {
    /// The secret of `user` in `database` (the key the cache uses: the config's database name), from the cache or
    /// from `auth_query` run as `target` (the auth_user's login to that database's primary). `Ok(None)`: no such
    /// login. Failures to reach the server are not cached.
    pub async fn lookup(
        &self,
        settings: &LookupSettings<'_>,
        database: &str,
        target: &ServerTarget,
        user: &str,
    ) -> Result<Option<StoredSecret>, LookupError> {
        let key = (database.to_owned(), user.to_owned());
        if let Some(secret) = self.cached(&key) {
            return Ok(secret);
        }
        let gate = self.gate(target);
        let work = async {
            // Never fails: the semaphore is never closed.
            let _permit = gate.acquire().await.ok();
            // A burst of logins for one user waits here for the first one's answer instead of each running it.
            if let Some(secret) = self.cached(&key) {
                return Ok(secret);
            }
            let secret = self.query(settings, target, user).await?;
            let ttl = if secret.is_some() {
                settings.ttl
            } else {
                settings.negative_ttl
            };
            self.remember(key.clone(), secret.clone(), ttl, settings.capacity);
            Ok(secret)
        };
        tokio::time::timeout(settings.timeout, work)
            .await
            .map_err(|_| LookupError::Timeout(settings.timeout))?
    }

    /// An unexpired answer for `key`: `Some(None)` is a cached "no such login".
    fn cached(&self, key: &(String, String)) -> Option<Option<StoredSecret>> {
        let entries = self.lock_entries();
        let e = entries.get(key)?;
        (e.expires > Instant::now()).then(|| e.secret.clone())
    }

    /// Caches an answer, keeping at most `capacity` entries: expired ones go first, then those closest to expiry.
    fn remember(
        &self,
        key: (String, String),
        secret: Option<StoredSecret>,
        ttl: Duration,
        capacity: usize,
    ) {
        let now = Instant::now();
        let mut entries = self.lock_entries();
        if entries.len() >= capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.expires > now);
            while entries.len() >= capacity.max(1) {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                match soonest {
                    Some(k) => entries.remove(&k),
                    None => break,
                };
            }
        }
        entries.insert(
            key,
            Entry {
                secret,
                expires: now + ttl,
            },
        );
    }

    /// The per-server limit on lookups in flight, which also bounds the `auth_user` connections a burst can open.
    fn gate(&self, target: &ServerTarget) -> Arc<Semaphore> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            gates
                .entry(server_key(target))
                .or_insert_with(|| Arc::new(Semaphore::new(LOOKUPS_PER_SERVER))),
        )
    }

    /// Forgets every cached answer (a reload may point lookups elsewhere).
    pub fn clear(&self) {
        self.lock_entries().clear();
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Cached answers, for tests and the console.
    pub fn len(&self) -> usize {
        self.lock_entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn query(
        &self,
        settings: &LookupSettings<'_>,
        target: &ServerTarget,
        user: &str,
    ) -> Result<Option<StoredSecret>, LookupError> {
        let idle_key = (target.host.clone(), target.port, target.database.clone());
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&idle_key)
            .and_then(Vec::pop);
        let mut conn = match reused {
            Some(c) => c,
            None => crate::backend::connect::connect(target, settings.timeout, 1).await?,
        };
        let rows = run_lookup(&mut conn, settings.query, user).await;
        let rows = match rows {
            Ok(r) => r,
            // A reused connection may have been closed by the server meanwhile: one retry on a fresh one.
            Err(ServerIoError::Io(_) | ServerIoError::Closed) => {
                let mut fresh =
                    crate::backend::connect::connect(target, settings.timeout, 1).await?;
                let r = run_lookup(&mut fresh, settings.query, user).await?;
                conn = fresh;
                r
            }
            Err(e) => return Err(e.into()),
        };
        if conn.status == crate::protocol::TxStatus::Idle {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(idle_key).or_default();
            if list.len() < LOOKUPS_PER_SERVER {
                list.push(conn);
            }
        }
        interpret(rows)
    }
}

/// The rows, each as its column values, of `query` with `$1 = user`.
async fn run_lookup(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
) -> Result<Vec<Vec<Option<Vec<u8>>>>, ServerIoError> {
    let mut out = BytesMut::new();
    write_parse(&mut out, b"", query.as_bytes(), &0i16.to_be_bytes());
    let mut rest = BytesMut::new();
    rest.put_i16(0); // parameter formats: all text
    rest.put_i16(1);
    rest.put_i32(i32::try_from(user.len()).unwrap_or(i32::MAX));
    rest.put_slice(user.as_bytes());
    rest.put_i16(0); // result formats: all text
    write_bind(&mut out, b"", b"", &rest);
    put_message(&mut out, tag::EXECUTE, |b| {
        b.put_u8(0);
        b.put_i32(0);
    });
    write_sync(&mut out);
    conn.stream.write_all(&out).await?;
    let mut rows = Vec::new();
    let error = conn
        .read_to_ready(|frame| {
            if frame.tag == tag::DATA_ROW {
                let values = parse_data_row(frame.body())
                    .ok_or_else(|| ServerIoError::Protocol("bad DataRow".into()))?;
                rows.push(values.into_iter().map(|v| v.map(<[u8]>::to_vec)).collect());
            }
            Ok(())
        })
        .await?;
    match error {
        Some(e) => Err(ServerIoError::Postgres(e)),
        None => Ok(rows),
    }
}

fn interpret(rows: Vec<Vec<Option<Vec<u8>>>>) -> Result<Option<StoredSecret>, LookupError> {
    if rows.len() > 1 {
        return Err(LookupError::TooManyRows(rows.len()));
    }
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    if row.len() < 2 {
        return Err(LookupError::BadShape(row.len()));
    }
    match row.into_iter().nth(1).flatten() {
        None => Ok(None),
        Some(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| LookupError::NotUtf8)?;
            // An empty secret cannot be logged in with (Postgres refuses empty passwords too).
            if text.is_empty() {
                return Ok(None);
            }
            Ok(Some(StoredSecret::parse(&text)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_expires() {
        let cache = AuthQueryCache::default();
        let key = |u: &str| ("db".to_owned(), u.to_owned());
        let long = Duration::from_secs(60);
        cache.remember(key("a"), Some(StoredSecret::Plain("x".into())), long, 2);
        cache.remember(key("b"), None, Duration::from_secs(30), 2);
        assert!(matches!(cache.cached(&key("a")), Some(Some(_))));
        assert!(
            matches!(cache.cached(&key("b")), Some(None)),
            "negative answers are cached"
        );
        // Full: the entry closest to expiry makes room.
        cache.remember(key("c"), None, long, 2);
        assert_eq!(cache.len(), 2);
        assert!(cache.cached(&key("b")).is_none());
        assert!(cache.cached(&key("c")).is_some());
        // Replacing an entry needs no room.
        cache.remember(key("a"), None, long, 2);
        assert_eq!(cache.len(), 2);
        // An expired entry is not served, and is the first to go.
        cache.remember(key("a"), None, Duration::ZERO, 2);
        assert!(cache.cached(&key("a")).is_none());
        cache.remember(key("d"), None, long, 2);
        assert!(cache.cached(&key("c")).is_some() && cache.cached(&key("d")).is_some());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn rows_are_interpreted_like_pgbouncer() {
        assert!(interpret(vec![]).unwrap().is_none());
        let row = |s: Option<&str>| vec![Some(b"u".to_vec()), s.map(|s| s.as_bytes().to_vec())];
        assert!(interpret(vec![row(None)]).unwrap().is_none());
        assert!(interpret(vec![row(Some(""))]).unwrap().is_none());
        assert!(matches!(
            interpret(vec![row(Some("md52aea419619857e8a27f0f7aa641db0c6"))]),
            Ok(Some(StoredSecret::Md5(_)))
        ));
        assert!(matches!(
            interpret(vec![row(Some("pw"))]),
            Ok(Some(StoredSecret::Plain(_)))
        ));
        assert!(matches!(
            interpret(vec![row(Some("a")), row(Some("b"))]),
            Err(LookupError::TooManyRows(2))
        ));
        assert!(matches!(
            interpret(vec![vec![Some(b"u".to_vec())]]),
            Err(LookupError::BadShape(1))
        ));
        assert!(matches!(
            interpret(vec![vec![None, Some(vec![0xff])]]),
            Err(LookupError::NotUtf8)
        ));
    }
}
