//! `shardctl`: the operator CLI. Talks to a running shardpool's admin console, so scripts do not need psql.
//! Sharding verbs (init, map, route, remap) join it as those features land.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "shardctl", version, about = "Operate a running shardpool")]
struct Cli {
    /// Admin console URL, e.g. postgres://admin:secret@127.0.0.1:6432/shardpool
    #[arg(long, env = "SHARDPOOL_ADMIN_URL")]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// SHOW POOLS|CLIENTS|SERVERS|STATS|CONFIG|DATABASES|USERS|VERSION
    Show { what: String },
    /// Re-read the config file.
    Reload,
    /// Wait until all server connections are idle and hold new transactions.
    Pause,
    /// Release paused transactions.
    Resume,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sql = match &cli.command {
        Command::Show { what } => format!("SHOW {what}"),
        Command::Reload => "RELOAD".into(),
        Command::Pause => "PAUSE".into(),
        Command::Resume => "RESUME".into(),
    };
    let (client, conn) = tokio_postgres::connect(&cli.url, tokio_postgres::NoTls)
        .await
        .context("connecting to the admin console")?;
    tokio::spawn(conn);
    for msg in client
        .simple_query(&sql)
        .await
        .context("running the command")?
    {
        match msg {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                let cells: Vec<String> = (0..row.len())
                    .map(|i| format!("{}={}", row.columns()[i].name(), row.get(i).unwrap_or("")))
                    .collect();
                println!("{}", cells.join(" "));
            }
            tokio_postgres::SimpleQueryMessage::CommandComplete(_) => {}
            _ => {}
        }
    }
    Ok(())
}
