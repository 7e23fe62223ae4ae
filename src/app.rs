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

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::frontend::tls::TlsError),
}

pub struct Proxy {
    pub ctx: Arc<Context>,
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
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
            listener,
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
        Ok(Proxy {
            ctx,
            addr,
            accept,
            http,
        })
    }

    /// Graceful shutdown: no new connections, idle clients are told and closed, clients inside a transaction may
    /// finish it; after `shutdown_timeout` the rest are cut off. Returns the number of connections cut off.
    pub async fn shutdown(self) -> usize {
        let timeout = self.ctx.config().general.shutdown_timeout.0;
        self.ctx.begin_shutdown();
        let _ = self.accept.await;
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
