//! End-to-end check of the throwaway-PostgreSQL harness every other integration test,
//! the demo and the benchmarks stand on: if a server, a replica, an auth method or crash
//! recovery misbehaves here, failures elsewhere would be misattributed to the proxy.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use shardpool::pgcluster::{AuthMethod, PgBinaries, PgServer, ServerOptions};
use tokio_postgres::NoTls;

/// Polls `condition` until it holds; replication is asynchronous, so a single check races.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Connects like an application would (tokio-postgres, over TCP, with a password).
fn select_one(url: &str) -> Result<i32, tokio_postgres::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let driver = tokio::spawn(connection);
        let value: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
        drop(client);
        let _ = driver.await;
        Ok(value)
    })
}

fn in_recovery(server: &PgServer) -> String {
    server
        .sql("postgres", "SELECT pg_is_in_recovery()")
        .expect("pg_is_in_recovery")
}

#[test]
fn primary_replicas_auth_and_crash_restart() {
    let started = Instant::now();
    let major = PgBinaries::locate()
        .and_then(|bins| bins.version_major())
        .expect("PostgreSQL installed");
    assert!(
        major >= 12,
        "replica setup needs standby.signal (PostgreSQL 12+)"
    );

    let mut primary = PgServer::start_primary(&ServerOptions::default()).expect("primary");
    assert_eq!(primary.host(), "127.0.0.1");
    primary
        .create_user("scram_user", "s3cret pass", AuthMethod::ScramSha256)
        .expect("scram user");
    primary
        .create_user("md5_user", "md5'pass", AuthMethod::Md5)
        .expect("md5 user");
    primary
        .create_database("app", "scram_user")
        .expect("database");
    let stored = |role: &str| {
        let query = format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'");
        primary.sql("postgres", &query).expect("stored password")
    };
    assert!(stored("scram_user").starts_with("SCRAM-SHA-256$"));
    assert!(stored("md5_user").starts_with("md5"));

    let mut replica = primary.start_replica(None).expect("replica");
    let mut delayed = primary
        .start_replica(Some(Duration::from_secs(1)))
        .expect("delayed replica");
    assert_eq!(in_recovery(&primary), "f");
    assert_eq!(in_recovery(&replica), "t");
    assert_eq!(in_recovery(&delayed), "t");

    let insert_started = Instant::now();
    primary
        .sql("app", "CREATE TABLE t (id int); INSERT INTO t VALUES (42)")
        .expect("insert on primary");
    let has_row = |server: &PgServer| {
        server
            .sql("app", "SELECT count(*) FROM t WHERE id = 42")
            .is_ok_and(|count| count == "1")
    };
    eventually("the row on the replica", || has_row(&replica));
    eventually("the row on the delayed replica", || has_row(&delayed));
    assert!(
        insert_started.elapsed() >= Duration::from_secs(1),
        "recovery_min_apply_delay was not applied"
    );

    let scram_url = primary.url("scram_user", "s3cret pass", "app");
    assert_eq!(select_one(&scram_url).expect("scram login"), 1);
    let md5_url = primary.url("md5_user", "md5'pass", "postgres");
    assert_eq!(select_one(&md5_url).expect("md5 login"), 1);
    let wrong = primary.url("scram_user", "wrong", "app");
    assert!(
        select_one(&wrong).is_err(),
        "a wrong password must be rejected"
    );
    // Roles and pg_hba.conf rules reach the replicas too.
    assert_eq!(
        select_one(&replica.url("md5_user", "md5'pass", "app")).expect("replica login"),
        1
    );

    replica.kill().expect("kill replica");
    assert!(
        replica.sql("postgres", "SELECT 1").is_err(),
        "killed replica still answers"
    );
    let port = replica.port();
    replica.restart().expect("restart replica");
    assert_eq!(replica.port(), port);
    primary
        .wait_for_streaming(&replica)
        .expect("streaming again");
    primary
        .sql("app", "INSERT INTO t VALUES (43)")
        .expect("insert after restart");
    eventually("new rows after the restart", || {
        replica
            .sql("app", "SELECT count(*) FROM t")
            .is_ok_and(|count| count == "2")
    });

    let dirs: Vec<PathBuf> = [&primary, &replica, &delayed]
        .iter()
        .map(|server| server.data_dir().to_path_buf())
        .collect();
    delayed.stop().expect("stop delayed replica");
    replica.stop().expect("stop replica");
    primary.stop().expect("stop primary");
    drop((delayed, replica, primary));
    for dir in dirs {
        assert!(!dir.exists(), "{} survived drop", dir.display());
        assert!(!dir.parent().expect("scratch dir").exists());
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn parallel_primaries_and_cleanup_without_stop() {
    // Crash tests that expect committed data to survive must opt back into durable commits.
    let opts = ServerOptions::default().with("synchronous_commit", "on");
    let servers: Vec<PgServer> = thread::scope(|scope| {
        let starts: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| PgServer::start_primary(&opts)))
            .collect();
        starts
            .into_iter()
            .map(|start| start.join().expect("thread").expect("primary"))
            .collect()
    });
    assert_ne!(servers[0].port(), servers[1].port());
    let mut server = servers.into_iter().next().expect("a server");
    let conf = server
        .sql("postgres", "SHOW max_connections")
        .expect("setting");
    assert_eq!(conf, "300");

    // A restarted primary keeps its address and data; Drop without stop() still cleans up.
    server
        .sql("postgres", "CREATE TABLE kept (x int)")
        .expect("create");
    server.kill().expect("kill");
    server.restart().expect("restart after kill");
    server
        .sql("postgres", "SELECT count(*) FROM kept")
        .expect("table survives");
    let dir = server.data_dir().to_path_buf();
    drop(server);
    assert!(!dir.exists());
}
