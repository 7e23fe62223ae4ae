//! Client authentication against the users in the config (SCRAM-SHA-256, md5 or trust), then the checks Postgres
//! makes after authentication: the database exists, the admin console is for admin users only. The credential math
//! lives in `crate::auth`; this file moves it in and out of protocol messages.
//!
//! Reference: PostgreSQL docs 55.2.1 "Start-up" (authentication message flow) and 55.3 "SASL Authentication".

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::ClientStream;
use crate::auth::md5::verify_md5_response;
use crate::auth::scram::{ScramServer, ScramVerifier, DEFAULT_ITERATIONS};
use crate::auth::{random_salt4, StoredSecret};
use crate::config::{AuthMethod, UserConfig, ADMIN_DATABASE};
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
    let Some(user) = config.user(user_name).cloned() else {
        // As Postgres does: a SCRAM exchange that can only fail, so an unknown name looks like a wrong password.
        scram_with(stream, mock_verifier(user_name)).await?;
        return Err(failed());
    };
    let ok = match user.auth {
        AuthMethod::Trust => true,
        AuthMethod::Md5 => md5_exchange(stream, &user).await?,
        AuthMethod::ScramSha256 => scram_exchange(ctx, stream, &user).await?,
    };
    if !ok {
        return Err(failed());
    }
    let database = params.database().to_owned();
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

async fn md5_exchange(stream: &mut ClientStream, user: &UserConfig) -> Result<bool, LoginError> {
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
    let secret = StoredSecret::parse(user.password.as_deref().unwrap_or(""));
    Ok(verify_md5_response(&user.name, &secret, salt, response))
}

async fn scram_exchange(
    ctx: &Context,
    stream: &mut ClientStream,
    user: &UserConfig,
) -> Result<bool, LoginError> {
    let Some(verifier) = ctx.scram_verifier(user) else {
        return Ok(false);
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
) -> Result<bool, LoginError> {
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
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

impl Context {
    /// The SCRAM verifier for a user, computed once per password (PBKDF2 is deliberately slow).
    pub fn scram_verifier(&self, user: &UserConfig) -> Option<ScramVerifier> {
        let password = user.password.as_deref()?;
        match StoredSecret::parse(password) {
            StoredSecret::Scram(v) => Some(v),
            StoredSecret::Md5(_) => None,
            StoredSecret::Plain(p) => Some(self.cached_verifier(&user.name, &p)),
        }
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
