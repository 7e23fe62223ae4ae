//! The startup phase up to (not including) authentication: SSLRequest answered with TLS or 'N', GSSENCRequest
//! answered 'N', then either a CancelRequest or a StartupMessage. The result is a typed outcome, never a
//! half-initialised stream. Oversized, truncated or garbage packets end the connection with an error.
//!
//! Reference: PostgreSQL docs 55.2.1 "Start-up", 55.2.10 "SSL Session Encryption", 55.2.11 "GSSAPI Session Encryption".

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::stream::ClientStream;
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{error_response, Severity};
use crate::protocol::startup::{self, CancelKey, StartupError, StartupPacket, StartupParams};

pub enum Handshake {
    Startup(ClientStream, StartupParams),
    Cancel(CancelKey),
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client I/O during startup: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad startup packet: {0}")]
    Packet(#[from] StartupError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("client asked for encryption twice")]
    RepeatedNegotiation,
    #[error("TLS is required")]
    TlsRequired,
}

impl HandshakeError {
    /// What to tell the client before closing, if the connection is still usable for that.
    pub fn client_error(&self) -> Option<ClientError> {
        match self {
            HandshakeError::Packet(StartupError::NoUser) => Some(ClientError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                StartupError::NoUser.to_string(),
            )),
            HandshakeError::Packet(e) => Some(ClientError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                e.to_string(),
            )),
            HandshakeError::RepeatedNegotiation => Some(ClientError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "unexpected encryption request",
            )),
            HandshakeError::TlsRequired => Some(ClientError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "shardpool requires TLS (SSL) connections",
            )),
            _ => None,
        }
    }
}

/// Reads one startup-phase packet: length prefix (bounded) then body.
async fn read_packet(stream: &mut ClientStream) -> Result<StartupPacket, HandshakeError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let total = startup::check_length(len)?;
    let mut body = vec![0u8; total - 4];
    stream.read_exact(&mut body).await?;
    Ok(startup::decode(&body)?)
}

/// Runs the startup phase on a freshly accepted `stream` (plain TCP or Unix). A Unix-socket client is answered 'N'
/// to an SSLRequest and may log in without TLS even when `require_tls`: like Postgres' `local` connections it is
/// on this machine, and the socket file's permissions are what guard it.
pub async fn handshake(
    mut stream: ClientStream,
    tls: Option<&TlsAcceptor>,
    require_tls: bool,
) -> Result<Handshake, HandshakeError> {
    let require_tls = require_tls && !matches!(stream, ClientStream::Unix(_));
    let mut negotiated_ssl = false;
    let mut negotiated_gss = false;
    loop {
        let packet = match read_packet(&mut stream).await {
            Ok(p) => p,
            Err(e) => {
                send_fatal(&mut stream, &e).await;
                return Err(e);
            }
        };
        match packet {
            StartupPacket::SslRequest => {
                if negotiated_ssl || stream.is_tls() {
                    return fail(&mut stream, HandshakeError::RepeatedNegotiation).await;
                }
                negotiated_ssl = true;
                stream = negotiate_tls(stream, tls).await?;
            }
            StartupPacket::GssEncRequest => {
                if negotiated_gss {
                    return fail(&mut stream, HandshakeError::RepeatedNegotiation).await;
                }
                negotiated_gss = true;
                stream.write_all(b"N").await?;
            }
            StartupPacket::Cancel(key) => return Ok(Handshake::Cancel(key)),
            StartupPacket::Startup(params) => {
                if require_tls && !stream.is_tls() {
                    return fail(&mut stream, HandshakeError::TlsRequired).await;
                }
                return Ok(Handshake::Startup(stream, params));
            }
        }
    }
}

async fn negotiate_tls(
    stream: ClientStream,
    tls: Option<&TlsAcceptor>,
) -> Result<ClientStream, HandshakeError> {
    let mut tcp = match stream {
        ClientStream::Plain(tcp) => tcp,
        ClientStream::Unix(mut unix) => {
            unix.write_all(b"N").await?;
            return Ok(ClientStream::Unix(unix));
        }
        ClientStream::Tls(_) => return Err(HandshakeError::RepeatedNegotiation),
    };
    match tls {
        None => {
            tcp.write_all(b"N").await?;
            Ok(ClientStream::Plain(tcp))
        }
        Some(acceptor) => {
            tcp.write_all(b"S").await?;
            let tls = acceptor.accept(tcp).await.map_err(HandshakeError::Tls)?;
            Ok(ClientStream::Tls(Box::new(tls)))
        }
    }
}

async fn fail<T>(stream: &mut ClientStream, e: HandshakeError) -> Result<T, HandshakeError> {
    send_fatal(stream, &e).await;
    Err(e)
}

async fn send_fatal(stream: &mut ClientStream, e: &HandshakeError) {
    if let Some(ce) = e.client_error() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Fatal, ce.code, &ce.message, None);
        let _ = stream.write_all(&buf).await;
        let _ = stream.flush().await;
    }
}
