//! SCRAM-SHA-256, server side: the exchange a client runs after the proxy answers its
//! StartupMessage with AuthenticationSASL listing [`MECHANISM`]. The client's
//! SASLInitialResponse goes to [`ScramServer::client_first`], whose reply travels back in
//! AuthenticationSASLContinue; its SASLResponse goes to [`ScramServer::client_final`], whose reply
//! travels in AuthenticationSASLFinal, followed by AuthenticationOk. The protocol is RFC 5802 with
//! the SHA-256 parameters of RFC 7677, restricted the way PostgreSQL's
//! `src/backend/libpq/auth-scram.c` restricts it, and verifiers use `pg_authid`'s text form
//! (written by `scram_build_secret()` in `src/common/scram-common.c`), so a secret copied from
//! a real server works here and a real client cannot tell the proxy from Postgres.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{constant_time_eq, AuthError};

/// The SASL mechanism name to list in AuthenticationSASL. Only the non-PLUS variant is offered,
/// since channel binding would need the TLS layer's certificate hash.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Postgres' default `scram_iterations`.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Postgres keeps iteration counts in an `int`, so nothing larger can come out of `pg_authid`;
/// refusing more also keeps a typo in a config file from turning every login into minutes of
/// PBKDF2 work for the client. (Note that rust-postgres and pgjdbc clients refuse counts above
/// 100 000 on their own.)
pub const MAX_ITERATIONS: u32 = i32::MAX as u32;

/// `SCRAM_DEFAULT_SALT_LEN` in Postgres.
const SALT_LEN: usize = 16;

/// `SCRAM_RAW_NONCE_LEN` in Postgres: 18 bytes encode to 24 base64 characters without padding.
const SERVER_NONCE_LEN: usize = 18;

const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// What the server keeps instead of the password: enough to check a client's proof and to prove
/// itself in return, but not enough to log in as the client.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

/// Hand-written so that logging a verifier does not spill its keys; the salt and count are
/// public anyway (every client is sent them).
impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &BASE64.encode(&self.salt))
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl ScramVerifier {
    /// Reads the `pg_authid` form
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, with the same checks as
    /// Postgres' `parse_scram_secret()` plus a few it leaves implicit: the count must be a plain
    /// decimal in `1..=MAX_ITERATIONS` and the salt must not be empty.
    pub fn parse(s: &str) -> Result<ScramVerifier, AuthError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(AuthError::BadVerifier("must start with \"SCRAM-SHA-256$\""))?;
        let (iter_salt, keys) = rest
            .split_once('$')
            .ok_or(AuthError::BadVerifier("missing '$' before the keys"))?;
        let (iterations, salt) = iter_salt.split_once(':').ok_or(AuthError::BadVerifier(
            "missing ':' between iteration count and salt",
        ))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(AuthError::BadVerifier(
            "missing ':' between StoredKey and ServerKey",
        ))?;

        // `str::parse` would also take a leading '+'; pg_authid never has one.
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AuthError::BadVerifier(
                "iteration count is not a decimal number",
            ));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| AuthError::BadVerifier("iteration count is out of range"))?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(AuthError::BadVerifier("iteration count is out of range"));
        }

        let salt = BASE64
            .decode(salt)
            .map_err(|_| AuthError::BadVerifier("salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(AuthError::BadVerifier("salt is empty"));
        }
        let stored_key = decode_key(stored_key).ok_or(AuthError::BadVerifier(
            "StoredKey is not 32 bytes of base64",
        ))?;
        let server_key = decode_key(server_key).ok_or(AuthError::BadVerifier(
            "ServerKey is not 32 bytes of base64",
        ))?;

        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Derives the verifier Postgres would store for this password, salt and count (as
    /// `scram_build_secret()` does). The count is clamped into `1..=MAX_ITERATIONS` so the result
    /// always round-trips through [`ScramVerifier::parse`]; PBKDF2 is undefined for zero rounds.
    ///
    /// The password is prepared as described on the private `saslprep_or_raw`: exactly like
    /// Postgres for ASCII passwords, but not for every non-ASCII one;
    /// [`ScramVerifier::generate`] does not have that gap.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let iterations = iterations.clamp(1, MAX_ITERATIONS);
        let salted = hi(&saslprep_or_raw(password), salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// A verifier with a fresh random 16-byte salt and 4096 iterations, as Postgres makes for
    /// `CREATE ROLE ... PASSWORD` under `password_encryption = 'scram-sha-256'`.
    ///
    /// This goes through `postgres_protocol::password::scram_sha_256`, whose password
    /// preparation is a full SASLprep (with Postgres' raw-bytes fallback), so even non-ASCII
    /// passwords hash the way Postgres and every SASLprep-ing client (libpq, rust-postgres,
    /// pgjdbc) expect.
    pub fn generate(password: &str) -> ScramVerifier {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        match ScramVerifier::parse(&text) {
            Ok(v) => v,
            // Unreachable as long as postgres_protocol writes pg_authid's format; if it ever
            // changes, still hand back a usable verifier rather than fail a login.
            Err(_) => {
                let mut salt = [0u8; SALT_LEN];
                rand::thread_rng().fill_bytes(&mut salt);
                ScramVerifier::from_password(password, &salt, DEFAULT_ITERATIONS)
            }
        }
    }
}

/// The `pg_authid.rolpassword` text, byte-identical to what Postgres writes.
impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

fn decode_key(b64: &str) -> Option<[u8; KEY_LEN]> {
    BASE64.decode(b64).ok()?.try_into().ok()
}

/// The password bytes that go into PBKDF2.
///
/// Postgres SASLpreps the password (RFC 4013) and, when the password is not valid for SASLprep
/// (prohibited or unassigned characters, not UTF-8), uses its raw bytes instead
/// (`pg_saslprep()` in `src/common/saslprep.c`). Postgres returns pure-ASCII input unchanged
/// without looking further, so for ASCII passwords the raw bytes are exactly what it hashes.
///
/// Non-ASCII passwords also get their raw UTF-8 bytes here, because a faithful SASLprep needs
/// Unicode NFKC and code-point tables this crate does not carry. That matches Postgres whenever
/// SASLprep would leave the password unchanged (the common case: text already in NFKC, with no
/// non-ASCII spaces and no characters SASLprep deletes) and whenever Postgres itself falls back
/// to raw bytes; it does not match for passwords that SASLprep rewrites, such as one containing
/// U+00A0 or the "ﬁ" ligature. Verifiers for such passwords should come from
/// [`ScramVerifier::generate`] or from Postgres itself.
pub(crate) fn saslprep_or_raw(password: &str) -> Vec<u8> {
    password.as_bytes().to_vec()
}

/// `Hi()` of RFC 5802, i.e. PBKDF2-HMAC-SHA-256 producing a single 32-byte block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let keyed = new_hmac(password);
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; KEY_LEN] = mac.finalize().into_bytes().into();
    let mut result = u;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        for (r, x) in result.iter_mut().zip(u) {
            *r ^= x;
        }
    }
    result
}

/// HMAC is defined for keys of every length (long ones are hashed first), so hmac 0.12 never
/// returns an error here; the keys are the password or 32-byte stored keys, never client data.
#[allow(clippy::expect_used)]
fn new_hmac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC-SHA-256 accepts keys of any length")
}

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac = new_hmac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Where the exchange stands; each message moves it forward exactly once, and any failure jumps
/// to `Done`, so a client cannot retry a proof within one exchange.
enum State {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// The GS2 channel-binding flag the client sent: `n` or `y`.
        cbind_flag: u8,
        client_nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Done,
}

/// One SCRAM-SHA-256 login, server side. Create one per authentication attempt: the server
/// nonce must never be reused, or a recorded exchange could be replayed.
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    state: State,
    /// The ClientKey recovered from a proof that verified: what SCRAM pass-through logs in to the server with.
    client_key: Option<[u8; KEY_LEN]>,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitingClientFirst => "AwaitingClientFirst",
            State::AwaitingClientFinal { .. } => "AwaitingClientFinal",
            State::Done => "Done",
        };
        f.debug_struct("ScramServer")
            .field("verifier", &self.verifier)
            .field("state", &state)
            .finish()
    }
}

impl ScramServer {
    /// Starts an exchange with a fresh server nonce: 18 bytes from the thread-local CSPRNG,
    /// base64-encoded, as Postgres does (`SCRAM_RAW_NONCE_LEN`).
    pub fn new(verifier: ScramVerifier) -> ScramServer {
        let mut raw = [0u8; SERVER_NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut raw);
        ScramServer::with_nonce(verifier, BASE64.encode(raw))
    }

    /// Lets tests replay published exchanges byte for byte. The nonce must be printable ASCII
    /// without ','; it is not checked because only code in this crate can supply it.
    pub(crate) fn with_nonce(verifier: ScramVerifier, server_nonce: String) -> ScramServer {
        ScramServer {
            verifier,
            server_nonce,
            state: State::AwaitingClientFirst,
            client_key: None,
        }
    }

    /// Takes the SASLInitialResponse payload and returns the server-first-message. As in
    /// Postgres, the username inside is ignored (the StartupMessage's user is authoritative and
    /// libpq sends an empty `n=`), unknown optional extensions are skipped, and channel binding
    /// (`p=`), an authorization identity (`a=`) or a mandatory extension (`m=`) is refused.
    ///
    /// A `y` flag ("client supports channel binding but thinks the server does not") is
    /// accepted because only the non-PLUS mechanism is advertised. If the proxy ever offers
    /// SCRAM-SHA-256-PLUS over TLS, `y` must be refused then, since it would signal a downgrade.
    pub fn client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, State::AwaitingClientFirst) {
            self.state = State::Done;
            return Err(AuthError::InvalidState(
                "client-first-message arrived twice or after the exchange ended",
            ));
        }
        self.state = State::Done;

        let msg = std::str::from_utf8(data)
            .map_err(|_| AuthError::Malformed("client-first-message is not UTF-8"))?;
        let (cbind_flag, bare) = parse_gs2_header(msg)?;
        let client_nonce = parse_client_first_bare(bare)?;

        let server_first = format!(
            "r={}{},s={},i={}",
            client_nonce,
            self.server_nonce,
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.as_bytes().to_vec();
        self.state = State::AwaitingClientFinal {
            cbind_flag,
            client_nonce: client_nonce.to_owned(),
            client_first_bare: bare.to_owned(),
            server_first,
        };
        Ok(reply)
    }

    /// Takes the SASLResponse payload, checks it, and on success returns the server-final-message
    /// (`v=<ServerSignature>`) that proves to the client that the proxy knows its verifier.
    ///
    /// The checks follow `read_client_final_message()` and `verify_client_proof()`: the
    /// channel-binding echo must be the base64 of the GS2 header the client sent first (`biws`
    /// for `n,,`, `eSws` for `y,,`), the nonce must be the combined one the server issued, the
    /// proof must be the last attribute and decode to 32 bytes, and SHA-256 of the recovered
    /// ClientKey must equal StoredKey, compared in constant time.
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let (cbind_flag, client_nonce, client_first_bare, server_first) =
            match std::mem::replace(&mut self.state, State::Done) {
                State::AwaitingClientFinal {
                    cbind_flag,
                    client_nonce,
                    client_first_bare,
                    server_first,
                } => (cbind_flag, client_nonce, client_first_bare, server_first),
                State::AwaitingClientFirst => {
                    return Err(AuthError::InvalidState(
                        "client-final-message arrived before client-first-message",
                    ))
                }
                State::Done => {
                    return Err(AuthError::InvalidState(
                        "client-final-message arrived after the exchange ended",
                    ))
                }
            };

        let msg = std::str::from_utf8(data)
            .map_err(|_| AuthError::Malformed("client-final-message is not UTF-8"))?;

        // The proof is always the last attribute; what precedes it is signed as part of
        // AuthMessage, so keep it verbatim.
        let (without_proof, proof_attr) = msg.rsplit_once(',').ok_or(AuthError::Malformed(
            "client-final-message has too few attributes",
        ))?;
        let proof_b64 = proof_attr.strip_prefix("p=").ok_or(AuthError::Malformed(
            "client-final-message must end with the proof",
        ))?;

        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(AuthError::Malformed(
                "client-final-message must start with channel-binding data",
            ))?;
        let expected_cbind = if cbind_flag == b'y' { "eSws" } else { "biws" };
        if cbind != expected_cbind {
            return Err(AuthError::Malformed(
                "channel-binding data does not match the GS2 header",
            ));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(AuthError::Malformed("client-final-message lacks a nonce"))?;
        let nonce_ok = nonce.len() == client_nonce.len() + self.server_nonce.len()
            && nonce.starts_with(client_nonce.as_str())
            && nonce.ends_with(self.server_nonce.as_str());
        if !nonce_ok {
            return Err(AuthError::Malformed(
                "nonce does not match the one the server issued",
            ));
        }
        for ext in attrs {
            // A 'p' before the end means something follows the proof.
            if !is_attribute(ext) || ext.starts_with('p') {
                return Err(AuthError::Malformed(
                    "unexpected attribute in client-final-message",
                ));
            }
        }

        let proof: [u8; KEY_LEN] = BASE64
            .decode(proof_b64)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(AuthError::Malformed("proof is not 32 bytes of base64"))?;

        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac_sha256(&self.verifier.stored_key, &auth_message);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let candidate: [u8; KEY_LEN] = Sha256::digest(client_key).into();
        if !constant_time_eq(&candidate, &self.verifier.stored_key) {
            return Err(AuthError::InvalidCredentials);
        }

        self.client_key = Some(client_key);
        let server_signature = hmac_sha256(&self.verifier.server_key, &auth_message);
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }

    /// After a successful [`ScramServer::client_final`]: the client's ClientKey (proof XOR ClientSignature), which
    /// hashes to the verifier's StoredKey. It is password-equivalent for SCRAM, so it is kept only in memory and
    /// only to log in to servers that store the same verifier (see [`super::passthrough`]).
    pub fn client_key(&self) -> Option<[u8; KEY_LEN]> {
        self.client_key
    }

    /// The verifier this exchange checks against.
    pub fn verifier(&self) -> &ScramVerifier {
        &self.verifier
    }
}

/// Splits `gs2-header` off a client-first-message, returning the channel-binding flag and the
/// client-first-message-bare that goes into AuthMessage.
fn parse_gs2_header(msg: &str) -> Result<(u8, &str), AuthError> {
    let flag = match msg.as_bytes().first() {
        Some(&f @ (b'n' | b'y')) => f,
        Some(b'p') => {
            return Err(AuthError::Unsupported(
                "channel binding (SCRAM-SHA-256-PLUS is not offered)",
            ))
        }
        _ => {
            return Err(AuthError::Malformed(
                "client-first-message must start with a channel-binding flag",
            ))
        }
    };
    let rest = msg
        .get(1..)
        .and_then(|r| r.strip_prefix(','))
        .ok_or(AuthError::Malformed(
            "expected ',' after the channel-binding flag",
        ))?;
    if rest.starts_with("a=") {
        return Err(AuthError::Unsupported("SCRAM authorization identity"));
    }
    let bare = rest
        .strip_prefix(',')
        .ok_or(AuthError::Malformed("malformed GS2 header"))?;
    Ok((flag, bare))
}

/// Validates client-first-message-bare and returns the client nonce.
fn parse_client_first_bare(bare: &str) -> Result<&str, AuthError> {
    if bare.starts_with("m=") {
        return Err(AuthError::Unsupported("mandatory SCRAM extension"));
    }
    let mut attrs = bare.split(',');
    // The username is ignored, as in Postgres; only its presence is required.
    attrs
        .next()
        .filter(|a| a.starts_with("n="))
        .ok_or(AuthError::Malformed(
            "client-first-message lacks the username attribute",
        ))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(AuthError::Malformed("client-first-message lacks a nonce"))?;
    // RFC 5802 `printable`: %x21-2B / %x2D-7E. The nonce is echoed back and signed, so
    // anything else is refused rather than copied.
    if nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(AuthError::Malformed(
            "client nonce is empty or not printable ASCII",
        ));
    }
    // Optional extensions are allowed and ignored, but must at least look like attributes.
    if !attrs.all(is_attribute) {
        return Err(AuthError::Malformed(
            "unexpected attribute in client-first-message",
        ));
    }
    Ok(nonce)
}

/// `attr-val` of RFC 5802: one ASCII letter, '=', then a value.
fn is_attribute(a: &str) -> bool {
    let b = a.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'='
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// PostgreSQL 15.18, `CREATE ROLE x PASSWORD 'secret'` (scram-sha-256).
    const PG15_SECRET: &str = "SCRAM-SHA-256$4096:46nmVQNGxalovOsGPtc6dg==$46yOesf+5EkHD8wJ0fmVjlDXJ8xCkO9ctA5dWpoqeGU=:lz68xDMRtSMiwU1Lmn4BK3byPiILKxhpMqHxDpH9jqM=";
    /// PostgreSQL 15.18, `CREATE ROLE u PASSWORD U&'caf\00e9\00a0\fb01'`: "café", a no-break
    /// space and the "ﬁ" ligature, which SASLprep turns into "café fi".
    const PG15_NON_ASCII_SECRET: &str = "SCRAM-SHA-256$4096:FP03ukE8KcZhHoJNWqlLkA==$ho5kZt9lLZvZpiD+AAkHxBhFvDzesObm2CZdi6gfeMA=:atjsygzIotCwnyzETTlcVJtEc6cDYZ5JXU1AWASNZMM=";
    const NON_ASCII_PASSWORD: &str = "caf\u{e9}\u{a0}\u{fb01}";

    fn verifier(s: &str) -> ScramVerifier {
        match ScramVerifier::parse(s) {
            Ok(v) => v,
            Err(e) => panic!("verifier {s:?} did not parse: {e}"),
        }
    }

    /// Runs rust-postgres' client against our server; Ok only if both sides accept.
    fn exchange(v: &ScramVerifier, password: &str, cb: ChannelBinding) -> Result<(), AuthError> {
        let mut client = ScramSha256::new(password.as_bytes(), cb);
        let mut server = ScramServer::new(v.clone());
        let server_first = server.client_first(client.message())?;
        client
            .update(&server_first)
            .map_err(|_| AuthError::Malformed("client rejected server-first"))?;
        let server_final = server.client_final(client.message())?;
        client
            .finish(&server_final)
            .map_err(|_| AuthError::Malformed("client rejected server-final"))?;
        Ok(())
    }

    /// Drives a server up to the point where it awaits client-final, returning it with a
    /// well-formed client-final built by the real client for `password`.
    fn server_awaiting_final(password: &str) -> (ScramServer, String) {
        // Few iterations: this runs hundreds of times in the tests below.
        let v = ScramVerifier::from_password("pencil", b"0123456789abcdef", 16);
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut server = ScramServer::new(v);
        let first = server.client_first(client.message());
        let first = match first {
            Ok(f) => f,
            Err(e) => panic!("client-first rejected: {e}"),
        };
        if let Err(e) = client.update(&first) {
            panic!("client rejected server-first: {e}");
        }
        let final_msg = String::from_utf8_lossy(client.message()).into_owned();
        (server, final_msg)
    }

    #[test]
    fn rfc7677_test_vector() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::from_password("pencil", &salt, 4096);
        let mut server = ScramServer::with_nonce(v, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into());

        let server_first = server
            .client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        assert_eq!(
            server_first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = server
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn interop_with_rust_postgres_client_from_password() {
        let v = ScramVerifier::from_password("hunter2", b"some salt bytes!", 4096);
        exchange(&v, "hunter2", ChannelBinding::unsupported()).unwrap();
        // "y,," / c=eSws: client could bind but sees no PLUS mechanism.
        exchange(&v, "hunter2", ChannelBinding::unrequested()).unwrap();
        assert!(matches!(
            exchange(&v, "hunter3", ChannelBinding::unsupported()),
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[test]
    fn interop_with_generated_verifier() {
        let v = ScramVerifier::generate("correct horse");
        assert_eq!(v.iterations, DEFAULT_ITERATIONS);
        assert_eq!(v.salt.len(), SALT_LEN);
        assert_ne!(v.salt, ScramVerifier::generate("correct horse").salt);
        exchange(&v, "correct horse", ChannelBinding::unsupported()).unwrap();
        assert!(exchange(&v, "correct horse ", ChannelBinding::unsupported()).is_err());
    }

    #[test]
    fn interop_with_postgres_15_verifier() {
        let v = verifier(PG15_SECRET);
        assert_eq!(v.iterations, 4096);
        exchange(&v, "secret", ChannelBinding::unsupported()).unwrap();
        exchange(&v, "secret", ChannelBinding::unrequested()).unwrap();
        assert!(matches!(
            exchange(&v, "wrong", ChannelBinding::unsupported()),
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[test]
    fn from_password_reproduces_postgres_15() {
        let pg = verifier(PG15_SECRET);
        let ours = ScramVerifier::from_password("secret", &pg.salt, pg.iterations);
        assert_eq!(ours, pg);
        assert_eq!(ours.to_string(), PG15_SECRET);
    }

    #[test]
    fn non_ascii_passwords() {
        // The server side needs no normalisation for a stored verifier: any SASLprep-ing client
        // with either spelling of the password gets in.
        let pg = verifier(PG15_NON_ASCII_SECRET);
        exchange(&pg, NON_ASCII_PASSWORD, ChannelBinding::unsupported()).unwrap();
        exchange(&pg, "caf\u{e9} fi", ChannelBinding::unsupported()).unwrap();
        // generate() SASLpreps like Postgres.
        let generated = ScramVerifier::generate(NON_ASCII_PASSWORD);
        exchange(&generated, "caf\u{e9} fi", ChannelBinding::unsupported()).unwrap();
        // from_password() is exact for non-ASCII passwords SASLprep leaves alone.
        let v = ScramVerifier::from_password("pässwörd", b"salt", 4096);
        exchange(&v, "pässwörd", ChannelBinding::unsupported()).unwrap();
    }

    #[test]
    fn display_parse_round_trip() {
        for v in [
            ScramVerifier::generate("x"),
            ScramVerifier::from_password("x", b"\0\xff odd salt", 1),
            ScramVerifier::from_password("x", b"s", 2),
            verifier(PG15_SECRET),
            verifier(PG15_NON_ASCII_SECRET),
        ] {
            assert_eq!(verifier(&v.to_string()), v);
        }
        assert_eq!(verifier(PG15_SECRET).to_string(), PG15_SECRET);
        assert_eq!(
            verifier(PG15_NON_ASCII_SECRET).to_string(),
            PG15_NON_ASCII_SECRET
        );
    }

    #[test]
    fn from_password_clamps_iterations() {
        assert_eq!(ScramVerifier::from_password("x", b"s", 0).iterations, 1);
    }

    #[test]
    fn server_nonce_is_18_random_bytes_base64() {
        let v = verifier(PG15_SECRET);
        let a = ScramServer::new(v.clone()).server_nonce;
        let b = ScramServer::new(v).server_nonce;
        assert_eq!(a.len(), 24);
        assert_eq!(BASE64.decode(&a).unwrap().len(), SERVER_NONCE_LEN);
        assert_ne!(a, b);
    }

    #[test]
    fn bad_verifiers_are_rejected() {
        let key = BASE64.encode([7u8; 32]);
        let short_key = BASE64.encode([7u8; 31]);
        let cases = [
            String::new(),
            "SCRAM-SHA-256$".into(),
            "plain password".into(),
            format!("SCRAM-SHA-1$4096:c2FsdA==${key}:{key}"),
            format!("scram-sha-256$4096:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA=={key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:"),
            format!("SCRAM-SHA-256$:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$-1:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$+4096:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$ 4096:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096 :c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$0x1000:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$2147483648:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4294967295:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4294967296:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$99999999999999999999999999:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096:${key}:{key}"),
            format!("SCRAM-SHA-256$4096:!!notbase64!!${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA=${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${short_key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{short_key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}$"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}\n"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:@{}", &key[1..]),
        ];
        for c in &cases {
            assert!(
                matches!(ScramVerifier::parse(c), Err(AuthError::BadVerifier(_))),
                "accepted {c:?}"
            );
        }
        // The same shape with valid fields is fine, including the largest count Postgres allows.
        assert!(ScramVerifier::parse(&format!("SCRAM-SHA-256$1:c2FsdA==${key}:{key}")).is_ok());
        assert!(
            ScramVerifier::parse(&format!("SCRAM-SHA-256$2147483647:c2FsdA==${key}:{key}")).is_ok()
        );
    }

    #[test]
    fn malformed_client_first_is_rejected() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "malformed"),
            (b"n", "malformed"),
            (b"n,", "malformed"),
            (b"n,,", "malformed"),
            (b"x,,n=,r=abc", "malformed"),
            (b",,n=,r=abc", "malformed"),
            (b"nn,,n=,r=abc", "malformed"),
            (b"n;,n=,r=abc", "malformed"),
            (b"n,x,n=,r=abc", "malformed"),
            (b"n,,r=abc", "malformed"),
            (b"n,,n=", "malformed"),
            (b"n,,n=,", "malformed"),
            (b"n,,n=,r=", "malformed"),
            (b"n,,n=,x=abc", "malformed"),
            (b"n,,n=,r=ab c", "malformed"),
            (b"n,,n=,r=ab\x01c", "malformed"),
            (b"n,,n=,r=ab\x7fc", "malformed"),
            (b"n,,n=,r=abc,", "malformed"),
            (b"n,,n=,r=abc,bogus", "malformed"),
            (b"n,,n=,r=abc,1=x", "malformed"),
            (b"n,,n=,r=ab\xc3\xa9", "malformed"),
            (b"n,,n=\xff\xfe,r=abc", "malformed"),
            (b"\xff", "malformed"),
            (b"p=tls-server-end-point,,n=,r=abc", "unsupported"),
            (b"p", "unsupported"),
            (b"n,a=admin,n=,r=abc", "unsupported"),
            (b"y,a=admin,n=,r=abc", "unsupported"),
            (b"n,,m=ext,n=,r=abc", "unsupported"),
        ];
        for (msg, kind) in cases {
            let mut s = ScramServer::new(verifier(PG15_SECRET));
            let r = s.client_first(msg);
            let ok = match *kind {
                "malformed" => matches!(r, Err(AuthError::Malformed(_))),
                _ => matches!(r, Err(AuthError::Unsupported(_))),
            };
            assert!(ok, "{:?} gave {r:?}", String::from_utf8_lossy(msg));
            // A failed exchange stays failed.
            assert!(matches!(
                s.client_final(b"c=biws,r=x,p=x"),
                Err(AuthError::InvalidState(_))
            ));
        }
        // Well-formed variants are accepted: named user (ignored), optional extensions.
        for msg in [
            &b"n,,n=someone,r=abc"[..],
            b"y,,n=,r=abc",
            b"n,,n=,r=abc,x=ext,y=",
            b"n,,n=us=2Cer,r=!#~",
        ] {
            let mut s = ScramServer::new(verifier(PG15_SECRET));
            assert!(
                s.client_first(msg).is_ok(),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn channel_binding_client_is_refused() {
        let v = verifier(PG15_SECRET);
        let r = exchange(
            &v,
            "secret",
            ChannelBinding::tls_server_end_point(vec![1, 2, 3]),
        );
        assert!(matches!(r, Err(AuthError::Unsupported(_))), "{r:?}");
    }

    #[test]
    fn wrong_password_fails_client_final() {
        let (mut server, final_msg) = server_awaiting_final("not pencil");
        assert!(matches!(
            server.client_final(final_msg.as_bytes()),
            Err(AuthError::InvalidCredentials)
        ));
        // No second try within the same exchange, even with the right proof.
        assert!(matches!(
            server.client_final(final_msg.as_bytes()),
            Err(AuthError::InvalidState(_))
        ));
    }

    /// Splits a client-final-message into its nonce and proof.
    fn nonce_and_proof(good: &str) -> (String, String) {
        let rest = good.strip_prefix("c=biws,r=").unwrap();
        let (nonce, proof) = rest.split_once(",p=").unwrap();
        (nonce.to_owned(), proof.to_owned())
    }

    #[test]
    fn tampered_client_final_is_rejected() {
        // Each variant is built from a fresh exchange's own good message, so that only the
        // tampering differs.
        type Tamper = fn(&str, &str) -> String;
        let malformed: &[Tamper] = &[
            |n, p| {
                let mut n = n.to_owned();
                let last = n.pop().unwrap_or('A');
                n.push(if last == 'A' { 'B' } else { 'A' });
                format!("c=biws,r={n},p={p}")
            },
            |n, p| {
                let mut n = n.to_owned();
                n.replace_range(0..1, if n.starts_with('A') { "B" } else { "A" });
                format!("c=biws,r={n},p={p}")
            },
            |n, p| format!("c=biws,r={n}x,p={p}"),
            |n, p| format!("c=biws,r={},p={p}", &n[..n.len() - 1]),
            |_, p| format!("c=biws,r=,p={p}"),
            |n, p| format!("c=eSws,r={n},p={p}"),
            |n, p| format!("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r={n},p={p}"),
            |n, p| format!("c=,r={n},p={p}"),
            |n, p| format!("r={n},c=biws,p={p}"),
            |_, p| format!("c=biws,p={p}"),
            |n, _| format!("c=biws,r={n}"),
            |n, _| format!("c=biws,r={n},p="),
            |n, _| format!("c=biws,r={n},p=!!!!"),
            |n, p| format!("c=biws,r={n},p={}", &p[..p.len() - 4]),
            |n, p| format!("c=biws,r={n},p={p}AAAA"),
            |n, p| format!("c=biws,r={n},p={p},x=trailing"),
            |n, p| format!("c=biws,r={n},p={p},"),
            |n, p| format!("c=biws,r={n},p={p},p={p}"),
            |n, p| format!("c=biws,r={n},,p={p}"),
            |n, p| format!("c=biws,r={n},bogus,p={p}"),
            |_, p| format!("p={p}"),
            |_, _| String::new(),
            |_, _| ",".into(),
        ];
        for (i, tamper) in malformed.iter().enumerate() {
            let (mut server, good) = server_awaiting_final("pencil");
            let (nonce, proof) = nonce_and_proof(&good);
            let m = tamper(&nonce, &proof);
            let r = server.client_final(m.as_bytes());
            assert!(
                matches!(r, Err(AuthError::Malformed(_))),
                "case {i}: {m:?} gave {r:?}"
            );
        }

        // Well-formed but wrong: a flipped proof bit, or an extension the proof did not cover.
        let wrong: &[Tamper] = &[
            |n, p| {
                let mut raw = BASE64.decode(p).unwrap();
                raw[0] ^= 1;
                format!("c=biws,r={n},p={}", BASE64.encode(raw))
            },
            |n, p| format!("c=biws,r={n},x=ext,p={p}"),
        ];
        for (i, tamper) in wrong.iter().enumerate() {
            let (mut server, good) = server_awaiting_final("pencil");
            let (nonce, proof) = nonce_and_proof(&good);
            let m = tamper(&nonce, &proof);
            let r = server.client_final(m.as_bytes());
            assert!(
                matches!(r, Err(AuthError::InvalidCredentials)),
                "case {i}: {m:?} gave {r:?}"
            );
        }

        // Non-UTF-8.
        let (mut server, good) = server_awaiting_final("pencil");
        let mut bytes = good.into_bytes();
        bytes[3] = 0xff;
        assert!(matches!(
            server.client_final(&bytes),
            Err(AuthError::Malformed(_))
        ));

        // The untouched message works, once.
        let (mut server, good) = server_awaiting_final("pencil");
        assert!(server.client_final(good.as_bytes()).is_ok());
        assert!(matches!(
            server.client_final(good.as_bytes()),
            Err(AuthError::InvalidState(_))
        ));
        assert!(matches!(
            server.client_first(b"n,,n=,r=abc"),
            Err(AuthError::InvalidState(_))
        ));
    }

    #[test]
    fn out_of_order_calls_are_rejected() {
        let mut s = ScramServer::new(verifier(PG15_SECRET));
        assert!(matches!(
            s.client_final(b"c=biws,r=abc,p=abc"),
            Err(AuthError::InvalidState(_))
        ));
        let mut s = ScramServer::new(verifier(PG15_SECRET));
        assert!(s.client_first(b"n,,n=,r=abc").is_ok());
        assert!(matches!(
            s.client_first(b"n,,n=,r=abc"),
            Err(AuthError::InvalidState(_))
        ));
    }

    /// Arbitrary bytes and every truncation of valid messages: always an error, never a panic.
    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"nyp,=racm biws\xff\xc3\xa9\x00AZaz09+/";
        for _ in 0..2000 {
            let len = (next() % 40) as usize;
            let msg: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut s = ScramServer::new(verifier(PG15_SECRET));
            let _ = s.client_first(&msg);
            let mut s = ScramServer::new(verifier(PG15_SECRET));
            if s.client_first(b"n,,n=,r=abc").is_ok() {
                assert!(s.client_final(&msg).is_err());
            }
            let _ = ScramVerifier::parse(&String::from_utf8_lossy(&msg));
        }

        // Cut anywhere before the first nonce character it is incomplete; after that it is a
        // valid message with a shorter nonce.
        let first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO";
        for cut in 0..first.len() {
            let mut s = ScramServer::new(verifier(PG15_SECRET));
            let r = s.client_first(&first[..cut]);
            assert_eq!(r.is_ok(), cut > 8, "cut at {cut}: {r:?}");
        }
        let (_, good) = server_awaiting_final("pencil");
        for cut in 0..good.len() {
            let (mut s, _) = server_awaiting_final("pencil");
            assert!(
                s.client_final(&good.as_bytes()[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for cut in 0..PG15_SECRET.len() {
            assert!(
                ScramVerifier::parse(&PG15_SECRET[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn debug_redacts_keys() {
        let v = verifier(PG15_SECRET);
        let dbg = format!("{v:?} {:?}", ScramServer::new(v.clone()));
        assert!(!dbg.contains("46yOesf"), "{dbg}");
        assert!(!dbg.contains("lz68xDM"), "{dbg}");
        assert!(dbg.contains("4096"), "{dbg}");
    }
}
