//! Logging in to a Postgres server as a client would: StartupMessage, then whichever authentication the server asks
//! for (trust, cleartext, md5, SCRAM-SHA-256 via postgres-protocol's client implementation), collecting the
//! ParameterStatus values and BackendKeyData until the first ReadyForQuery.
//!
//! Reference: PostgreSQL docs 55.2.1 "Start-up" and 55.3 "SASL Authentication".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::SCRAM_SHA_256;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::server::{ServerConn, ServerIoError};
use crate::auth::passthrough::{md5_answer, plain_password, scram_client, ScramClient};
use crate::protocol::backend::{parse_parameter_status, ErrorFields};
use crate::protocol::framing::split_frame;
use crate::protocol::frontend::{write_password, write_sasl_initial, write_sasl_response};
use crate::protocol::startup::{encode_startup, CancelKey};
use crate::protocol::{read_cstr, tag};

/// Where and as whom a pool logs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    /// With no `password`: what clients' logins taught the proxy (SCRAM pass-through keys, an md5 hash); see
    /// `crate::auth::passthrough`.
    pub credential: Option<std::sync::Arc<crate::auth::passthrough::ServerCredential>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connecting to {addr} timed out")]
    Timeout { addr: String },
    #[error("connecting to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("server login: {0}")]
    Login(#[from] ServerIoError),
    #[error("server asked for a password but none is configured for user {0:?}")]
    NoPassword(String),
    #[error("server requested unsupported authentication (code {0})")]
    UnsupportedAuth(i32),
    #[error("SCRAM exchange with the server failed: {0}")]
    Scram(std::io::Error),
}

impl ConnectError {
    /// The server's own error, when it refused the login (e.g. 28P01, 3D000, 53300).
    pub fn postgres_error(&self) -> Option<&ErrorFields> {
        match self {
            ConnectError::Login(ServerIoError::Postgres(e)) => Some(e),
            _ => None,
        }
    }
}

pub async fn connect(
    target: &ServerTarget,
    timeout: Duration,
    statement_capacity: usize,
) -> Result<Box<ServerConn>, ConnectError> {
    let addr_text = format!("{}:{}", target.host, target.port);
    let fut = login(target, &addr_text, statement_capacity);
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: addr_text.clone(),
        })?
}

async fn login(
    target: &ServerTarget,
    addr_text: &str,
    statement_capacity: usize,
) -> Result<Box<ServerConn>, ConnectError> {
    let addr: SocketAddr = tokio::net::lookup_host(addr_text)
        .await
        .map_err(|_| ConnectError::Resolve(addr_text.to_owned()))?
        .next()
        .ok_or_else(|| ConnectError::Resolve(addr_text.to_owned()))?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ConnectError::Io {
            addr: addr_text.to_owned(),
            source,
        })?;
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError::Io {
            addr: addr_text.to_owned(),
            source,
        })?;
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
    authenticate(&mut conn, target).await?;
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

fn auth_code(body: &[u8]) -> Result<i32, ServerIoError> {
    let b: [u8; 4] = body
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| ServerIoError::Protocol("short Authentication message".into()))?;
    Ok(i32::from_be_bytes(b))
}

async fn send(conn: &mut ServerConn, buf: &BytesMut) -> Result<(), ServerIoError> {
    conn.stream.write_all(buf).await.map_err(ServerIoError::Io)
}

async fn authenticate(conn: &mut ServerConn, target: &ServerTarget) -> Result<(), ConnectError> {
    let no_password = || ConnectError::NoPassword(target.user.clone());
    let (password, credential) = (target.password.as_deref(), target.credential.as_deref());
    loop {
        let frame = next_frame(conn).await?;
        if frame.tag != tag::AUTHENTICATION {
            return Err(ServerIoError::Protocol(format!(
                "expected Authentication, got {:?}",
                frame.tag as char
            ))
            .into());
        }
        let body = frame.body();
        match auth_code(body)? {
            0 => return Ok(()),
            3 => {
                let mut out = BytesMut::new();
                let password = plain_password(password, credential).ok_or_else(no_password)?;
                write_password(&mut out, password.as_bytes());
                send(conn, &out).await?;
            }
            5 => {
                let salt: [u8; 4] = body
                    .get(4..8)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| ServerIoError::Protocol("short md5 salt".into()))?;
                let hash =
                    md5_answer(&target.user, password, credential, salt).ok_or_else(no_password)?;
                let mut out = BytesMut::new();
                write_password(&mut out, hash.as_bytes());
                send(conn, &out).await?;
            }
            10 => {
                let client = scram_client(password, credential).ok_or_else(no_password)?;
                scram(conn, &body[4..], client).await?
            }
            other => return Err(ConnectError::UnsupportedAuth(other)),
        }
    }
}

async fn scram(
    conn: &mut ServerConn,
    mechanisms: &[u8],
    mut client: ScramClient,
) -> Result<(), ConnectError> {
    let mut offered = false;
    let mut pos = 0;
    while let Some((m, next)) = read_cstr(mechanisms, pos) {
        if m.is_empty() {
            break;
        }
        offered |= m == SCRAM_SHA_256.as_bytes();
        pos = next;
    }
    if !offered {
        return Err(ConnectError::UnsupportedAuth(10));
    }
    let mut out = BytesMut::new();
    write_sasl_initial(&mut out, SCRAM_SHA_256, client.message());
    send(conn, &out).await?;

    let cont = next_frame(conn).await?;
    if auth_code(cont.body())? != 11 {
        return Err(ServerIoError::Protocol("expected SASLContinue".into()).into());
    }
    client
        .update(&cont.body()[4..])
        .map_err(ConnectError::Scram)?;
    out.clear();
    write_sasl_response(&mut out, client.message());
    send(conn, &out).await?;

    let fin = next_frame(conn).await?;
    if auth_code(fin.body())? != 12 {
        return Err(ServerIoError::Protocol("expected SASLFinal".into()).into());
    }
    client
        .finish(&fin.body()[4..])
        .map_err(ConnectError::Scram)?;
    Ok(())
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
