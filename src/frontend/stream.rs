//! A client connection, plain TCP, TLS or a Unix-domain socket, behind one type so the session code is the same for
//! all. Idle reads on plain sockets wait for readiness before a buffer exists, which is what keeps an idle client's
//! memory small.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// Where a client connected from: its TCP address, or the Unix socket of the listener on `port` (SHOW CLIENTS
/// shows addr `unix` and that port, as PgBouncer does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAddr {
    Tcp(SocketAddr),
    Unix { port: u16 },
}

impl ClientAddr {
    /// The `addr` column of SHOW CLIENTS.
    pub fn host(&self) -> String {
        match self {
            ClientAddr::Tcp(a) => a.ip().to_string(),
            ClientAddr::Unix { .. } => "unix".into(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            ClientAddr::Tcp(a) => a.port(),
            ClientAddr::Unix { port } => *port,
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Tcp(a) => a.fmt(f),
            ClientAddr::Unix { port } => write!(f, "unix:{port}"),
        }
    }
}

/// Bytes read per client read call.
pub const CLIENT_READ_CHUNK: usize = 16 * 1024;

/// Makes room in `buf` for a client read: a spare buffer from this thread if it has none (idle sessions give
/// theirs back), more room if it is nearly full.
pub fn prepare_read_buffer(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = super::buffers::take(CLIENT_READ_CHUNK);
    } else if buf.capacity() - buf.len() < 1024 {
        buf.reserve(CLIENT_READ_CHUNK);
    }
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Writes what the socket takes right now without waiting (TLS: nothing, there is no session yet to write in).
    pub fn try_write_now(&self, buf: &[u8]) {
        let _ = match self {
            ClientStream::Plain(s) => s.try_write(buf),
            ClientStream::Unix(s) => s.try_write(buf),
            ClientStream::Tls(_) => Ok(0),
        };
    }

    /// Reads into `buf` once data is there, allocating (or taking a spare) buffer only then. Returns 0 at EOF.
    /// A poll function rather than an `async fn`, so the idle session's wait holds no future of its own: the
    /// waker goes straight into the socket's reader slot.
    pub fn poll_read_idle(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            ClientStream::Plain(s) => poll_read_plain(s, cx, buf),
            ClientStream::Unix(s) => poll_read_plain(s, cx, buf),
            ClientStream::Tls(s) => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(CLIENT_READ_CHUNK);
                }
                tokio_util::io::poll_read_buf(Pin::new(s), cx, buf)
            }
        }
    }
}

/// A socket whose readiness can be awaited before any buffer exists: TCP and Unix streams alike.
trait ReadyRead: AsyncRead + Unpin {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadyRead for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl ReadyRead for UnixStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        UnixStream::poll_read_ready(self, cx)
    }
}

#[inline]
fn poll_read_plain<S: ReadyRead>(
    s: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(s.poll_read_ready(cx))?;
        prepare_read_buffer(buf);
        // One read attempt through `poll_read` rather than `try_read_buf`: on a short read (the usual case, a whole
        // request in far less than the buffer) tokio then clears the socket's readiness, so the attached pump's next
        // read of this client waits for epoll instead of paying a recvfrom that returns EAGAIN. That was one syscall
        // in six per select-only transaction.
        match tokio_util::io::poll_read_buf(Pin::new(&mut *s), cx, buf) {
            Poll::Ready(r) => return Poll::Ready(r),
            Poll::Pending => {
                // Readiness was stale (left over from the last read) and is now cleared: give the buffer back before
                // waiting again, or every idle client would sit on a full read buffer.
                if buf.is_empty() {
                    super::buffers::give(buf);
                }
            }
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
