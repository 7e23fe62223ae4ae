//! Counters of what happens before a client has a pool, or outside any pool: failed logins and cancel requests.
//! Their labels are fixed sets chosen here, never values a client sends: a failed login's database or user name is
//! whatever the client typed, and one series per typo (or per name a scanner tries) would grow without bound. The
//! names are in the log line each failure writes.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::sqlstate;

/// Why a connection did not become a logged-in client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginFailure {
    /// Wrong password, or a user nobody knows (Postgres answers both with 28P01, and so does shardpool).
    Password,
    /// Authenticated but not allowed: the admin console for a non-admin, a plain connection where TLS is required.
    Forbidden,
    /// No such database (3D000).
    UnknownDatabase,
    /// `max_client_conn` clients were logged in already.
    TooManyClients,
    /// `max_pending_logins` connections were logging in already: closed at accept.
    TooManyPending,
    /// Not logged in within `client_login_timeout`.
    Timeout,
    /// A graceful shutdown had begun.
    ShuttingDown,
    /// The login needed a server that could not be reached: the `auth_query` lookup, or the first connection of the
    /// pool for the server's parameters.
    ServerUnavailable,
    /// The TLS handshake failed.
    Tls,
    /// A malformed or unsupported startup: bad packets, replication connections, invalid startup options.
    Protocol,
}

impl LoginFailure {
    pub const ALL: [LoginFailure; 10] = [
        LoginFailure::Password,
        LoginFailure::Forbidden,
        LoginFailure::UnknownDatabase,
        LoginFailure::TooManyClients,
        LoginFailure::TooManyPending,
        LoginFailure::Timeout,
        LoginFailure::ShuttingDown,
        LoginFailure::ServerUnavailable,
        LoginFailure::Tls,
        LoginFailure::Protocol,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::Password => "password",
            LoginFailure::Forbidden => "forbidden",
            LoginFailure::UnknownDatabase => "unknown_database",
            LoginFailure::TooManyClients => "too_many_clients",
            LoginFailure::TooManyPending => "too_many_pending",
            LoginFailure::Timeout => "timeout",
            LoginFailure::ShuttingDown => "shutting_down",
            LoginFailure::ServerUnavailable => "server_unavailable",
            LoginFailure::Tls => "tls",
            LoginFailure::Protocol => "protocol",
        }
    }

    /// The reason behind a refusal the client was sent with SQLSTATE `code`. Login code refuses with the codes
    /// Postgres uses for the same situations, so the code is enough to tell them apart; timeouts and the
    /// accept-time cap are counted where they happen, not through here.
    pub fn of_sqlstate(code: &str) -> LoginFailure {
        match code {
            sqlstate::INVALID_PASSWORD => LoginFailure::Password,
            sqlstate::INVALID_AUTHORIZATION => LoginFailure::Forbidden,
            sqlstate::INVALID_CATALOG_NAME => LoginFailure::UnknownDatabase,
            sqlstate::TOO_MANY_CONNECTIONS => LoginFailure::TooManyClients,
            sqlstate::CANNOT_CONNECT_NOW => LoginFailure::ShuttingDown,
            sqlstate::PROTOCOL_VIOLATION => LoginFailure::Protocol,
            c if c.starts_with("08") => LoginFailure::ServerUnavailable,
            _ => LoginFailure::Protocol,
        }
    }
}

/// Failed logins since start, by reason.
#[derive(Debug, Default)]
pub struct LoginFailures {
    counts: [AtomicU64; LoginFailure::ALL.len()],
}

impl LoginFailures {
    pub fn count(&self, why: LoginFailure) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, why: LoginFailure) -> u64 {
        self.counts[why as usize].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        LoginFailure::ALL.iter().map(|w| self.get(*w)).sum()
    }
}

/// Where a CancelRequest came from: a client directly, or a peer instance passing it on (see `frontend::peers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelSource {
    Client,
    Peer,
}

impl CancelSource {
    pub const ALL: [CancelSource; 2] = [CancelSource::Client, CancelSource::Peer];

    pub fn as_str(self) -> &'static str {
        match self {
            CancelSource::Client => "client",
            CancelSource::Peer => "peer",
        }
    }
}

/// What became of a CancelRequest; each request has exactly one outcome at the instance that received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The key was a client's of this instance: the cancel went to its server(s).
    Local,
    /// The key was this instance's to look up, and no client has it (a late or a wrong key).
    Unknown,
    /// Passed to the peer that issued the key, which took it.
    Forwarded,
    /// The peer that issued the key could not be reached in time.
    ForwardFailed,
    /// Nobody can act on it: a peer not in `[peers]`, or a request a peer forwarded that is not for this instance.
    Dropped,
}

impl CancelOutcome {
    pub const ALL: [CancelOutcome; 5] = [
        CancelOutcome::Local,
        CancelOutcome::Unknown,
        CancelOutcome::Forwarded,
        CancelOutcome::ForwardFailed,
        CancelOutcome::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CancelOutcome::Local => "local",
            CancelOutcome::Unknown => "unknown",
            CancelOutcome::Forwarded => "forwarded",
            CancelOutcome::ForwardFailed => "forward_failed",
            CancelOutcome::Dropped => "dropped",
        }
    }
}

/// Cancel requests received since start, by source and outcome.
#[derive(Debug, Default)]
pub struct CancelCounts {
    counts: [[AtomicU64; CancelOutcome::ALL.len()]; CancelSource::ALL.len()],
}

impl CancelCounts {
    pub fn count(&self, source: CancelSource, outcome: CancelOutcome) {
        self.counts[source as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, source: CancelSource, outcome: CancelOutcome) -> u64 {
        self.counts[source as usize][outcome as usize].load(Ordering::Relaxed)
    }

    /// Requests with `outcome`, from either source.
    pub fn outcome(&self, outcome: CancelOutcome) -> u64 {
        CancelSource::ALL
            .iter()
            .map(|s| self.get(*s, outcome))
            .sum()
    }

    /// Requests a peer passed on to this instance, whatever became of them.
    pub fn from_peers(&self) -> u64 {
        CancelOutcome::ALL
            .iter()
            .map(|o| self.get(CancelSource::Peer, *o))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_lists_are_complete_and_in_index_order() {
        for (i, w) in LoginFailure::ALL.iter().enumerate() {
            assert_eq!(*w as usize, i);
        }
        for (i, o) in CancelOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
        for (i, s) in CancelSource::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }

    #[test]
    fn refusals_map_to_their_reasons() {
        let cases = [
            ("28P01", LoginFailure::Password),
            ("28000", LoginFailure::Forbidden),
            ("3D000", LoginFailure::UnknownDatabase),
            ("53300", LoginFailure::TooManyClients),
            ("57P03", LoginFailure::ShuttingDown),
            ("08006", LoginFailure::ServerUnavailable),
            ("08001", LoginFailure::ServerUnavailable),
            ("08P01", LoginFailure::Protocol),
            ("0A000", LoginFailure::Protocol),
            ("22023", LoginFailure::Protocol),
        ];
        for (code, want) in cases {
            assert_eq!(LoginFailure::of_sqlstate(code), want, "{code}");
        }
        let f = LoginFailures::default();
        f.count(LoginFailure::Password);
        f.count(LoginFailure::Password);
        f.count(LoginFailure::Timeout);
        assert_eq!(f.get(LoginFailure::Password), 2);
        assert_eq!(f.total(), 3);
        let c = CancelCounts::default();
        c.count(CancelSource::Peer, CancelOutcome::Local);
        c.count(CancelSource::Client, CancelOutcome::Local);
        c.count(CancelSource::Peer, CancelOutcome::Dropped);
        assert_eq!(c.outcome(CancelOutcome::Local), 2);
        assert_eq!(c.from_peers(), 2);
    }
}
