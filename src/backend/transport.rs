//! The byte stream under a server connection: TCP, TLS over TCP, or a Unix-domain socket, chosen at connect time
//! and fixed for the connection's life. An enum rather than a boxed trait object, so the plain paths (the common
//! ones) cost one predictable branch per read or write and keep their raw socket for the session's busy-polling.
//!
//! Hosts follow libpq: one starting with `/` is the directory of the server's Unix socket, `<dir>/.s.PGSQL.<port>`.
//! TLS is never attempted over a Unix socket (nothing crosses a network there), whatever `server_tls_mode` says.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::tls::ServerTls;
use crate::protocol::startup::SSL_REQUEST_CODE;

/// Where a server connection goes: what SHOW SERVERS prints and where a CancelRequest for it is sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    /// The socket directory as configured and the port that names the socket file in it.
    Unix {
        dir: Arc<str>,
        port: u16,
    },
}

impl ServerAddr {
    /// The host part for display: the IP address, or the socket directory.
    pub fn host(&self) -> String {
        match self {
            ServerAddr::Tcp(a) => a.ip().to_string(),
            ServerAddr::Unix { dir, .. } => dir.to_string(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            ServerAddr::Tcp(a) => a.port(),
            ServerAddr::Unix { port, .. } => *port,
        }
    }

    /// A new plain connection to the same place (for a CancelRequest, which libpq also sends unencrypted).
    pub async fn connect_plain(&self) -> io::Result<ServerStream> {
        match self {
            ServerAddr::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Ok(ServerStream::Tcp(s))
            }
            ServerAddr::Unix { dir, port } => Ok(ServerStream::Unix(
                UnixStream::connect(unix_socket_path(dir, *port)).await?,
            )),
        }
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Tcp(a) => write!(f, "{a}"),
            ServerAddr::Unix { dir, port } => {
                write!(f, "{}", unix_socket_path(dir, *port).display())
            }
        }
    }
}

/// libpq's rule: a host that is an absolute path names a socket directory.
pub fn is_unix_host(host: &str) -> bool {
    host.starts_with('/')
}

/// The socket file a Postgres server listening on `port` creates in `dir`.
pub fn unix_socket_path(dir: &str, port: u16) -> PathBuf {
    PathBuf::from(format!("{}/.s.PGSQL.{port}", dir.trim_end_matches('/')))
}

pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ServerStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }

    /// Re-registers a plain socket with the calling runtime's I/O driver (`ServerConn::adopt`). Must be called
    /// from inside a runtime; TLS streams come back as they are.
    pub fn rehome(self) -> io::Result<ServerStream> {
        Ok(match self {
            ServerStream::Tcp(s) => ServerStream::Tcp(TcpStream::from_std(s.into_std()?)?),
            ServerStream::Unix(s) => ServerStream::Unix(UnixStream::from_std(s.into_std()?)?),
            tls @ ServerStream::Tls(_) => tls,
        })
    }

    /// The socket itself when reading it directly yields the protocol's bytes, i.e. not under TLS. The session's
    /// busy-poll reads it without going through tokio.
    pub fn raw_socket(&self) -> Option<BorrowedFd<'_>> {
        match self {
            ServerStream::Tcp(s) => Some(s.as_fd()),
            ServerStream::Unix(s) => Some(s.as_fd()),
            ServerStream::Tls(_) => None,
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => {
                // A write that met a full socket leaves encrypted bytes inside rustls, and nothing else would send
                // them: plain sockets need no flush, so the session code never calls one. Every wait for the
                // server's answer reads, so reading pushes them out first (a Pending flush has registered the
                // waker for writability, which brings the task back here).
                if let Poll::Ready(Err(e)) = Pin::new(&mut **s).poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
                Pin::new(s).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Tcp(s) => s.is_write_vectored(),
            ServerStream::Unix(s) => s.is_write_vectored(),
            ServerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connecting to {addr}: {source}")]
    Io { addr: String, source: io::Error },
    /// The server answered the SSLRequest with 'N' and the mode does not allow plain text.
    #[error("server {addr} does not support TLS, but server_tls_mode = \"{mode}\" requires it")]
    TlsRefused { addr: String, mode: &'static str },
    #[error("TLS with server {addr} failed (server_tls_mode = \"{mode}\"): {source}")]
    Tls {
        addr: String,
        mode: &'static str,
        source: io::Error,
    },
    #[error("server {addr} answered the SSLRequest with {answer:?}, not 'S' or 'N'")]
    BadSslAnswer { addr: String, answer: char },
    #[error("host {host:?} is not a valid name for server_tls_mode = \"verify-full\"")]
    BadServerName { host: String },
    #[error("server TLS configuration unusable: {0}")]
    Unusable(String),
}

/// Opens the stream to `host:port` and, when `tls` asks for it and the host is not a socket directory, negotiates
/// TLS (SSLRequest, then the handshake).
pub async fn open(
    host: &str,
    port: u16,
    tls: &ServerTls,
) -> Result<(ServerStream, ServerAddr), TransportError> {
    if is_unix_host(host) {
        let path = unix_socket_path(host, port);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| TransportError::Io {
                addr: path.display().to_string(),
                source,
            })?;
        let addr = ServerAddr::Unix {
            dir: Arc::from(host),
            port,
        };
        return Ok((ServerStream::Unix(stream), addr));
    }
    if let Some(reason) = tls.unusable() {
        return Err(TransportError::Unusable(reason.to_owned()));
    }
    let (tcp, addr) = connect_tcp(host, port).await?;
    let Some(config) = tls.client_config() else {
        return Ok((ServerStream::Tcp(tcp), ServerAddr::Tcp(addr)));
    };
    let stream = negotiate(tcp, host, addr, tls, config).await?;
    Ok((stream, ServerAddr::Tcp(addr)))
}

/// Tries each address the name resolves to, as libpq does (`localhost` is often ::1 first, 127.0.0.1 second).
async fn connect_tcp(host: &str, port: u16) -> Result<(TcpStream, SocketAddr), TransportError> {
    let text = format!("{host}:{port}");
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| TransportError::Resolve(text.clone()))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true).map_err(|source| TransportError::Io {
                    addr: text.clone(),
                    source,
                })?;
                return Ok((s, addr));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(source) => TransportError::Io { addr: text, source },
        None => TransportError::Resolve(text),
    })
}

async fn negotiate(
    mut tcp: TcpStream,
    host: &str,
    addr: SocketAddr,
    tls: &ServerTls,
    config: &Arc<rustls::ClientConfig>,
) -> Result<ServerStream, TransportError> {
    let io_err = |source| TransportError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await.map_err(io_err)?;
    // Exactly one byte, read straight from the socket: anything the server sent after 'S' must go to the TLS
    // handshake (and fail it), never be taken as protocol data that came before encryption (CVE-2021-23222).
    let answer = tcp.read_u8().await.map_err(io_err)?;
    let mode = tls.mode();
    match answer {
        b'S' => {}
        b'N' if mode.requires_tls() => {
            return Err(TransportError::TlsRefused {
                addr: addr.to_string(),
                mode: mode.as_str(),
            })
        }
        b'N' => return Ok(ServerStream::Tcp(tcp)),
        other => {
            return Err(TransportError::BadSslAnswer {
                addr: addr.to_string(),
                answer: other as char,
            })
        }
    }
    let name = match rustls::pki_types::ServerName::try_from(host.to_owned()) {
        Ok(n) => n,
        Err(_) if mode == super::tls::ServerTlsMode::VerifyFull => {
            return Err(TransportError::BadServerName {
                host: host.to_owned(),
            })
        }
        // The name only matters to verify-full; the others send the address (no SNI for addresses).
        Err(_) => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
        .map_err(|source| TransportError::Tls {
            addr: addr.to_string(),
            mode: mode.as_str(),
            source,
        })?;
    Ok(ServerStream::Tls(Box::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_follow_libpq() {
        assert!(is_unix_host("/var/run/postgresql"));
        assert!(!is_unix_host("db.example.com"));
        assert_eq!(
            unix_socket_path("/var/run/postgresql/", 5433),
            PathBuf::from("/var/run/postgresql/.s.PGSQL.5433")
        );
        let a = ServerAddr::Unix {
            dir: Arc::from("/tmp"),
            port: 5432,
        };
        assert_eq!(a.to_string(), "/tmp/.s.PGSQL.5432");
        assert_eq!((a.host().as_str(), a.port()), ("/tmp", 5432));
    }
}
