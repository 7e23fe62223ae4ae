//! Logging in to a Postgres server as a client would: open the transport (TCP, TLS or a Unix socket, see
//! [`super::transport`]), send the StartupMessage, run the authentication exchange ([`super::auth_exchange`]), then
//! collect the ParameterStatus values and BackendKeyData until the first ReadyForQuery.
//!
//! Reference: PostgreSQL docs 55.2.1 "Start-up".

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::auth_exchange::{self, AuthExchangeError, Channel, ServerAuthPolicy};
use super::server::{ServerConn, ServerIoError};
use super::tls::ServerTls;
use super::transport::{self, ServerStream, TransportError};
use crate::protocol::backend::{parse_parameter_status, ErrorFields};
use crate::protocol::framing::split_frame;
use crate::protocol::startup::{encode_startup, CancelKey};
use crate::protocol::tag;

/// Where and as whom a pool logs in, and how carefully.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTarget {
    /// A host name or address, or (starting with `/`) the directory of the server's Unix socket.
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    /// With no `password`: what clients' logins taught the proxy (SCRAM pass-through keys, an md5 hash); see
    /// `crate::auth::passthrough`.
    pub credential: Option<std::sync::Arc<crate::auth::passthrough::ServerCredential>>,
    pub tls: ServerTls,
    pub auth: ServerAuthPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr} timed out")]
    Timeout { addr: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("server login: {0}")]
    Login(#[from] ServerIoError),
    #[error(transparent)]
    Auth(AuthExchangeError),
}

impl From<AuthExchangeError> for ConnectError {
    fn from(e: AuthExchangeError) -> Self {
        match e {
            AuthExchangeError::Io(io) => ConnectError::Login(io),
            other => ConnectError::Auth(other),
        }
    }
}

impl ConnectError {
    /// The server's own error, when it refused the login (e.g. 28P01, 3D000, 53300).
    pub fn postgres_error(&self) -> Option<&ErrorFields> {
        match self {
            ConnectError::Login(ServerIoError::Postgres(e)) => Some(e),
            _ => None,
        }
    }

    /// What the waiting client should be told when the login failed for a reason of security (a policy refusal, a
    /// TLS failure, a server that broke the authentication exchange) rather than an unreachable server: the
    /// SQLSTATE and a message naming the cause, so an operator can fix it from the client's error alone.
    pub fn client_error(&self) -> Option<(&'static str, String)> {
        match self {
            ConnectError::Auth(e) if e.is_policy_refusal() => {
                Some((crate::error::sqlstate::INVALID_AUTHORIZATION, e.to_string()))
            }
            // A missing password is the proxy's own configuration gap: logged, and the client gets the generic error.
            ConnectError::Auth(AuthExchangeError::NoPassword(_)) => None,
            ConnectError::Auth(e) => {
                Some((crate::error::sqlstate::CONNECTION_FAILURE, e.to_string()))
            }
            ConnectError::Transport(
                e @ (TransportError::Tls { .. }
                | TransportError::TlsRefused { .. }
                | TransportError::BadServerName { .. }
                | TransportError::Unusable(_)),
            ) => Some((crate::error::sqlstate::CONNECTION_FAILURE, e.to_string())),
            _ => None,
        }
    }
}

pub async fn connect(
    target: &ServerTarget,
    timeout: Duration,
    statement_capacity: usize,
) -> Result<Box<ServerConn>, ConnectError> {
    let fut = login(target, statement_capacity);
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: if transport::is_unix_host(&target.host) {
                transport::unix_socket_path(&target.host, target.port)
                    .display()
                    .to_string()
            } else {
                format!("{}:{}", target.host, target.port)
            },
        })?
}

async fn login(
    target: &ServerTarget,
    statement_capacity: usize,
) -> Result<Box<ServerConn>, ConnectError> {
    let (stream, addr) = transport::open(&target.host, target.port, &target.tls).await?;
    let channel = match &stream {
        ServerStream::Tcp(_) => Channel::PlainTcp,
        ServerStream::Unix(_) => Channel::UnixSocket,
        ServerStream::Tls(_) if target.tls.verifies() => Channel::VerifiedTls,
        ServerStream::Tls(_) => Channel::UnverifiedTls,
    };
    let mut conn = Box::new(ServerConn::new(
        stream,
        addr,
        CancelKey { pid: 0, secret: 0 },
        BTreeMap::new(),
        statement_capacity,
    ));
    let startup = encode_startup(&[("user", &target.user), ("database", &target.database)]);
    conn.stream
        .write_all(&startup)
        .await
        .map_err(ServerIoError::Io)?;
    auth_exchange::authenticate(
        &mut conn,
        &target.user,
        target.password.as_deref(),
        target.credential.as_deref(),
        target.auth,
        channel,
    )
    .await?;
    finish_startup(&mut conn).await?;
    Ok(conn)
}

/// Reads the next whole message from the server.
async fn next_frame(conn: &mut ServerConn) -> Result<crate::protocol::Frame, ServerIoError> {
    loop {
        if let Some(f) =
            split_frame(&mut conn.rbuf).map_err(|e| ServerIoError::Protocol(e.to_string()))?
        {
            if f.tag == tag::ERROR_RESPONSE {
                return Err(ServerIoError::Postgres(ErrorFields::parse(f.body())));
            }
            return Ok(f);
        }
        conn.read_more().await?;
    }
}

async fn finish_startup(conn: &mut ServerConn) -> Result<(), ConnectError> {
    loop {
        let frame = next_frame(conn).await?;
        match frame.tag {
            tag::PARAMETER_STATUS => {
                if let Some((k, v)) = parse_parameter_status(frame.body()) {
                    conn.reported.insert(k, v);
                }
            }
            tag::BACKEND_KEY_DATA => {
                let b = frame.body();
                if b.len() < 8 {
                    return Err(ServerIoError::Protocol("short BackendKeyData".into()).into());
                }
                conn.cancel_key = CancelKey {
                    pid: i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    secret: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                };
            }
            tag::READY_FOR_QUERY => return Ok(()),
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(ServerIoError::Protocol(format!(
                    "unexpected {:?} during startup",
                    other as char
                ))
                .into());
            }
        }
    }
}
