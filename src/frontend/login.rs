//! Client authentication (SCRAM-SHA-256, md5 or trust) against a user from the config or `auth_file`, or a secret
//! `auth_query` looks up on the server; then the checks Postgres makes after authentication: the database exists,
//! the admin console is for admin users only. A successful login also leaves behind what pass-through server logins
//! of that user need (`crate::auth::passthrough`). The credential math lives in `crate::auth`; this file moves it in
//! and out of protocol messages.
//!
//! Reference: PostgreSQL docs 55.2.1 "Start-up" (authentication message flow) and 55.3 "SASL Authentication".

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::ClientStream;
use crate::auth::auth_query::{LookupError, LookupSettings};
use crate::auth::md5::verify_md5_response;
use crate::auth::passthrough::ServerSecret;
use crate::auth::scram::{ScramServer, ScramVerifier, DEFAULT_ITERATIONS};
use crate::auth::{random_salt4, StoredSecret};
use crate::backend::ServerTarget;
use crate::config::{AuthMethod, Config, UserConfig, ADMIN_DATABASE};
use crate::context::Context;
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{
    authentication_md5, authentication_sasl, authentication_sasl_continue,
    authentication_sasl_final,
};
use crate::protocol::framing::{peek_header, HEADER_LEN};
use crate::protocol::frontend::{parse_password, parse_sasl_initial};
use crate::protocol::startup::StartupParams;
use crate::protocol::{tag, Frame};

/// Authentication messages are small; anything bigger is an attack or a bug.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("client I/O during login: {0}")]
    Io(#[from] std::io::Error),
    #[error("{}", .0.message)]
    Refused(ClientError),
}

impl LoginError {
    fn refused(code: &'static str, message: impl Into<String>) -> LoginError {
        LoginError::Refused(ClientError::fatal(code, message))
    }
}

pub struct LoggedIn {
    pub user: UserConfig,
    pub database: String,
    pub admin: bool,
}

pub async fn login(
    ctx: &Arc<Context>,
    stream: &mut ClientStream,
    params: &StartupParams,
) -> Result<LoggedIn, LoginError> {
    let config = ctx.config();
    let user_name = params.user();
    if params
        .params
        .get("replication")
        .is_some_and(|v| !is_false(v))
    {
        return Err(LoginError::refused(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "shardpool does not support replication connections",
        ));
    }
    let failed = || {
        LoginError::refused(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user_name}\""),
        )
    };
    let database = params.database();
    let (user, secret) = match config.user(user_name) {
        Some(u) => {
            let secret = match u.auth {
                AuthMethod::Trust => None,
                _ => Some(StoredSecret::parse(u.password.as_deref().unwrap_or(""))),
            };
            (u.clone(), secret)
        }
        None => match lookup_secret(ctx, &config, user_name, database).await? {
            Some(secret) => (UserConfig::named(user_name), Some(secret)),
            None => {
                // As Postgres does: a SCRAM exchange that can only fail, so an unknown name looks like a wrong
                // password.
                scram_with(stream, mock_verifier(user_name)).await?;
                return Err(failed());
            }
        },
    };
    let outcome = match &secret {
        None => Outcome::Accepted,
        // An md5 secret cannot serve SCRAM: auth_file and auth_query users with one log in with md5, as Postgres'
        // `md5` method lets such roles do.
        Some(s @ StoredSecret::Md5(_)) => md5_exchange(stream, &user.name, s).await?,
        Some(s) if user.auth == AuthMethod::Md5 => md5_exchange(stream, &user.name, s).await?,
        Some(s) => scram_exchange(ctx, stream, &user.name, s).await?,
    };
    if matches!(outcome, Outcome::Refused) {
        return Err(failed());
    }
    let database = database.to_owned();
    if database == ADMIN_DATABASE {
        if !config.is_admin(&user.name) {
            return Err(LoginError::refused(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "user \"{}\" is not allowed to use the admin console",
                    user.name
                ),
            ));
        }
        return Ok(LoggedIn {
            user,
            database,
            admin: true,
        });
    }
    if !config.databases.contains_key(&database) {
        return Err(LoginError::refused(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        ));
    }
    if user.logs_in_by_passthrough() {
        if let Some(learned) = secret.as_ref().and_then(|s| server_secret(s, &outcome)) {
            ctx.server_credential(&database, &user.name).learn(learned);
        }
    }
    Ok(LoggedIn {
        user,
        database,
        admin: false,
    })
}

/// Whether a startup parameter value is a boolean false as Postgres' `parse_bool` reads it ("replication=false" is an
/// ordinary connection there, not a replication one).
fn is_false(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    !v.is_empty()
        && ("false".starts_with(&v)
            || "no".starts_with(&v)
            || (v.len() >= 2 && "off".starts_with(&v))
            || v == "0")
}

async fn send(stream: &mut ClientStream, buf: &BytesMut) -> Result<(), LoginError> {
    stream.write_all(buf).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one password-family message ('p'); anything else during authentication is a protocol violation. Reads
/// exactly that message and no further: whatever a client pipelined behind it belongs to the session.
async fn read_password_message(stream: &mut ClientStream) -> Result<Frame, LoginError> {
    let violation = |m: String| LoginError::refused(sqlstate::PROTOCOL_VIOLATION, m);
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await?;
    let (msg_tag, total) = match peek_header(&header) {
        Ok(Some(h)) => h,
        Ok(None) => return Err(violation("short message header".into())),
        Err(e) => return Err(violation(e.to_string())),
    };
    if msg_tag != tag::PASSWORD {
        return Err(violation(format!(
            "expected password response, got message type {:?}",
            msg_tag as char
        )));
    }
    if total > MAX_AUTH_MESSAGE {
        return Err(violation("authentication message too long".into()));
    }
    let mut raw = BytesMut::zeroed(total);
    raw[..HEADER_LEN].copy_from_slice(&header);
    stream.read_exact(&mut raw[HEADER_LEN..]).await?;
    Ok(Frame {
        tag: msg_tag,
        raw: raw.freeze(),
    })
}

/// How a client's proof went; a SCRAM success keeps what pass-through needs.
enum Outcome {
    Refused,
    Accepted,
    Scram {
        verifier: ScramVerifier,
        client_key: [u8; 32],
    },
}

/// What the server login of a pass-through user can use after this client's login, if anything.
fn server_secret(secret: &StoredSecret, outcome: &Outcome) -> Option<ServerSecret> {
    match (secret, outcome) {
        (StoredSecret::Plain(p), _) => Some(ServerSecret::Plain(p.clone())),
        (StoredSecret::Md5(h), _) => Some(ServerSecret::Md5(h.clone())),
        (
            StoredSecret::Scram(_),
            Outcome::Scram {
                verifier,
                client_key,
            },
        ) => Some(ServerSecret::Scram {
            verifier: verifier.clone(),
            client_key: *client_key,
        }),
        (StoredSecret::Scram(_), _) => None,
    }
}

/// The secret of a user the config does not list, from `auth_query` (`None` also when lookups are not configured
/// or the database is unknown: the caller then fails the login like a wrong password). A lookup that cannot run is
/// an error of its own, 08006, since the password was never checked.
async fn lookup_secret(
    ctx: &Context,
    config: &Config,
    user: &str,
    database: &str,
) -> Result<Option<StoredSecret>, LoginError> {
    let g = &config.general;
    let Some(auth_user) = g.auth_user.as_deref() else {
        return Ok(None);
    };
    if database == ADMIN_DATABASE {
        return Ok(None);
    }
    let auth_db = g.auth_dbname.as_deref().unwrap_or(database);
    let Some(target) = auth_target(config, auth_db, auth_user) else {
        return Ok(None);
    };
    let settings = LookupSettings {
        query: &g.auth_query,
        ttl: g.auth_cache_ttl.0,
        negative_ttl: g.auth_cache_negative_ttl.0,
        capacity: g.auth_cache_size,
        timeout: g.server_connect_timeout.0,
    };
    match ctx
        .auth_cache
        .lookup(&settings, auth_db, &target, user)
        .await
    {
        Ok(secret) => Ok(secret),
        Err(e) => {
            tracing::warn!(user, database = auth_db, auth_user, error = %e, "auth_query lookup failed");
            let why = match e {
                LookupError::Connect(_) => "auth_user could not log in to the server",
                LookupError::Timeout(_) => "the auth_query lookup timed out",
                _ => "auth_query failed on the server",
            };
            Err(LoginError::refused(
                sqlstate::CONNECTION_FAILURE,
                format!("cannot check the password of user \"{user}\": {why} (details in shardpool's log)"),
            ))
        }
    }
}

/// The auth_user's login to the primary of `database` (its home shard when sharded).
fn auth_target(config: &Config, database: &str, auth_user: &str) -> Option<ServerTarget> {
    let db = config.databases.get(database)?;
    let home = db
        .sharding
        .as_ref()
        .map_or(0, |s| usize::from(s.default_shard));
    let shard = db.shard_configs(database).into_iter().nth(home)?;
    let au = config.user(auth_user)?;
    let (tls, auth) = config.server_security(db);
    let password = au.server_password().map(str::to_owned);
    let credential = match (&password, au.password.as_deref().map(StoredSecret::parse)) {
        (None, Some(StoredSecret::Md5(hash))) => {
            let c = crate::auth::passthrough::ServerCredential::default();
            c.learn(ServerSecret::Md5(hash));
            Some(Arc::new(c))
        }
        _ => None,
    };
    Some(ServerTarget {
        host: shard.host.clone(),
        port: shard.port,
        database: shard
            .server_database
            .clone()
            .unwrap_or_else(|| database.to_owned()),
        user: au.server_user().to_owned(),
        password,
        credential,
        tls,
        auth,
    })
}

async fn md5_exchange(
    stream: &mut ClientStream,
    user: &str,
    secret: &StoredSecret,
) -> Result<Outcome, LoginError> {
    let salt = random_salt4();
    let mut out = BytesMut::new();
    authentication_md5(&mut out, salt);
    send(stream, &out).await?;
    let frame = read_password_message(stream).await?;
    let Some(response) = parse_password(frame.body()) else {
        return Err(LoginError::refused(
            sqlstate::PROTOCOL_VIOLATION,
            "malformed password message",
        ));
    };
    Ok(if verify_md5_response(user, secret, salt, response) {
        Outcome::Accepted
    } else {
        Outcome::Refused
    })
}

async fn scram_exchange(
    ctx: &Context,
    stream: &mut ClientStream,
    user: &str,
    secret: &StoredSecret,
) -> Result<Outcome, LoginError> {
    let verifier = match secret {
        StoredSecret::Scram(v) => v.clone(),
        StoredSecret::Plain(p) => ctx.cached_verifier(user, p),
        StoredSecret::Md5(_) => return Ok(Outcome::Refused),
    };
    scram_with(stream, verifier).await
}

/// A verifier no password matches, with a salt stable per user name (like Postgres' `scram_mock_salt`), so probing
/// an unknown name twice looks like probing a real user twice.
fn mock_verifier(user: &str) -> ScramVerifier {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    let secret = SECRET.get_or_init(rand::random);
    let digest = Sha256::new()
        .chain_update(secret)
        .chain_update(user.as_bytes())
        .finalize();
    ScramVerifier {
        iterations: DEFAULT_ITERATIONS,
        salt: digest[..16].to_vec(),
        stored_key: rand::random(),
        server_key: rand::random(),
    }
}

async fn scram_with(
    stream: &mut ClientStream,
    verifier: ScramVerifier,
) -> Result<Outcome, LoginError> {
    let mut out = BytesMut::new();
    authentication_sasl(&mut out, &["SCRAM-SHA-256"]);
    send(stream, &out).await?;

    let frame = read_password_message(stream).await?;
    let Some((mechanism, data)) = parse_sasl_initial(frame.body()) else {
        return Err(LoginError::refused(
            sqlstate::PROTOCOL_VIOLATION,
            "malformed SASLInitialResponse",
        ));
    };
    if mechanism != b"SCRAM-SHA-256" {
        return Err(LoginError::refused(
            sqlstate::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let mut server = ScramServer::new(verifier);
    let first = match server.client_first(data) {
        Ok(f) => f,
        Err(e) => {
            return Err(LoginError::refused(
                sqlstate::PROTOCOL_VIOLATION,
                e.to_string(),
            ))
        }
    };
    out.clear();
    authentication_sasl_continue(&mut out, &first);
    send(stream, &out).await?;

    let frame = read_password_message(stream).await?;
    match server.client_final(frame.body()) {
        Ok(fin) => {
            out.clear();
            authentication_sasl_final(&mut out, &fin);
            send(stream, &out).await?;
            Ok(match server.client_key() {
                Some(client_key) => Outcome::Scram {
                    verifier: server.verifier().clone(),
                    client_key,
                },
                None => Outcome::Accepted,
            })
        }
        Err(_) => Ok(Outcome::Refused),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn false_spellings_of_replication() {
        for v in ["false", "f", "FALSE", "off", "of", "no", "n", "0"] {
            assert!(super::is_false(v), "{v}");
        }
        for v in ["true", "on", "o", "1", "yes", "database", ""] {
            assert!(!super::is_false(v), "{v}");
        }
    }
}
