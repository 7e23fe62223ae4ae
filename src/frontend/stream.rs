//! A client connection, plain TCP or TLS, behind one type so the session code is the same for both. Idle reads on
//! plain TCP wait for readiness before a buffer exists, which is what keeps an idle client's memory small.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
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

    /// Reads into `buf` once data is there, allocating (or taking a spare) buffer only then. Returns 0 at EOF.
    /// A poll function rather than an `async fn`, so the idle session's wait holds no future of its own: the
    /// waker goes straight into the socket's reader slot.
    pub fn poll_read_idle(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            ClientStream::Plain(s) => loop {
                ready!(s.poll_read_ready(cx))?;
                prepare_read_buffer(buf);
                // One read attempt through `poll_read` rather than `try_read_buf`: on a short read (the usual case,
                // a whole request in far less than the buffer) tokio then clears the socket's readiness, so the
                // attached pump's next read of this client waits for epoll instead of paying a recvfrom that
                // returns EAGAIN. That was one syscall in six per select-only transaction.
                match tokio_util::io::poll_read_buf(Pin::new(&mut *s), cx, buf) {
                    Poll::Ready(r) => return Poll::Ready(r),
                    Poll::Pending => {
                        // Readiness was stale (left over from the last read) and is now cleared: give the buffer
                        // back before waiting again, or every idle client would sit on a full read buffer.
                        if buf.is_empty() {
                            super::buffers::give(buf);
                        }
                    }
                }
            },
            ClientStream::Tls(s) => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(CLIENT_READ_CHUNK);
                }
                tokio_util::io::poll_read_buf(Pin::new(s), cx, buf)
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
