//! The `shardpool` binary: run the proxy from a config file, or `shardpool demo` to start throwaway Postgres servers
//! with shardpool in front. Signals: SIGHUP reloads, SIGTERM/SIGINT shut down gracefully.

mod demo;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shardpool::app::Proxy;
use shardpool::config::{Config, RuntimeShape};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "shardpool",
    version,
    about = "PostgreSQL scaling proxy: pooling, read/write splitting, sharding"
)]
struct Cli {
    /// Config file (TOML). See config/shardpool.toml.
    #[arg(short, long, default_value = "config/shardpool.toml")]
    config: PathBuf,
    /// Log format: "text" for people, "json" for log pipelines (one JSON object per line). Level: RUST_LOG.
    #[arg(long, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Check a config file and print every problem found.
    CheckConfig,
    /// Start a throwaway primary and streaming replica from the installed Postgres binaries, with shardpool in front.
    Demo {
        /// Port for shardpool to listen on.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Port for the /metrics, /healthz and /readyz listener.
        #[arg(long, default_value_t = 9930)]
        http_port: u16,
    },
    /// Internal: started by `demo`, stops the demo's Postgres servers and deletes their files once the demo
    /// process `owner` is gone, however it ended (SIGKILL included).
    #[command(hide = true)]
    DemoGuard {
        #[arg(long)]
        owner: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format.as_str() {
        "json" => logs.json().init(),
        "text" => logs.init(),
        other => anyhow::bail!("unknown --log-format {other:?} (text or json)"),
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            Config::load(&cli.config)?;
            println!("{}: OK", cli.config.display());
            Ok(())
        }
        Command::Run => {
            let config = Config::load(&cli.config)?;
            let rt = match config.general.runtime {
                // Core 0: this thread; `Proxy::start` starts the other cores.
                RuntimeShape::ThreadPerCore => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the runtime")?,
                RuntimeShape::WorkStealing => runtime(config.general.workers)?,
            };
            rt.block_on(run(config, cli.config))
        }
        Command::Demo { port, http_port } => runtime(0)?.block_on(demo::run(port, http_port)),
        Command::DemoGuard { owner } => Ok(shardpool::pgcluster::run_guard(owner)?),
    }
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all().build().context("starting the runtime")
}

async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let proxy = Proxy::start(config, Some(path)).await?;
    serve_until_signal(proxy).await
}

/// Serves until SIGTERM/SIGINT, reloading on SIGHUP.
pub async fn serve_until_signal(proxy: Proxy) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Err(e) = proxy.ctx.reload_from_disk() {
                    tracing::error!(error = %e, "reload failed; keeping the current configuration");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: waiting for transactions in flight");
    let cut = proxy.shutdown().await;
    if cut > 0 {
        tracing::warn!(
            connections = cut,
            "shutdown timeout reached; closed remaining connections"
        );
    }
    Ok(())
}
