//! `shardpool demo`: a throwaway primary and two streaming replicas (one deliberately 2 s behind, so read-your-writes
//! can be seen at work) started from the installed Postgres binaries in temp dirs, a generated config, and shardpool
//! in front. Prints the psql URL; Ctrl-C stops everything and removes the temp dirs.

use anyhow::Context as _;
use shardpool::app::Proxy;
use shardpool::config::Config;
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};

/// How far the demo's second replica is kept behind.
const DELAY: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn run(port: u16) -> anyhow::Result<()> {
    let (primary, replica, delayed) = tokio::task::spawn_blocking(|| -> anyhow::Result<(PgServer, PgServer, PgServer)> {
        // Commits wait for their WAL to be written, as in production, so replicas can have them within milliseconds.
        let options = ServerOptions::default().with("synchronous_commit", "on");
        let primary = PgServer::start_primary(&options).context("starting the primary")?;
        primary.create_user("app", "app", AuthMethod::ScramSha256)?;
        primary.create_database("app", "app")?;
        primary.sql(
            "app",
            "CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL DEFAULT 0);
             INSERT INTO accounts (owner, balance) SELECT 'user' || g, g * 10 FROM generate_series(1, 100) g;
             ALTER TABLE accounts OWNER TO app;",
        )?;
        let replica = primary.start_replica(None).context("starting the replica")?;
        let delayed = primary
            .start_replica(Some(DELAY))
            .context("starting the delayed replica")?;
        Ok((primary, replica, delayed))
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
        replicas = [{{ port = {replica_port} }}, {{ port = {delayed_port} }}]
        consistency = "read_your_writes"
        "#,
        primary_port = primary.port(),
        replica_port = replica.port(),
        delayed_port = delayed.port(),
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
    println!(
        "  delayed  postgres on 127.0.0.1:{} (streaming, replay delayed by {} s)",
        delayed.port(),
        DELAY.as_secs()
    );
    println!();
    println!(
        "  connect:  psql postgres://app:app@127.0.0.1:{}/app",
        proxy.addr.port()
    );
    println!();
    println!("  Reads go to replicas, writes to the primary; inet_server_port() shows who answered. Try:");
    println!("    INSERT INTO accounts (owner) VALUES ('me');");
    println!("    SELECT owner, inet_server_port() FROM accounts WHERE owner = 'me';  -- read-your-writes: never the delayed one");
    println!("    SET shardpool.consistency = eventual;  -- now the delayed replica may answer, without your row");
    println!("    SHOW shardpool.route SELECT * FROM accounts FOR UPDATE;");
    println!("  and in the console: SHOW REPLICAS;");
    println!(
        "  console:  psql postgres://admin:admin@127.0.0.1:{}/shardpool -c 'SHOW POOLS'",
        proxy.addr.port()
    );
    println!();
    println!("Press Ctrl-C to stop and remove everything.");
    crate::serve_until_signal(proxy).await?;
    drop(delayed);
    drop(replica);
    drop(primary);
    Ok(())
}
