//! `shardpool demo`: a throwaway primary and two streaming replicas (one deliberately 2 s behind, so read-your-writes
//! can be seen at work) started from the installed Postgres binaries in temp dirs, a generated config, and shardpool
//! in front. Prints the psql URL; Ctrl-C stops everything and removes the temp dirs, and a guard process does the
//! same if the demo dies any other way (SIGKILL, a crash).

use anyhow::Context as _;
use shardpool::app::Proxy;
use shardpool::config::Config;
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};

/// Tables of the sharded demo database, on each shard.
const SHOP_SCHEMA: &str = "CREATE TABLE accounts (aid bigint PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL);
     CREATE TABLE orders (aid bigint NOT NULL, id serial, amount numeric NOT NULL, PRIMARY KEY (aid, id));
     CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
     ALTER TABLE accounts OWNER TO app; ALTER TABLE orders OWNER TO app; ALTER TABLE countries OWNER TO app;";

/// Loads 1,000 accounts into `shop` through the proxy itself, so they land on their shards as any client's would.
async fn seed_shop(proxy: &Proxy) -> anyhow::Result<()> {
    let router = proxy
        .ctx
        .shard_router("shop")
        .context("shop is not sharded")?;
    for _ in 0..100 {
        if router.catalog().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let url = format!("postgres://app:app@127.0.0.1:{}/shop", proxy.addr.port());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .context("connecting to shop through the proxy")?;
    tokio::spawn(conn);
    let insert = client
        .prepare("INSERT INTO accounts (aid, owner, balance) VALUES ($1, $2, $3::text::numeric)")
        .await?;
    for aid in 1..=1000i64 {
        let owner = format!("user{aid}");
        let balance = balance_text(aid);
        client.execute(&insert, &[&aid, &owner, &balance]).await?;
    }
    client
        .batch_execute(
            "INSERT INTO countries (code, name) VALUES ('fr', 'France'), ('jp', 'Japan')",
        )
        .await?;
    Ok(())
}

/// A balance as text cast by Postgres (tokio-postgres has no numeric type without an extra crate).
fn balance_text(aid: i64) -> String {
    format!("{}.{:02}", aid * 3 % 1000, aid % 100)
}

/// How far the demo's second replica is kept behind.
const DELAY: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn run(port: u16, http_port: u16) -> anyhow::Result<()> {
    // First, before any server exists: whatever ends this process, the guard stops what it started.
    let exe =
        std::env::current_exe().context("locating the shardpool binary for the demo's guard")?;
    let owner = std::process::id().to_string();
    let _guard = shardpool::pgcluster::spawn_guard(&exe, &["demo-guard", "--owner", &owner])
        .context("starting the demo's guard process")?;
    type Servers = (PgServer, PgServer, PgServer, PgServer);
    let (primary, replica, delayed, shard1) = tokio::task::spawn_blocking(|| -> anyhow::Result<Servers> {
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
        // The sharded database `shop`: shard 0 is a database on the primary, shard 1 a server of its own.
        let shard1 = PgServer::start_primary(&options).context("starting shard 1")?;
        shard1.create_user("app", "app", AuthMethod::ScramSha256)?;
        for (server, db) in [(&primary, "shop_0"), (&shard1, "shop_1")] {
            server.create_database(db, "app")?;
            server.sql(db, SHOP_SCHEMA)?;
        }
        Ok((primary, replica, delayed, shard1))
    })
    .await??;
    // Holds the config for `shardctl` and the Unix socket; removed with the demo.
    let dir = tempfile::tempdir().context("creating a directory for the demo's config")?;
    let toml = format!(
        r#"
        [general]
        listen = "127.0.0.1:{port}"
        unix_socket_dir = "{socket_dir}"
        http_listen = "127.0.0.1:{http_port}"
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
        consistency = "read_proxy_writes"

        [databases.shop.sharding]
        vshards = 256
        reference_tables = ["countries"]
        [[databases.shop.sharding.shards]]
        host = "127.0.0.1"
        port = {primary_port}
        server_database = "shop_0"
        [[databases.shop.sharding.shards]]
        host = "127.0.0.1"
        port = {shard1_port}
        server_database = "shop_1"
        [[databases.shop.sharding.tables]]
        name = "accounts"
        key = "aid"
        type = "int8"
        map = "hash"
        [[databases.shop.sharding.tables]]
        name = "orders"
        key = "aid"
        type = "int8"
        map = "hash"
        "#,
        primary_port = primary.port(),
        replica_port = replica.port(),
        delayed_port = delayed.port(),
        shard1_port = shard1.port(),
        socket_dir = dir.path().display(),
    );
    let config = Config::from_toml(&toml)?;
    // Written out for `shardctl`, which reads the sharding section from a file.
    let config_path = dir.path().join("shardpool.toml");
    std::fs::write(&config_path, &toml).context("writing the demo's config")?;
    if let Some(sharding) = config
        .databases
        .get("shop")
        .and_then(|d| d.sharding.as_ref())
    {
        let (mut client, conn) =
            tokio_postgres::connect(&primary.url("app", "app", "shop_0"), tokio_postgres::NoTls)
                .await
                .context("connecting to the shop catalog")?;
        tokio::spawn(conn);
        shardpool::sharding::catalog::init(&mut client, sharding)
            .await
            .context("creating the shop catalog")?;
    }
    let proxy = Proxy::start(config, None).await?;
    seed_shop(&proxy).await?;
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
    println!(
        "  or over the Unix socket:  PGPASSWORD=app psql -h {} -p {} -U app app",
        dir.path().display(),
        proxy.addr.port()
    );
    println!();
    println!("  Reads go to replicas, writes to the primary; inet_server_port() shows who answered. Try:");
    println!("    INSERT INTO accounts (owner) VALUES ('me');");
    println!("    SELECT owner, inet_server_port() FROM accounts WHERE owner = 'me';  -- never the delayed one while it lacks your row");
    println!("    SET shardpool.consistency = eventual;  -- now the delayed replica may answer, without your row");
    println!("    SHOW shardpool.route SELECT * FROM accounts FOR UPDATE;");
    println!("  and in the console: SHOW REPLICAS;");
    println!();
    println!(
        "  sharded:  psql postgres://app:app@127.0.0.1:{}/shop   (2 shards, 256 vshards; shard 1 on port {})",
        proxy.addr.port(),
        shard1.port()
    );
    println!("    SELECT owner, inet_server_port() FROM accounts WHERE aid = 42;   -- one shard, by the key's vshard");
    println!("    SELECT count(*), sum(balance), avg(balance) FROM accounts;       -- every shard, merged");
    println!(
        "    SELECT aid, balance FROM accounts ORDER BY balance DESC LIMIT 5; -- streaming merge"
    );
    println!("    INSERT INTO accounts (aid, owner, balance) VALUES (1001, 'new', 5);");
    println!("    BEGIN; UPDATE accounts SET balance = 0 WHERE aid = 1; UPDATE accounts SET balance = 0 WHERE aid = 2; -- one shard per transaction");
    println!("  and in the console: SHOW SHARDS; SHOW VSHARDS; SHOW REMAPS;");
    println!(
        "  move a quarter of the vshards to shard 1 while you keep writing (add --dry-run to see the plan first):"
    );
    println!(
        "    shardctl remap --config {} --database shop --user app --shard-user postgres --vshards 0-63 --to 1",
        config_path.display()
    );
    println!(
        "  console:  psql postgres://admin:admin@127.0.0.1:{}/shardpool -c 'SHOW POOLS'",
        proxy.addr.port()
    );
    if let Some(http) = &proxy.http {
        println!(
            "  metrics:  curl http://{}/metrics   (Prometheus format; /healthz and /readyz for load balancers)",
            http.addr
        );
    }
    println!();
    println!("Press Ctrl-C to stop and remove everything.");
    crate::serve_until_signal(proxy).await?;
    drop(shard1);
    drop(delayed);
    drop(replica);
    drop(primary);
    Ok(())
}
