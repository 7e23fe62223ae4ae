//! Users that are not in the config: `auth_query` lookups through an `auth_user` (roles created, changed and dropped
//! while shardpool runs), `auth_file` in PgBouncer's userlist.txt format (plain, md5 and SCRAM secrets, reloads), and
//! the pass-through logins to the server those users need, against a real Postgres whose pg_hba.conf demands SCRAM
//! (or md5) from them. The config never holds these users' passwords, so a working query proves the proxy logged in
//! to the server with what the client's own login left behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{connect, eventually, sqlstate, try_connect, Backend, TestProxy, DB};
use shardpool::pgcluster::AuthMethod;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);
/// How long a test waits for a cache entry to expire (the TTLs in these tests are well under a second).
const TTL_WAIT: Duration = Duration::from_secs(15);

/// The harness config plus an `auth_user` defined in `[[users]]` and `extra_general` in `[general]`.
fn config_with_auth_user(backend: &Backend, extra_general: &str) -> String {
    format!(
        "{}\n[[users]]\nname = \"authuser\"\npassword = \"authpw\"\n",
        backend.config_toml(extra_general)
    )
}

/// A role created straight on the server, with a SCRAM secret; pg_hba.conf's catch-all rule demands SCRAM from it.
fn create_scram_role(backend: &Backend, name: &str, password: &str) {
    backend.sql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE {name} LOGIN PASSWORD '{password}'; \
         GRANT ALL ON SCHEMA public TO {name}"
    ));
}

async fn current_user(url: &str) -> String {
    let client = timeout(STEP, connect(url)).await.expect("login hung");
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    row.get(0)
}

/// The SQLSTATE and message of a refused login (panics if it succeeds or hangs).
async fn refused(url: &str) -> (String, String) {
    match timeout(STEP, try_connect(url)).await.expect("login hung") {
        Ok(_) => panic!("{url} logged in but should have been refused"),
        Err(e) => {
            let message = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string());
            (sqlstate(&e), message)
        }
    }
}

async fn logs_in(url: &str) -> bool {
    matches!(timeout(STEP, try_connect(url)).await, Ok(Ok(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_created_changed_and_dropped_on_the_server_follow_through_auth_query() {
    let backend = Backend::start().await;
    backend
        .pg
        .create_user("authuser", "authpw", AuthMethod::ScramSha256)
        .unwrap();
    // The default auth_query reads pg_authid, which takes a superuser.
    backend.sql("ALTER ROLE authuser SUPERUSER");
    let proxy = TestProxy::start(&config_with_auth_user(
        &backend,
        "auth_user = \"authuser\"\nauth_cache_ttl = \"300ms\"\nauth_cache_negative_ttl = \"100ms\"",
    ))
    .await;

    // Created after the proxy started; the proxy's config knows nothing of it.
    create_scram_role(&backend, "alice", "alicepw");
    assert_eq!(
        backend.sql("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'alice'"),
        "SCRAM-SHA-256$"
    );
    let alice = proxy.url("alice", "alicepw", DB);
    assert_eq!(current_user(&alice).await, "alice");

    // Several server connections at once: each is a fresh SCRAM login to the server with the pass-through keys.
    let clients: Vec<_> = futures_join(&alice, 3).await;
    let mut pids = Vec::new();
    for c in &clients {
        c.batch_execute("BEGIN").await.unwrap();
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        pids.push(pid);
    }
    pids.sort();
    pids.dedup();
    assert_eq!(
        pids.len(),
        3,
        "three transactions, three server connections"
    );
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
    let pools = proxy.admin("SHOW POOLS").await;
    assert!(
        pools
            .iter()
            .any(|p| p["user"] == "alice" && p["database"] == DB),
        "{pools:?}"
    );
    // A reload keeps the pools of looked-up users and their clients' sessions.
    connect(&proxy.admin_url())
        .await
        .simple_query("RELOAD")
        .await
        .unwrap();
    for c in &clients {
        let n: i32 = c.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
        assert_eq!(n, 42);
    }

    // Wrong password and unknown user: the same 28P01 as Postgres, telling nothing about which it was.
    let (code, msg) = refused(&proxy.url("alice", "wrong", DB)).await;
    assert_eq!(code, "28P01", "{msg}");
    assert_eq!(msg, "password authentication failed for user \"alice\"");
    let (code, msg) = refused(&proxy.url("nobody", "x", DB)).await;
    assert_eq!(code, "28P01", "{msg}");
    assert_eq!(msg, "password authentication failed for user \"nobody\"");
    // A role that may not log in, or whose password expired, is refused like an unknown one.
    create_scram_role(&backend, "expired", "expiredpw");
    backend.sql("ALTER ROLE expired VALID UNTIL '2000-01-01'");
    assert_eq!(
        refused(&proxy.url("expired", "expiredpw", DB)).await.0,
        "28P01"
    );

    // A changed password: after the cache TTL the new one works and the old one does not. Server connections the
    // pool already holds stay; new ones log in with the keys of the client that used the new password.
    backend.sql("ALTER ROLE alice PASSWORD 'alicepw2'");
    let alice2 = proxy.url("alice", "alicepw2", DB);
    eventually(TTL_WAIT, "the new password to be looked up", || {
        logs_in(&alice2)
    })
    .await;
    assert_eq!(refused(&alice).await.0, "28P01");
    assert_eq!(current_user(&alice2).await, "alice");

    // A dropped role stops logging in once its cache entry expires.
    create_scram_role(&backend, "bob", "bobpw");
    let bob = proxy.url("bob", "bobpw", DB);
    assert_eq!(current_user(&bob).await, "bob");
    backend.sql("REVOKE ALL ON SCHEMA public FROM bob; DROP ROLE bob");
    eventually(TTL_WAIT, "the dropped role to be refused", || async {
        !logs_in(&bob).await
    })
    .await;
    assert_eq!(refused(&bob).await.0, "28P01");

    // An md5 role (pg_hba.conf demands md5 from it): the proxy answers the server's md5 challenge from the hash.
    backend
        .pg
        .create_user("carol", "carolpw", AuthMethod::Md5)
        .unwrap();
    assert!(backend
        .sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'carol'")
        .starts_with("md5"));
    assert_eq!(
        current_user(&proxy.url("carol", "carolpw", DB)).await,
        "carol"
    );
    assert_eq!(refused(&proxy.url("carol", "nope", DB)).await.0, "28P01");

    // A burst of first logins for a new role: all get in, through at most two auth_user connections per server.
    create_scram_role(&backend, "eve", "evepw");
    let eves = futures_join(&proxy.url("eve", "evepw", DB), 8).await;
    assert_eq!(eves.len(), 8);
    let lookups: i64 = backend
        .sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'authuser'")
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&lookups),
        "{lookups} auth_user connections"
    );

    // Config users are not looked up: `app` still logs in with its configured password only.
    assert_eq!(current_user(&proxy.app_url()).await, "app");
}

/// `n` clients logged in at once.
async fn futures_join(url: &str, n: usize) -> Vec<tokio_postgres::Client> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let url = url.to_owned();
        handles.push(tokio::spawn(async move {
            timeout(STEP, connect(&url)).await.expect("login hung")
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_through_a_security_definer_function_and_its_failures() {
    let backend = Backend::start().await;
    backend
        .pg
        .create_user("authuser", "authpw", AuthMethod::ScramSha256)
        .unwrap();
    // The setup PgBouncer recommends: auth_user is no superuser and may only call one function that reads
    // pg_authid on its behalf.
    backend.sql(
        "CREATE FUNCTION public.lookup_secret(name text) RETURNS TABLE(usename text, passwd text) \
         LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS \
         $$ SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname = name AND rolcanlogin $$; \
         REVOKE ALL ON FUNCTION public.lookup_secret(text) FROM PUBLIC; \
         GRANT EXECUTE ON FUNCTION public.lookup_secret(text) TO authuser",
    );
    let query = "auth_query = \"SELECT usename, passwd FROM public.lookup_secret($1)\"";
    // A second database on the same server, where the function does not exist.
    let other_db = format!(
        "\n[databases.other]\nport = {}\nserver_database = \"postgres\"\n",
        backend.pg.port()
    );
    let proxy = TestProxy::start(&format!(
        "{}{other_db}",
        config_with_auth_user(&backend, &format!("auth_user = \"authuser\"\n{query}"))
    ))
    .await;
    create_scram_role(&backend, "dora", "dorapw");
    assert_eq!(current_user(&proxy.url("dora", "dorapw", DB)).await, "dora");
    // By default the lookup runs in the client's database: there the query fails, which is not a wrong password.
    let (code, msg) = refused(&proxy.url("dora", "dorapw", "other")).await;
    assert_eq!(code, "08006", "{msg}");
    assert!(msg.contains("auth_query failed"), "{msg}");
    drop(proxy);
    // auth_dbname runs every lookup in one database.
    let proxy = TestProxy::start(&format!(
        "{}{other_db}",
        config_with_auth_user(
            &backend,
            &format!("auth_user = \"authuser\"\nauth_dbname = \"{DB}\"\n{query}")
        )
    ))
    .await;
    assert_eq!(
        current_user(&proxy.url("dora", "dorapw", "other")).await,
        "dora"
    );
    assert_eq!(current_user(&proxy.url("dora", "dorapw", DB)).await, "dora");
    // The name travels as a parameter: quotes in it are data, not SQL.
    let (code, _) = refused(&proxy.url("x'||'y", "pw", DB)).await;
    assert_eq!(code, "28P01");
    assert_eq!(
        refused(&proxy.url("nobody", "x", "nosuchdb")).await.0,
        "28P01"
    );
    drop(proxy);

    // auth_user cannot log in (wrong password): a connection failure, 08006, promptly, never a hang.
    let toml = config_with_auth_user(&backend, &format!("auth_user = \"authuser\"\n{query}"))
        .replace("password = \"authpw\"", "password = \"wrong\"");
    let proxy = TestProxy::start(&toml).await;
    let (code, msg) = refused(&proxy.url("dora", "dorapw", DB)).await;
    assert_eq!(code, "08006", "{msg}");
    assert!(msg.contains("auth_user could not log in"), "{msg}");
    // Users in the config are unaffected.
    assert_eq!(current_user(&proxy.app_url()).await, "app");
    drop(proxy);

    // The database's server is down: 08006 within the connect timeout.
    let dead = shardpool::pgcluster::free_port();
    let toml = config_with_auth_user(
        &backend,
        &format!("auth_user = \"authuser\"\nserver_connect_timeout = \"2s\"\n{query}"),
    )
    .replace(
        &format!("port = {}", backend.pg.port()),
        &format!("port = {dead}"),
    );
    let proxy = TestProxy::start(&toml).await;
    let started = std::time::Instant::now();
    let (code, msg) = refused(&proxy.url("dora", "dorapw", DB)).await;
    assert_eq!(code, "08006", "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A userlist.txt line, quoting as PgBouncer does.
fn line(user: &str, secret: &str) -> String {
    format!(
        "\"{}\" \"{}\"\n",
        user.replace('"', "\"\""),
        secret.replace('"', "\"\"")
    )
}

fn check_config(path: &Path) -> (bool, String) {
    let out = Command::new(common::bin("shardpool"))
        .arg("--config")
        .arg(path)
        .arg("check-config")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_file_with_plain_md5_and_scram_secrets_and_reload() {
    let backend = Backend::start().await;
    create_scram_role(&backend, "fileplain", "plainpw");
    create_scram_role(&backend, "filescram", "scrampw");
    backend
        .pg
        .create_user("filemd5", "md5pw", AuthMethod::Md5)
        .unwrap();
    backend.sql("GRANT ALL ON SCHEMA public TO filemd5");
    let secret = |role: &str| {
        backend.sql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"
        ))
    };
    let scram_secret = secret("filescram");
    let md5_secret = secret("filemd5");
    assert!(scram_secret.starts_with("SCRAM-SHA-256$") && md5_secret.starts_with("md5"));

    let dir = tempfile::tempdir().unwrap();
    let userlist = dir.path().join("userlist.txt");
    let mut text = String::from("; users for shardpool\n\n");
    text += &line("fileplain", "plainpw");
    text += &line("filescram", &scram_secret);
    text += &line("filemd5", &md5_secret);
    // The config's own entry wins over the file's.
    text += &line("app", "not-the-config-password");
    std::fs::write(&userlist, &text).unwrap();
    let toml = backend.config_toml(&format!("auth_file = {:?}", userlist.display().to_string()));
    let proxy = TestProxy::start(&toml).await;

    for (user, password) in [
        ("fileplain", "plainpw"),
        ("filescram", "scrampw"),
        ("filemd5", "md5pw"),
    ] {
        let url = proxy.url(user, password, DB);
        assert_eq!(current_user(&url).await, user);
        let c = connect(&url).await;
        c.batch_execute(&format!(
            "CREATE TABLE {user}_t (x int); INSERT INTO {user}_t VALUES (1)"
        ))
        .await
        .unwrap();
        assert_eq!(
            refused(&proxy.url(user, "wrong", DB)).await.0,
            "28P01",
            "{user}"
        );
    }
    let users: Vec<String> = proxy
        .admin("SHOW USERS")
        .await
        .into_iter()
        .map(|r| r["name"].clone())
        .collect();
    for u in ["app", "fileplain", "filescram", "filemd5"] {
        assert_eq!(
            users.iter().filter(|n| *n == u).count(),
            1,
            "{u} in {users:?}"
        );
    }
    assert_eq!(current_user(&proxy.app_url()).await, "app");
    assert_eq!(
        refused(&proxy.url("app", "not-the-config-password", DB))
            .await
            .0,
        "28P01"
    );

    // A user added to the file logs in after RELOAD, not before.
    create_scram_role(&backend, "late", "latepw");
    let late = proxy.url("late", "latepw", DB);
    text += &line("late", "latepw");
    std::fs::write(&userlist, &text).unwrap();
    assert_eq!(refused(&late).await.0, "28P01");
    let admin = connect(&proxy.admin_url()).await;
    admin.simple_query("RELOAD").await.unwrap();
    assert_eq!(current_user(&late).await, "late");
    // Connections of the file's users survive the reload.
    assert_eq!(
        current_user(&proxy.url("filescram", "scrampw", DB)).await,
        "filescram"
    );

    // A malformed line: RELOAD is refused with the line number, check-config too, and nothing changes.
    std::fs::write(&userlist, format!("{text}\"broken\" secret\n")).unwrap();
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    let db_err = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert!(db_err.message().contains("general.auth_file"), "{err}");
    assert!(db_err.message().contains("line 8"), "{err}");
    assert_eq!(current_user(&late).await, "late");
    let (ok, out) = check_config(&proxy.config_path);
    assert!(!ok, "check-config accepted a broken auth_file:\n{out}");
    assert!(out.contains("line 8"), "{out}");
    std::fs::write(&userlist, &text).unwrap();
    let (ok, out) = check_config(&proxy.config_path);
    assert!(ok, "{out}");
}
