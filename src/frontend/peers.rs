//! Cancel requests across instances. Behind a load balancer a client's CancelRequest opens a new connection, which
//! may land on another instance than the one running its query. Each instance with a `peer_id` writes that id into
//! the cancel keys it hands out, so whichever instance receives a cancel can tell where it belongs and pass the raw
//! request on to that peer (PgBouncer's `[peers]`, since 1.19, works the same way).
//!
//! The key's process-id half (31 bits, kept positive since some clients mishandle negative pids) is laid out as
//! bits 30..17 the peer id, bit 16 "already forwarded", bits 15..0 random; the 32-bit secret stays wholly random, so
//! a key is as hard to guess as Postgres' own. A forwarded request carries the flag, and an instance never forwards
//! a flagged request again: a cancel makes at most one hop, whatever the `[peers]` tables say.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{Config, PeerAddr};
use crate::protocol::startup::{encode_cancel, CancelKey};

const ID_SHIFT: u32 = 17;
const ID_MASK: i32 = 0x3fff;
const FORWARDED: i32 = 1 << 16;
const RANDOM_BITS: i32 = 0xffff;

/// How long a forwarded cancel may take once connected: the peer answers by closing the connection after its own
/// cancel to Postgres, which it gives up on after 5 s.
const FORWARD_REPLY_WAIT: Duration = Duration::from_secs(6);

/// A fresh cancel key for a client of the instance `peer_id` (0: no peers, all 31 bits random).
pub fn new_key(peer_id: u16) -> CancelKey {
    let pid = if peer_id == 0 {
        rand::random::<i32>() & 0x7fff_ffff
    } else {
        ((i32::from(peer_id) & ID_MASK) << ID_SHIFT) | (rand::random::<i32>() & RANDOM_BITS)
    };
    CancelKey {
        pid,
        secret: rand::random(),
    }
}

/// The peer id written into a key by [`new_key`].
pub fn owner(key: CancelKey) -> u16 {
    ((key.pid >> ID_SHIFT) & ID_MASK) as u16
}

/// Whether `key` carries the mark of a request a peer has already passed on (meaningful only with a `peer_id`).
pub fn is_forwarded(key: CancelKey) -> bool {
    key.pid >= 0 && key.pid & FORWARDED != 0
}

/// What to do with a CancelRequest that arrived here.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Look the key up among this instance's clients (a miss drops it, as Postgres drops unknown keys).
    Local(CancelKey),
    /// Pass the request, flagged as forwarded, to the peer that issued the key.
    Forward {
        peer: u16,
        addr: PeerAddr,
        key: CancelKey,
    },
    /// Nobody can act on it; the reason is for the debug log only.
    Drop(&'static str),
}

/// Where a cancel for `key` goes, for an instance with peer id `me` (0: none) and `config`'s `[peers]`.
pub fn route(key: CancelKey, me: u16, config: &Config) -> Route {
    if me == 0 || key.pid < 0 {
        return Route::Local(key);
    }
    if key.pid & FORWARDED != 0 {
        let original = CancelKey {
            pid: key.pid & !FORWARDED,
            ..key
        };
        return if owner(original) == me {
            Route::Local(original)
        } else {
            Route::Drop("a forwarded cancel request for another peer is not forwarded again")
        };
    }
    let peer = owner(key);
    if peer == me {
        return Route::Local(key);
    }
    match config.peer(peer) {
        Some(addr) => Route::Forward {
            peer,
            addr,
            key: CancelKey {
                pid: key.pid | FORWARDED,
                ..key
            },
        },
        None => Route::Drop("cancel request for a peer not in [peers]"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connecting to peer {addr} timed out")]
    ConnectTimeout { addr: PeerAddr },
    #[error("peer {addr} did not close the cancel connection in time")]
    ReplyTimeout { addr: PeerAddr },
    #[error("peer {addr}: {source}")]
    Io {
        addr: PeerAddr,
        source: std::io::Error,
    },
}

/// Sends the CancelRequest for `key` to the peer at `addr` and waits until the peer has handled it (it closes the
/// connection then), so the client that asked hears back only once its cancel has been acted on, as from Postgres.
pub async fn forward(
    addr: &PeerAddr,
    key: CancelKey,
    connect_timeout: Duration,
) -> Result<(), ForwardError> {
    let io = |source| ForwardError::Io {
        addr: addr.clone(),
        source,
    };
    let timed_out = || ForwardError::ConnectTimeout { addr: addr.clone() };
    let delivered = match addr {
        PeerAddr::Tcp(a) => {
            let s = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(a))
                .await
                .map_err(|_| timed_out())?
                .map_err(io)?;
            tokio::time::timeout(FORWARD_REPLY_WAIT, deliver(s, key)).await
        }
        PeerAddr::Unix(p) => {
            let s = tokio::time::timeout(connect_timeout, tokio::net::UnixStream::connect(p))
                .await
                .map_err(|_| timed_out())?
                .map_err(io)?;
            tokio::time::timeout(FORWARD_REPLY_WAIT, deliver(s, key)).await
        }
    };
    delivered
        .map_err(|_| ForwardError::ReplyTimeout { addr: addr.clone() })?
        .map_err(io)
}

async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    key: CancelKey,
) -> std::io::Result<()> {
    s.write_all(&encode_cancel(key)).await?;
    s.flush().await?;
    let mut sink = [0u8; 64];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(peers: &str) -> Config {
        Config::from_toml(&format!("[general]\npeer_id = 1\n[peers]\n{peers}")).unwrap()
    }

    #[test]
    fn keys_carry_their_peer_and_stay_random() {
        for id in [1, 2, 77, crate::config::instances::MAX_PEER_ID] {
            let keys: Vec<_> = (0..64).map(|_| new_key(id)).collect();
            for k in &keys {
                assert!(k.pid > 0, "{k:?}");
                assert_eq!(owner(*k), id);
                assert_eq!(k.pid & FORWARDED, 0);
            }
            let distinct: std::collections::HashSet<_> = keys.iter().collect();
            assert!(distinct.len() > 60, "keys repeat: {}", distinct.len());
        }
        assert!((0..64).all(|_| new_key(0).pid >= 0));
    }

    #[test]
    fn routes() {
        let c = config("1 = \"127.0.0.1:1\"\n2 = \"10.0.0.2:6432\"\n3 = \"/run/sp/.s.PGSQL.6432\"");
        let mine = new_key(1);
        assert_eq!(route(mine, 1, &c), Route::Local(mine));
        let theirs = new_key(2);
        let flagged = CancelKey {
            pid: theirs.pid | FORWARDED,
            ..theirs
        };
        assert_eq!(
            route(theirs, 1, &c),
            Route::Forward {
                peer: 2,
                addr: PeerAddr::Tcp("10.0.0.2:6432".into()),
                key: flagged
            }
        );
        // Forwarded to its owner: looked up without the flag. Forwarded to anyone else: never forwarded again.
        assert_eq!(route(flagged, 2, &c), Route::Local(theirs));
        assert!(matches!(route(flagged, 1, &c), Route::Drop(_)));
        let unix = new_key(3);
        assert!(matches!(
            route(unix, 1, &c),
            Route::Forward {
                addr: PeerAddr::Unix(_),
                ..
            }
        ));
        assert!(matches!(route(new_key(9), 1, &c), Route::Drop(_)));
        // Without a peer id every key is looked up here, flag or not.
        assert_eq!(route(flagged, 0, &c), Route::Local(flagged));
        let negative = CancelKey { pid: -5, secret: 1 };
        assert_eq!(route(negative, 1, &c), Route::Local(negative));
    }
}
