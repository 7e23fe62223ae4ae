//! Throwaway real PostgreSQL servers for tests, `shardpool demo` and the benchmarks.
//!
//! A proxy that speaks the wire protocol can only be trusted once it has talked to a real
//! server: mocks agree with whatever the proxy believes, so they never catch a misreading of
//! the protocol, of authentication, or of replication lag. This module makes real servers
//! cheap enough to start dozens of times per test run: one `initdb` per process is copied for
//! every primary, replicas are cloned with `pg_basebackup`, everything lives in a temporary
//! directory, and dropping a [`PgServer`] stops it and deletes its files, even when a test
//! panics. The API is synchronous (plain `std::process`) so it works from sync tests, async
//! tests and the CLI alike.

mod binaries;
mod command;
mod config;
mod guard;
mod process;
mod server;
mod template;

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

pub use binaries::PgBinaries;
pub use config::ServerOptions;
pub use guard::{run_guard, spawn_guard, Guard};
pub use server::PgServer;

/// Everything that can go wrong while managing a throwaway server. Variants carry the command
/// line and what it printed, because a failing test on a CI box is usually debugged from the
/// error message alone.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL binaries not found: {0}")]
    BinariesNotFound(String),
    #[error("PostgreSQL refuses to run as root and no usable `postgres` user exists: {0}")]
    NoUnprivilegedUser(String),
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("could not send {signal} to process {pid}: {source}")]
    Signal {
        signal: String,
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("timed out after {waited:?} waiting for {what}; last observation: {detail}")]
    Timeout {
        what: String,
        waited: Duration,
        detail: String,
    },
    #[error("unexpected output from `{command}`: {output:?}")]
    UnexpectedOutput { command: String, output: String },
    #[error("the server on port {0} is not a replica")]
    NotAReplica(u16),
    #[error(
        "invalid role or database name {0:?}: quotes and control characters are not supported"
    )]
    InvalidName(String),
}

impl ClusterError {
    /// Wraps an I/O error with the action that failed, since a bare "permission denied"
    /// does not say which of the many files involved was the problem.
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }
}

/// How a role proves its identity, which decides both how the password is stored and which
/// `pg_hba.conf` method is used, so the proxy's auth code can be tested against each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Trust,
    Md5,
    ScramSha256,
}

/// Returns a loopback port that was free a moment ago.
///
/// The port is only a good guess: anything may bind it before the caller does, so callers
/// must retry on "address in use" (server starts here do). Ports are never handed out twice
/// by one process, so parallel tests in the same binary cannot pick the same one.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let mut candidate = None;
    for _ in 0..64 {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) if handed_out.insert(addr.port()) => return addr.port(),
            Ok(addr) => candidate = Some(addr.port()),
            Err(_) => break,
        }
    }
    // Binding loopback failed or kept returning used ports: fall back to a guess the
    // caller's retry-on-conflict logic will correct if it is wrong.
    candidate.unwrap_or_else(|| fallback_port(&handed_out))
}

/// A deterministic-but-spread guess used only when the kernel will not hand out a port.
fn fallback_port(handed_out: &BTreeSet<u16>) -> u16 {
    let spread = (std::process::id() as usize + handed_out.len() * 7919) % 10_000;
    20_000 + spread as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_repeats_within_a_process() {
        let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        assert!(!ports.contains(&0));
    }
}
