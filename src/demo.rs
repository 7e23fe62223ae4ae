//! `shardpool demo`: a throwaway primary and a streaming replica started from the installed Postgres binaries in a
//! temp dir, a generated config, and shardpool in front. Prints the psql URL; Ctrl-C stops everything and removes
//! the temp dirs.

use anyhow::Context as _;
use shardpool::app::Proxy;
use shardpool::config::Config;
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};

pub async fn run(port: u16) -> anyhow::Result<()> {
    let (primary, replica) = tokio::task::spawn_blocking(|| -> anyhow::Result<(PgServer, PgServer)> {
        let primary = PgServer::start_primary(&ServerOptions::default()).context("starting the primary")?;
        primary.create_user("app", "app", AuthMethod::ScramSha256)?;
        primary.create_database("app", "app")?;
        primary.sql(
            "app",
            "CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL DEFAULT 0);
             INSERT INTO accounts (owner, balance) SELECT 'user' || g, g * 10 FROM generate_series(1, 100) g;
             ALTER TABLE accounts OWNER TO app;",
        )?;
        let replica = primary.start_replica(None).context("starting the replica")?;
        Ok((primary, replica))
    })
    .await??;
    let config = Config::from_toml(&format!(
        r#"
        [general]
        listen = "127.0.0.1:{port}"
        admin_users = ["admin"]
        pool_size = 10

        [[users]]
        name = "app"
        password = "app"

        [[users]]
        name = "admin"
        password = "admin"

        [databases.app]
        host = "127.0.0.1"
        port = {primary_port}
        "#,
        primary_port = primary.port(),
    ))?;
    let proxy = Proxy::start(config, None).await?;
    println!("shardpool demo is running.");
    println!(
        "  primary  postgres on 127.0.0.1:{} (data in {})",
        primary.port(),
        primary.data_dir().display()
    );
    println!(
        "  replica  postgres on 127.0.0.1:{} (streaming from the primary)",
        replica.port()
    );
    println!();
    println!(
        "  connect:  psql postgres://app:app@127.0.0.1:{}/app",
        proxy.addr.port()
    );
    println!(
        "  console:  psql postgres://admin:admin@127.0.0.1:{}/shardpool -c 'SHOW POOLS'",
        proxy.addr.port()
    );
    println!();
    println!("Press Ctrl-C to stop and remove everything.");
    crate::serve_until_signal(proxy).await?;
    drop(replica);
    drop(primary);
    Ok(())
}
