//! Starting and stopping a proxy: binds the listener, spawns the accept loop, and offers a graceful shutdown that
//! stops accepting, lets transactions in flight finish (up to `shutdown_timeout`), then closes what is left. Used by
//! the `shardpool` binary, `shardpool demo`, and the integration tests (which run proxies in-process on port 0).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, RuntimeShape};
use crate::context::Context;
use crate::frontend::listener::Incoming;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::frontend::tls::TlsError),
    #[error("cannot listen on the Unix socket: {0}")]
    Unix(#[from] crate::frontend::unix::UnixSocketError),
}

pub struct Proxy {
    pub ctx: Arc<Context>,
    pub addr: SocketAddr,
    /// The Unix socket file clients may connect to as well (`general.unix_socket_dir`).
    pub unix_socket: Option<PathBuf>,
    /// One accept loop per core (one in all with the work-stealing runtime).
    accept: Vec<JoinHandle<()>>,
    /// With `runtime = "thread_per_core"`: the cores after the first (the caller's runtime).
    cores: Option<crate::cores::Cores>,
    unix_accept: Option<JoinHandle<()>>,
    /// The `/metrics`, `/healthz`, `/readyz` listener (`http_listen`); it answers until the proxy is dropped, so
    /// `/readyz` says 503 throughout a graceful shutdown.
    pub http: Option<crate::http::HttpServer>,
}

impl Proxy {
    /// Starts serving `config` (its `general.listen` may use port 0). `config_path` enables RELOAD.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Proxy, StartError> {
        let listen = config.general.listen.clone();
        let bind_error = |source| StartError::Bind {
            addr: listen.clone(),
            source,
        };
        let per_core = config.general.runtime == RuntimeShape::ThreadPerCore;
        let (listener, more) = if per_core {
            let (first, more) = bind_per_core(&listen, crate::cores::count(config.general.workers))
                .await
                .map_err(bind_error)?;
            (first, more)
        } else {
            (
                TcpListener::bind(&listen).await.map_err(bind_error)?,
                Vec::new(),
            )
        };
        let addr = listener.local_addr().map_err(bind_error)?;
        // Named for the TCP port actually bound, so with port 0 (tests) the socket still matches `addr`.
        let unix = match &config.general.unix_socket_dir {
            Some(dir) => Some(
                crate::frontend::unix::bind(dir, addr.port(), config.general.unix_socket_mode)
                    .await?,
            ),
            None => None,
        };
        let http =
            match &config.general.http_listen {
                Some(a) => Some(crate::http::HttpServer::bind(a).await.map_err(|source| {
                    StartError::Bind {
                        addr: a.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        let ctx = Context::new(config.clone());
        ctx.spin.configure_for_current_runtime(per_core);
        ctx.set_config_path(config_path);
        ctx.apply_tls(&config)?;
        // Clusters (and their replication monitors) start now, so routing has replica state before the first client.
        for (name, db) in &config.databases {
            for shard in 0..db.shard_configs(name).len() {
                ctx.cluster(name, shard as u16);
            }
        }
        ctx.start_shard_routers(&config);
        let mut accept = vec![tokio::spawn(crate::frontend::listener::accept_loop(
            Arc::clone(&ctx),
            Incoming::Tcp(listener),
            Arc::clone(&ctx.tls),
        ))];
        let cores = if per_core {
            if tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::CurrentThread
            {
                crate::cores::mark_current(0);
            }
            let cores =
                crate::cores::Cores::start(more.len() + 1).map_err(|source| StartError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            for (handle, std_listener) in cores.handles().iter().zip(more) {
                let ctx = Arc::clone(&ctx);
                accept.push(handle.spawn(async move {
                    // Registered here, with this core's own I/O driver.
                    match TcpListener::from_std(std_listener) {
                        Ok(l) => {
                            let tls = Arc::clone(&ctx.tls);
                            crate::frontend::listener::accept_loop(ctx, Incoming::Tcp(l), tls).await
                        }
                        Err(e) => tracing::error!(error = %e, "a core could not listen"),
                    }
                }));
            }
            tracing::info!(cores = accept.len(), "thread-per-core runtime");
            Some(cores)
        } else {
            None
        };
        let http = match http {
            Some(l) => Some(crate::http::HttpServer::start(&ctx, l).map_err(|source| {
                StartError::Bind {
                    addr: config.general.http_listen.clone().unwrap_or_default(),
                    source,
                }
            })?),
            None => None,
        };
        tracing::info!(%addr, "shardpool listening");
        let unix_socket = unix.as_ref().map(|u| u.path().to_owned());
        let unix_accept = unix.map(|u| {
            tracing::info!(path = %u.path().display(), "shardpool listening");
            tokio::spawn(crate::frontend::listener::accept_loop(
                Arc::clone(&ctx),
                Incoming::Unix(u),
                Arc::clone(&ctx.tls),
            ))
        });
        Ok(Proxy {
            ctx,
            addr,
            unix_socket,
            accept,
            cores,
            unix_accept,
            http,
        })
    }

    /// Graceful shutdown: no new connections, idle clients are told and closed, clients inside a transaction may
    /// finish it; after `shutdown_timeout` the rest are cut off. Returns the number of connections cut off.
    pub async fn shutdown(self) -> usize {
        let timeout = self.ctx.config().general.shutdown_timeout.0;
        self.ctx.begin_shutdown();
        for accept in self.accept {
            let _ = accept.await;
        }
        // Its socket file is removed as the loop ends.
        if let Some(unix) = self.unix_accept {
            let _ = unix.await;
        }
        let deadline = Instant::now() + timeout;
        while self.ctx.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pool in self.ctx.pools() {
            pool.close();
        }
        let cut = self.ctx.connections.load(Ordering::Relaxed);
        drop(self.cores);
        cut
    }
}

/// `count` listeners on the same address with `SO_REUSEPORT`, so the kernel spreads connections over the cores
/// (by a hash of the client's address and port). The first one is registered with the calling runtime; the others
/// are handed over as std listeners, to be registered by the runtime of the core that accepts on them. With port 0
/// the first one picks the port and the others take the same.
async fn bind_per_core(
    listen: &str,
    count: usize,
) -> std::io::Result<(TcpListener, Vec<std::net::TcpListener>)> {
    let mut addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
        })?;
    let bind = |addr: SocketAddr| -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    let first = bind(addr)?;
    addr = first.local_addr()?;
    let mut more = Vec::new();
    for _ in 1..count {
        more.push(bind(addr)?.into_std()?);
    }
    Ok((first, more))
}
