//! Client-facing authentication: the credential checks shardpool runs when a client logs in to
//! the proxy, with the proxy in the server's seat. After the StartupMessage names a user, the
//! connection handler looks up that user's [`StoredSecret`] and runs either a SCRAM-SHA-256
//! exchange ([`scram::ScramServer`], fed from SASLInitialResponse/SASLResponse and answering with
//! AuthenticationSASLContinue/AuthenticationSASLFinal) or an MD5 challenge
//! ([`md5::verify_md5_response`], against the PasswordMessage that answers
//! AuthenticationMD5Password). Everything here is pure and I/O-free so it can be tested without
//! sockets. The behaviour mirrors PostgreSQL's backend: `src/backend/libpq/auth-scram.c` and
//! `crypt.c` (how `pg_authid.rolpassword` is classified and checked).

pub mod auth_file;
pub mod auth_query;
pub mod md5;
pub mod passthrough;
pub mod scram;

pub use self::md5::{md5_salted_response, md5_stored_hash, verify_md5_response};
pub use self::scram::{ScramServer, ScramVerifier};

use rand::RngCore;

/// Why a login attempt failed.
///
/// The messages never echo client-supplied bytes, so they are safe to log; what the client is
/// told should stay generic (Postgres says "password authentication failed for user ...") so that
/// it learns nothing about which check tripped.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The client's message does not follow the SCRAM grammar or the exchange's own rules
    /// (for instance a nonce that differs from the one the server issued).
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    /// The client proved knowledge of the wrong password.
    #[error("password authentication failed")]
    InvalidCredentials,
    /// The client asked for something the proxy does not offer (channel binding,
    /// an authorization identity, a mandatory extension).
    #[error("unsupported authentication feature: {0}")]
    Unsupported(&'static str),
    /// A configured SCRAM verifier string is not in pg_authid's form.
    #[error("invalid SCRAM verifier: {0}")]
    BadVerifier(&'static str),
    /// The caller drove the exchange out of order (or past its end); a bug in the caller or a
    /// client sending extra messages, either way the login must fail.
    #[error("authentication exchange used out of order: {0}")]
    InvalidState(&'static str),
}

/// What the configuration stores for a user, classified the way Postgres classifies
/// `pg_authid.rolpassword`, so secrets can be copied from a real server unchanged.
#[derive(Clone)]
pub enum StoredSecret {
    /// A clear-text password; both SCRAM and MD5 logins can be served from it.
    Plain(String),
    /// A SCRAM-SHA-256 verifier; only SCRAM logins can be served from it.
    Scram(ScramVerifier),
    /// `"md5"` followed by 32 lowercase hex digits; only MD5 logins can be served from it.
    Md5(String),
}

/// Hand-written so that a stray `{:?}` in a log line cannot leak a password or a pass-the-hash
/// MD5 secret.
impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredSecret::Plain(_) => f.write_str("Plain(<redacted>)"),
            StoredSecret::Scram(v) => f.debug_tuple("Scram").field(v).finish(),
            StoredSecret::Md5(_) => f.write_str("Md5(<redacted>)"),
        }
    }
}

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

impl StoredSecret {
    /// Mirrors Postgres' `get_password_type()`: a string is a SCRAM verifier only if it parses as
    /// one, an MD5 hash only if it is exactly `md5` + 32 *lowercase* hex digits, and anything else
    /// is a clear-text password. That includes a mangled verifier, which then silently becomes a
    /// (useless) password, exactly as on a real server; config loaders that would rather reject
    /// it should use [`StoredSecret::try_parse`].
    pub fn parse(s: &str) -> StoredSecret {
        if s.starts_with(SCRAM_PREFIX) {
            if let Ok(v) = ScramVerifier::parse(s) {
                return StoredSecret::Scram(v);
            }
        }
        if is_md5_hash(s) {
            return StoredSecret::Md5(s.to_owned());
        }
        StoredSecret::Plain(s.to_owned())
    }

    /// Like [`StoredSecret::parse`], but a string that starts like a SCRAM verifier and fails to
    /// parse is reported instead of being taken as a clear-text password, because in a config file
    /// that is nearly always a copy-paste accident.
    pub fn try_parse(s: &str) -> Result<StoredSecret, AuthError> {
        if s.starts_with(SCRAM_PREFIX) {
            return ScramVerifier::parse(s).map(StoredSecret::Scram);
        }
        Ok(StoredSecret::parse(s))
    }

    /// The verifier a SCRAM exchange needs. A clear-text password gets a freshly salted one on
    /// every call (callers that log many clients in should cache it); an MD5 hash cannot yield
    /// one, which is why Postgres refuses SCRAM logins for roles with MD5 passwords.
    pub fn scram_verifier(&self) -> Option<ScramVerifier> {
        match self {
            StoredSecret::Plain(p) => Some(ScramVerifier::generate(p)),
            StoredSecret::Scram(v) => Some(v.clone()),
            StoredSecret::Md5(_) => None,
        }
    }
}

/// Postgres' `MD5_PASSWD_CHARSET` test: uppercase hex is *not* an MD5 hash to Postgres.
fn is_md5_hash(s: &str) -> bool {
    s.len() == 35
        && s.starts_with("md5")
        && s.bytes()
            .skip(3)
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The 4-byte salt of an AuthenticationMD5Password challenge. It must be unpredictable per
/// connection, or a recorded response could be replayed, so it comes from the thread-local
/// CSPRNG.
pub fn random_salt4() -> [u8; 4] {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    salt
}

/// Compares secrets without an early exit, so response time does not reveal how many leading
/// bytes of a guess were right. Lengths are not hidden: every caller compares fixed-size digests
/// or their fixed-size encodings, whose length is public anyway.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated by PostgreSQL 15.18 for `CREATE ROLE x PASSWORD 'secret'` with
    /// `password_encryption = 'scram-sha-256'`.
    const PG15_SCRAM_SECRET: &str = "SCRAM-SHA-256$4096:46nmVQNGxalovOsGPtc6dg==$46yOesf+5EkHD8wJ0fmVjlDXJ8xCkO9ctA5dWpoqeGU=:lz68xDMRtSMiwU1Lmn4BK3byPiILKxhpMqHxDpH9jqM=";
    /// Generated by PostgreSQL 15.18 for role `md5user`, password 'secret',
    /// `password_encryption = 'md5'`.
    const PG15_MD5_SECRET: &str = "md52aea419619857e8a27f0f7aa641db0c6";

    #[test]
    fn parse_classifies_like_postgres() {
        assert!(matches!(
            StoredSecret::parse(PG15_SCRAM_SECRET),
            StoredSecret::Scram(v) if v.iterations == 4096
        ));
        assert!(matches!(
            StoredSecret::parse(PG15_MD5_SECRET),
            StoredSecret::Md5(h) if h == PG15_MD5_SECRET
        ));
        assert!(matches!(StoredSecret::parse("secret"), StoredSecret::Plain(p) if p == "secret"));
        assert!(matches!(StoredSecret::parse(""), StoredSecret::Plain(p) if p.is_empty()));
        // One hex digit short, uppercase hex, a non-hex digit: all clear text to Postgres.
        for s in [
            "md52aea419619857e8a27f0f7aa641db0c",
            "md52AEA419619857E8A27F0F7AA641DB0C6",
            "md52aea419619857e8a27f0f7aa641db0cg",
            "md52aea419619857e8a27f0f7aa641db0c66",
        ] {
            assert!(
                matches!(StoredSecret::parse(s), StoredSecret::Plain(_)),
                "{s}"
            );
        }
        // A broken verifier is a clear-text password to parse(), an error to try_parse().
        let broken = "SCRAM-SHA-256$4096:46nmVQNGxalovOsGPtc6dg==$46yOesf+:lz68";
        assert!(matches!(
            StoredSecret::parse(broken),
            StoredSecret::Plain(_)
        ));
        assert!(matches!(
            StoredSecret::try_parse(broken),
            Err(AuthError::BadVerifier(_))
        ));
        assert!(matches!(
            StoredSecret::try_parse(PG15_SCRAM_SECRET),
            Ok(StoredSecret::Scram(_))
        ));
        assert!(matches!(
            StoredSecret::try_parse("md5-looking-but-plain"),
            Ok(StoredSecret::Plain(_))
        ));
    }

    #[test]
    fn scram_verifier_from_secret() {
        let pg = StoredSecret::parse(PG15_SCRAM_SECRET);
        assert_eq!(
            pg.scram_verifier().map(|v| v.to_string()).as_deref(),
            Some(PG15_SCRAM_SECRET)
        );
        assert!(StoredSecret::parse(PG15_MD5_SECRET)
            .scram_verifier()
            .is_none());
        let plain = StoredSecret::Plain("secret".into());
        let v = plain.scram_verifier();
        assert!(matches!(v, Some(ref v) if v.iterations == 4096 && v.salt.len() == 16));
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let dbg = format!(
            "{:?} {:?}",
            StoredSecret::Plain("hunter2".into()),
            StoredSecret::parse(PG15_MD5_SECRET)
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("2aea4196"), "{dbg}");
        let dbg = format!("{:?}", StoredSecret::parse(PG15_SCRAM_SECRET));
        assert!(!dbg.contains("46yOesf"), "{dbg}");
    }

    #[test]
    fn constant_time_eq_semantics() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"bbc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b""));
    }

    #[test]
    fn random_salt4_varies() {
        let salts: Vec<[u8; 4]> = (0..8).map(|_| random_salt4()).collect();
        // Eight identical draws from a working CSPRNG has probability 2^-224.
        assert!(salts.iter().any(|s| *s != salts[0]));
    }
}
