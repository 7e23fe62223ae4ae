//! Logging in to a server as a user whose password shardpool does not know: the user's secret came from `auth_file`,
//! `auth_query` or a `[[users]]` entry holding only a hash, so there is no plain password to send. What a client's
//! login leaves behind is enough, as PgBouncer does it:
//! - a SCRAM login against a stored verifier yields the client's ClientKey (ClientProof XOR ClientSignature). With it
//!   and the verifier's StoredKey and ServerKey, the proxy can compute proofs for the server's own SCRAM exchange, as
//!   long as the server stores the same verifier (same salt and iteration count), which it does when the secret was
//!   read from its `pg_authid`;
//! - an md5 secret answers the server's md5 challenge as it is (the stored hash is what the challenge salts).
//!
//! The learned secret lives in a [`ServerCredential`] shared by every pool of one (database, user), and is replaced
//! by each later login, so a changed password is picked up by the next client that logs in with it.

use std::fmt;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rand::RngCore;

use super::constant_time_eq;
use super::scram::{hmac_sha256, ScramVerifier};

/// What a client's login taught the proxy about logging in to the server as that client.
pub enum ServerSecret {
    /// The plain password (an `auth_file` or `auth_query` secret that is not hashed).
    Plain(String),
    /// `md5` + hex, as `pg_authid` stores it: answers an md5 challenge, not a SCRAM one.
    Md5(String),
    /// A verifier and the ClientKey a client proved it knows: answers a SCRAM exchange with that salt and count.
    Scram {
        verifier: ScramVerifier,
        client_key: [u8; 32],
    },
}

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerSecret::Plain(_) => "Plain(<redacted>)",
            ServerSecret::Md5(_) => "Md5(<redacted>)",
            ServerSecret::Scram { .. } => "Scram(<redacted>)",
        })
    }
}

/// The credential slot of one (database, user): empty until a client of that user logs in. Pools hold it by `Arc`,
/// so what one login learns serves every later server connection of the pool.
#[derive(Default)]
pub struct ServerCredential {
    secret: Mutex<Option<Arc<ServerSecret>>>,
}

impl ServerCredential {
    pub fn learn(&self, secret: ServerSecret) {
        *self.secret.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(secret));
    }

    pub fn get(&self) -> Option<Arc<ServerSecret>> {
        self.secret
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerCredential")
            .field(&self.get())
            .finish()
    }
}

/// Identity: two pools share a credential only if they share the slot, which is what decides whether a reloaded
/// pool's target is unchanged.
impl PartialEq for ServerCredential {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for ServerCredential {}

/// The password a server's cleartext request gets: the configured one, else a learned plain one.
pub fn plain_password(
    password: Option<&str>,
    credential: Option<&ServerCredential>,
) -> Option<String> {
    if let Some(p) = password {
        return Some(p.to_owned());
    }
    match credential?.get()?.as_ref() {
        ServerSecret::Plain(p) => Some(p.clone()),
        _ => None,
    }
}

/// The PasswordMessage for a server's md5 challenge, from the configured password or a learned secret.
pub fn md5_answer(
    user: &str,
    password: Option<&str>,
    credential: Option<&ServerCredential>,
    salt: [u8; 4],
) -> Option<String> {
    if let Some(p) = password {
        return Some(postgres_protocol::authentication::md5_hash(
            user.as_bytes(),
            p.as_bytes(),
            salt,
        ));
    }
    match credential?.get()?.as_ref() {
        ServerSecret::Plain(p) => Some(postgres_protocol::authentication::md5_hash(
            user.as_bytes(),
            p.as_bytes(),
            salt,
        )),
        ServerSecret::Md5(hash) => Some(super::md5::md5_salted_response(hash, salt)),
        ServerSecret::Scram { .. } => None,
    }
}

/// The client side of a server's SCRAM exchange, from the configured password or a learned secret.
pub fn scram_client(
    password: Option<&str>,
    credential: Option<&ServerCredential>,
) -> Option<ScramClient> {
    if let Some(p) = password {
        return Some(ScramClient::password(p.as_bytes()));
    }
    match credential?.get()?.as_ref() {
        ServerSecret::Plain(p) => Some(ScramClient::password(p.as_bytes())),
        ServerSecret::Md5(_) => None,
        ServerSecret::Scram {
            verifier,
            client_key,
        } => Some(ScramClient::Keys(Box::new(KeysClient::new(
            verifier.clone(),
            *client_key,
        )))),
    }
}

/// SCRAM-SHA-256 as a client, with the same three steps as `postgres_protocol`'s client: `message()` to send,
/// `update()` with the server-first-message, `message()` again, `finish()` with the server-final-message.
pub enum ScramClient {
    Password(Box<ScramSha256>),
    Keys(Box<KeysClient>),
}

impl ScramClient {
    fn password(password: &[u8]) -> ScramClient {
        ScramClient::Password(Box::new(ScramSha256::new(
            password,
            ChannelBinding::unsupported(),
        )))
    }

    pub fn message(&self) -> &[u8] {
        match self {
            ScramClient::Password(c) => c.message(),
            ScramClient::Keys(c) => &c.message,
        }
    }

    pub fn update(&mut self, server_first: &[u8]) -> std::io::Result<()> {
        match self {
            ScramClient::Password(c) => c.update(server_first),
            ScramClient::Keys(c) => c.update(server_first),
        }
    }

    pub fn finish(&mut self, server_final: &[u8]) -> std::io::Result<()> {
        match self {
            ScramClient::Password(c) => c.finish(server_final),
            ScramClient::Keys(c) => c.finish(server_final),
        }
    }
}

enum KeysState {
    AwaitingServerFirst { client_first_bare: String },
    AwaitingServerFinal { server_signature: [u8; 32] },
    Done,
}

/// The pass-through client: proves knowledge of ClientKey without the password, and checks the server's signature
/// with ServerKey, so a server that does not hold the verifier cannot pass for one that does.
pub struct KeysClient {
    verifier: ScramVerifier,
    client_key: [u8; 32],
    nonce: String,
    message: Vec<u8>,
    state: KeysState,
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

impl KeysClient {
    pub fn new(verifier: ScramVerifier, client_key: [u8; 32]) -> KeysClient {
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        KeysClient::with_nonce(verifier, client_key, BASE64.encode(raw))
    }

    fn with_nonce(verifier: ScramVerifier, client_key: [u8; 32], nonce: String) -> KeysClient {
        let client_first_bare = format!("n=,r={nonce}");
        KeysClient {
            verifier,
            client_key,
            message: format!("n,,{client_first_bare}").into_bytes(),
            nonce,
            state: KeysState::AwaitingServerFirst { client_first_bare },
        }
    }

    fn update(&mut self, server_first: &[u8]) -> std::io::Result<()> {
        let KeysState::AwaitingServerFirst { client_first_bare } =
            std::mem::replace(&mut self.state, KeysState::Done)
        else {
            return Err(invalid("SCRAM server-first-message out of order"));
        };
        let text = std::str::from_utf8(server_first)
            .map_err(|_| invalid("server-first-message is not UTF-8"))?;
        let mut attrs = text.split(',');
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| invalid("server-first-message lacks the nonce"))?;
        let salt = attrs
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .ok_or_else(|| invalid("server-first-message lacks the salt"))?;
        let iterations = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .ok_or_else(|| invalid("server-first-message lacks the iteration count"))?;
        if !nonce.starts_with(self.nonce.as_str()) || nonce.len() == self.nonce.len() {
            return Err(invalid("the server's nonce does not extend the client's"));
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| invalid("the server's salt is not base64"))?;
        if salt != self.verifier.salt || iterations != self.verifier.iterations.to_string() {
            return Err(invalid(
                "the server's SCRAM salt or iteration count differs from the stored secret \
                 (was the password changed?); a client must log in again with the new one",
            ));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            server_first,
            b",",
            without_proof.as_bytes(),
        ];
        let signature = hmac_sha256(&self.verifier.stored_key, &auth_message);
        let mut proof = self.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.message = format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes();
        self.state = KeysState::AwaitingServerFinal {
            server_signature: hmac_sha256(&self.verifier.server_key, &auth_message),
        };
        Ok(())
    }

    fn finish(&mut self, server_final: &[u8]) -> std::io::Result<()> {
        let KeysState::AwaitingServerFinal { server_signature } =
            std::mem::replace(&mut self.state, KeysState::Done)
        else {
            return Err(invalid("SCRAM server-final-message out of order"));
        };
        let text = std::str::from_utf8(server_final)
            .map_err(|_| invalid("server-final-message is not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(invalid(&format!("the server refused the SCRAM proof: {e}")));
        }
        let sent = text
            .split(',')
            .next()
            .and_then(|a| a.strip_prefix("v="))
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or_else(|| invalid("server-final-message lacks the server signature"))?;
        if !constant_time_eq(&sent, &server_signature) {
            return Err(invalid("the server's SCRAM signature is wrong"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::ScramServer;

    /// A full exchange between the pass-through client and the proxy's own SCRAM server: the server side is the
    /// Postgres-compatible implementation, so acceptance here means a Postgres server holding the same verifier
    /// accepts too (tests/auth_query.rs proves that against a real one).
    #[test]
    fn keys_client_logs_in_where_the_password_would() {
        let verifier = ScramVerifier::from_password("secret", b"0123456789abcdef", 4096);
        // A client logs in with the password; the proxy recovers its ClientKey.
        let mut proxy_side = ScramServer::new(verifier.clone());
        let mut client = ScramSha256::new(b"secret", ChannelBinding::unsupported());
        let first = proxy_side.client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        let fin = proxy_side.client_final(client.message()).unwrap();
        client.finish(&fin).unwrap();
        let client_key = proxy_side.client_key().unwrap();

        // The proxy then logs in to a "server" storing the same verifier, without the password.
        let mut server = ScramServer::new(verifier.clone());
        let mut pass = ScramClient::Keys(Box::new(KeysClient::new(verifier.clone(), client_key)));
        let first = server.client_first(pass.message()).unwrap();
        pass.update(&first).unwrap();
        let fin = server.client_final(pass.message()).unwrap();
        pass.finish(&fin).unwrap();

        // A server with a different salt (password reset) is refused before a proof is sent.
        let other = ScramVerifier::from_password("secret", b"another salt....", 4096);
        let mut server = ScramServer::new(other);
        let mut pass = ScramClient::Keys(Box::new(KeysClient::new(verifier.clone(), client_key)));
        let first = server.client_first(pass.message()).unwrap();
        assert!(pass.update(&first).is_err());

        // A wrong ClientKey is refused by the server.
        let mut server = ScramServer::new(verifier.clone());
        let mut pass = ScramClient::Keys(Box::new(KeysClient::new(verifier.clone(), [7; 32])));
        let first = server.client_first(pass.message()).unwrap();
        pass.update(&first).unwrap();
        assert!(server.client_final(pass.message()).is_err());
    }

    #[test]
    fn keys_client_checks_the_server_signature() {
        let verifier = ScramVerifier::from_password("secret", b"salt", 16);
        let mut pass = KeysClient::with_nonce(verifier, [1; 32], "abc".into());
        pass.update(b"r=abcdef,s=c2FsdA==,i=16").unwrap();
        assert!(pass.finish(b"v=AAAA").is_err());
        let mut pass = KeysClient::with_nonce(
            ScramVerifier::from_password("secret", b"salt", 16),
            [1; 32],
            "abc".into(),
        );
        // The nonce must be extended, the fields in order, the message UTF-8.
        for bad in [
            &b"r=abc,s=c2FsdA==,i=16"[..],
            b"r=xbcdef,s=c2FsdA==,i=16",
            b"s=c2FsdA==,r=abcdef,i=16",
            b"r=abcdef,s=!!,i=16",
            b"r=abcdef,s=c2FsdA==,i=17",
            b"\xff",
            b"",
        ] {
            let mut p = KeysClient::with_nonce(
                ScramVerifier::from_password("secret", b"salt", 16),
                [1; 32],
                "abc".into(),
            );
            assert!(p.update(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(pass.finish(b"v=AAAA").is_err(), "finish before update");
    }

    #[test]
    fn md5_answer_from_a_stored_hash_matches_the_password() {
        let cred = ServerCredential::default();
        assert!(md5_answer("u", None, Some(&cred), [1, 2, 3, 4]).is_none());
        cred.learn(ServerSecret::Md5(crate::auth::md5_stored_hash("u", "pw")));
        assert_eq!(
            md5_answer("u", None, Some(&cred), [1, 2, 3, 4]),
            md5_answer("u", Some("pw"), None, [1, 2, 3, 4])
        );
        assert!(scram_client(None, Some(&cred)).is_none());
        assert!(plain_password(None, Some(&cred)).is_none());
        let dbg = format!("{cred:?}");
        assert!(!dbg.contains("md5"), "{dbg}");
    }
}
