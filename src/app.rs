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

use crate::config::Config;
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
    accept: JoinHandle<()>,
    unix_accept: Option<JoinHandle<()>>,
    /// The `/metrics`, `/healthz`, `/readyz` listener (`http_listen`); it answers until the proxy is dropped, so
    /// `/readyz` says 503 throughout a graceful shutdown.
    pub http: Option<crate::http::HttpServer>,
}

impl Proxy {
    /// Starts serving `config` (its `general.listen` may use port 0). `config_path` enables RELOAD.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Proxy, StartError> {
        let listen = config.general.listen.clone();
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
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
        ctx.spin.configure_for_current_runtime();
        ctx.set_config_path(config_path);
        ctx.apply_tls(&config)?;
        // Clusters (and their replication monitors) start now, so routing has replica state before the first client.
        for (name, db) in &config.databases {
            for shard in 0..db.shard_configs(name).len() {
                ctx.cluster(name, shard as u16);
            }
        }
        ctx.start_shard_routers(&config);
        let accept = tokio::spawn(crate::frontend::listener::accept_loop(
            Arc::clone(&ctx),
            Incoming::Tcp(listener),
            Arc::clone(&ctx.tls),
        ));
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
            unix_accept,
            http,
        })
    }

    /// Graceful shutdown: no new connections, idle clients are told and closed, clients inside a transaction may
    /// finish it; after `shutdown_timeout` the rest are cut off. Returns the number of connections cut off.
    pub async fn shutdown(self) -> usize {
        let timeout = self.ctx.config().general.shutdown_timeout.0;
        self.ctx.begin_shutdown();
        let _ = self.accept.await;
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
        self.ctx.connections.load(Ordering::Relaxed)
    }
}
