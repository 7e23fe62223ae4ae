//! The HTTP listener (`[general] http_listen`): `/metrics` for Prometheus, `/healthz` and `/readyz` for load
//! balancers and Kubernetes probes. Nothing else, so it is a small HTTP/1.x server of its own rather than a
//! framework: one request per connection (`Connection: close`), GET and HEAD only, no bodies read. It is built to
//! be exposed to a monitoring network without becoming a way to hurt the proxy: a request head must arrive whole
//! within `http_request_timeout` (408 otherwise, so a slow client cannot hold a connection open) and within 8 KiB
//! (431), at most `MAX_CONNECTIONS` requests are served at once (more are closed at accept), and a client that does
//! not read its response is dropped after `WRITE_TIMEOUT`. The accept loop is a supervised task (SHOW TASKS): an
//! accept error restarts it after a backoff instead of ending it.

pub mod ready;
pub mod request;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::context::Context;
use request::{read_head, HeadError, Request};

/// Requests served at once at most; connections accepted beyond this are closed unanswered.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client has to take its whole response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// After answering, what the client still sends (a body, the rest of an oversize head) is read and discarded for
/// this long, up to `DRAIN_BYTES`, before the socket closes: closing with unread input would reset the connection
/// and could destroy the response before the client read it.
const DRAIN_TIME: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 64 * 1024;

/// A running HTTP listener; stops when dropped.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl HttpServer {
    pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
        TcpListener::bind(listen).await
    }

    /// Starts serving on `listener` as a supervised task of `ctx`.
    pub fn start(ctx: &Arc<Context>, listener: TcpListener) -> std::io::Result<HttpServer> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            listener,
            ctx: Arc::downgrade(ctx),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            ready: ready::Readiness::default(),
        });
        ctx.tasks.spawn("http listener", addr.to_string(), move || {
            serve(Arc::clone(&shared), stopped.clone())
        });
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        Ok(HttpServer { addr, stop })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// What outlives one run of the accept loop: a restarted run goes on with the same socket and limits.
struct Shared {
    listener: TcpListener,
    /// Weak: the listener must not keep a proxy that was dropped without a shutdown alive.
    ctx: Weak<Context>,
    slots: Arc<Semaphore>,
    ready: ready::Readiness,
}

async fn serve(
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> crate::supervisor::RunResult {
    loop {
        if *stopped.borrow_and_update() {
            return Ok(());
        }
        let accepted = tokio::select! {
            _ = stopped.changed() => continue,
            a = shared.listener.accept() => a,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            // Out of file descriptors and the like: fail the run; the supervisor retries after a backoff.
            Err(e) => return Err(format!("accept: {e}")),
        };
        let Some(ctx) = shared.ctx.upgrade() else {
            return Ok(());
        };
        let Ok(slot) = Arc::clone(&shared.slots).try_acquire_owned() else {
            tracing::debug!("http: {MAX_CONNECTIONS} requests in progress; connection closed");
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _slot = slot;
            handle(&ctx, &shared, socket).await;
        });
    }
}

async fn handle(ctx: &Arc<Context>, shared: &Shared, mut socket: TcpStream) {
    let timeout = ctx.config().general.http_request_timeout.0;
    let (response, head_only) = match tokio::time::timeout(timeout, read_head(&mut socket)).await {
        Err(_) => (Response::text(408, "request timeout\n"), false),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLarge)) => (Response::text(431, "request head too large\n"), false),
        Ok(Err(HeadError::Malformed)) => (Response::text(400, "bad request\n"), false),
        Ok(Err(HeadError::Version)) => (Response::text(505, "HTTP/1.x only\n"), false),
        Ok(Ok(request)) => (route(ctx, shared, &request).await, request.method == "HEAD"),
    };
    let bytes = response.encode(head_only);
    let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
        socket.write_all(&bytes).await?;
        socket.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(DRAIN_TIME, drain(&mut socket)).await;
    }
}

async fn drain(socket: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < DRAIN_BYTES {
        match socket.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

async fn route(ctx: &Arc<Context>, shared: &Shared, request: &Request) -> Response {
    let path = request.path.as_str();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return Response::text(404, "not found; try /metrics, /healthz or /readyz\n");
    }
    if !matches!(request.method.as_str(), "GET" | "HEAD") {
        let mut r = Response::text(405, "only GET and HEAD\n");
        r.allow = true;
        return r;
    }
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: crate::metrics::exposition::CONTENT_TYPE,
            body: crate::metrics::render(ctx).into_bytes(),
            allow: false,
        },
        "/readyz" => match shared.ready.check(ctx).await {
            Ok(()) => Response::text(200, "ready\n"),
            Err(reason) => Response::text(503, &format!("not ready: {reason}\n")),
        },
        _ => Response::text(200, "ok\n"),
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// Says which methods are allowed (with 405).
    allow: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            allow: false,
        }
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if self.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}
