//! Authentication through the proxy with tokio-postgres: each method on the client side (SCRAM, md5, trust, stored
//! verifiers and hashes), every refusal with the SQLSTATE Postgres would use, max_client_conn, and the proxy's own
//! logins to the server (SCRAM, md5, trust — enforced by the server's pg_hba.conf) including a wrong server password.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{connect, sqlstate, try_connect, Backend, TestProxy, DB};
use shardpool::auth::scram::ScramVerifier;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

async fn current_user(url: &str) -> String {
    let client = timeout(STEP, connect(url)).await.expect("login hung");
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    row.get(0)
}

/// The SQLSTATE of a refused login (panics if the login succeeds or hangs).
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

/// The config with `app`'s password line replaced.
fn with_app_password(backend: &Backend, replacement: &str) -> String {
    let toml = backend.config_toml("");
    let line = "password = \"secret\"";
    assert_eq!(toml.matches(line).count(), 1, "harness config changed");
    toml.replacen(line, replacement, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_auth_method_logs_in_and_proxy_logs_in_to_server_the_same_way() {
    let backend = Backend::start().await;
    // The server really stores SCRAM and md5 secrets and pg_hba.conf demands them, so a working login through the
    // proxy proves the proxy spoke that method to the server.
    assert_eq!(
        backend.sql(
            "SELECT string_agg(rolname || '=' || coalesce(left(rolpassword, 6), 'none'), ',' ORDER BY rolname) \
             FROM pg_authid WHERE rolname IN ('app', 'md5user', 'trustuser')"
        ),
        format!(
            "app=SCRAM-,md5user={},trustuser=none",
            md5_prefix("md5user", "md5pw")
        )
    );
    let proxy = backend.proxy("").await;
    assert_eq!(current_user(&proxy.app_url()).await, "app");
    assert_eq!(
        current_user(&proxy.url("md5user", "md5pw", DB)).await,
        "md5user"
    );
    assert_eq!(
        current_user(&proxy.url("trustuser", "", DB)).await,
        "trustuser"
    );
    // Trust means any password (or none) is fine.
    assert_eq!(
        current_user(&proxy.url("trustuser", "whatever", DB)).await,
        "trustuser"
    );
    // Each is its own pool on the server side.
    let pools = proxy.admin("SHOW POOLS").await;
    let mut users: Vec<_> = pools
        .iter()
        .filter(|p| p["database"] == DB)
        .map(|p| p["user"].clone())
        .collect();
    users.sort();
    assert_eq!(users, ["app", "md5user", "trustuser"]);
}

fn md5_prefix(user: &str, password: &str) -> String {
    shardpool::auth::md5::md5_stored_hash(user, password)[..6].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_postgres_sqlstates() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;

    let (code, msg) = refused(&proxy.url("app", "wrong", DB)).await;
    assert_eq!(code, "28P01", "SCRAM wrong password: {msg}");
    assert!(
        msg.contains("password authentication failed for user \"app\""),
        "{msg}"
    );

    let (code, msg) = refused(&proxy.url("md5user", "wrong", DB)).await;
    assert_eq!(code, "28P01", "md5 wrong password: {msg}");
    assert!(msg.contains("\"md5user\""), "{msg}");

    // Unknown users get the same answer as a wrong password: no probing for user names.
    let (code, msg) = refused(&proxy.url("nobody", "x", DB)).await;
    assert_eq!(code, "28P01", "unknown user: {msg}");
    assert!(
        msg.contains("password authentication failed for user \"nobody\""),
        "{msg}"
    );

    let (code, msg) = refused(&proxy.url("app", "secret", "nosuchdb")).await;
    assert_eq!(code, "3D000", "unknown database: {msg}");
    assert!(msg.contains("\"nosuchdb\""), "{msg}");

    // The database check comes after authentication: a wrong password on a missing database is still 28P01.
    let (code, _) = refused(&proxy.url("app", "wrong", "nosuchdb")).await;
    assert_eq!(code, "28P01");

    let (code, msg) = refused(&proxy.url("app", "secret", "shardpool")).await;
    assert_eq!(code, "28000", "non-admin on the console: {msg}");

    let (code, _) = refused(&proxy.url("admin", "wrong", "shardpool")).await;
    assert_eq!(code, "28P01", "admin with a wrong password");

    // None of the refused clients is left registered; the admin console works.
    let clients = proxy.admin("SHOW CLIENTS").await;
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["user"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_the_fourth_with_53300() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("max_client_conn = 3").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(timeout(STEP, proxy.connect()).await.unwrap());
    }
    let (code, msg) = refused(&proxy.app_url()).await;
    assert_eq!(code, "53300", "{msg}");
    for (i, c) in clients.iter().enumerate() {
        let n: i32 = c
            .query_one("SELECT $1::int", &[&(i as i32)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i as i32);
    }
    // A slot frees when a client leaves.
    drop(clients.pop());
    common::eventually(Duration::from_secs(10), "a freed client slot", || async {
        match try_connect(&proxy.app_url()).await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(e) => {
                assert_eq!(sqlstate(&e), "53300", "{e}");
                false
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_scram_verifier_and_md5_hash_as_passwords() {
    let backend = Backend::start().await;
    let verifier = ScramVerifier::from_password("secret", b"0123456789abcdef", 4096).to_string();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    let toml = with_app_password(
        &backend,
        &format!("password = \"{verifier}\"\nserver_password = \"secret\""),
    );
    let md5 = shardpool::auth::md5::md5_stored_hash("md5user", "md5pw");
    assert!(md5.starts_with("md5") && md5.len() == 35, "{md5}");
    let toml = toml.replacen(
        "password = \"md5pw\"",
        &format!("password = \"{md5}\"\nserver_password = \"md5pw\""),
        1,
    );
    let proxy = TestProxy::start(&toml).await;
    assert_eq!(current_user(&proxy.app_url()).await, "app");
    let (code, _) = refused(&proxy.url("app", "wrong", DB)).await;
    assert_eq!(code, "28P01");
    // Not the verifier string itself either.
    let (code, _) = refused(&proxy.url("app", &verifier, DB)).await;
    assert_eq!(code, "28P01");

    assert_eq!(
        current_user(&proxy.url("md5user", "md5pw", DB)).await,
        "md5user"
    );
    let (code, _) = refused(&proxy.url("md5user", "wrong", DB)).await;
    assert_eq!(code, "28P01");

    // A verifier from `generate` (random salt) works the same.
    let generated = ScramVerifier::generate("secret").to_string();
    let proxy = TestProxy::start(&with_app_password(
        &backend,
        &format!("password = \"{generated}\"\nserver_password = \"secret\""),
    ))
    .await;
    assert_eq!(current_user(&proxy.app_url()).await, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_without_server_password_cannot_reach_the_server() {
    let backend = Backend::start().await;
    let verifier = ScramVerifier::generate("secret").to_string();
    let proxy = TestProxy::start(&with_app_password(
        &backend,
        &format!("password = \"{verifier}\""),
    ))
    .await;
    // The client authenticates, but the proxy has no password for the server's SCRAM: a clear error, not a hang.
    let started = Instant::now();
    let (code, msg) = refused(&proxy.app_url()).await;
    assert_eq!(code, "08006", "{msg}");
    // Pass-through cannot help either: the verifier was made with another salt than the server's own.
    assert!(
        msg.contains("server login refused") && msg.contains("salt or iteration count differs"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_password_is_a_prompt_clear_error() {
    let backend = Backend::start().await;
    let toml = with_app_password(
        &backend,
        "password = \"secret\"\nserver_password = \"not-the-password\"",
    );
    let toml = toml.replacen("checkout_timeout = \"10s\"", "checkout_timeout = \"8s\"", 1);
    let proxy = TestProxy::start(&toml).await;
    for attempt in 0..2 {
        let started = Instant::now();
        let (code, msg) = refused(&proxy.app_url()).await;
        let took = started.elapsed();
        assert_eq!(code, "08006", "attempt {attempt}: {msg}");
        assert!(
            msg.contains("password authentication failed for user \"app\""),
            "attempt {attempt}: the server's reason should be passed on: {msg}"
        );
        assert!(
            took < Duration::from_secs(8),
            "attempt {attempt}: took {took:?}, the checkout timeout"
        );
    }
    // The other users' pools are unaffected.
    assert_eq!(
        current_user(&proxy.url("md5user", "md5pw", DB)).await,
        "md5user"
    );
    // No server connection is left counted for the failed pool.
    let pools = proxy.admin("SHOW POOLS").await;
    let app = pools.iter().find(|p| p["user"] == "app").unwrap();
    assert_eq!(
        (
            app["sv_active"].as_str(),
            app["sv_idle"].as_str(),
            app["sv_login"].as_str()
        ),
        ("0", "0", "0"),
        "{app:?}"
    );
}

/// Raw SCRAM as far as a client without the password can take it; returns the server-first-message and the final
/// ErrorResponse's (SQLSTATE, message).
async fn scram_with_a_bogus_proof(port: u16, user: &str) -> (String, (String, String)) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn read(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
        timeout(STEP, async {
            let mut head = [0u8; 5];
            s.read_exact(&mut head).await.unwrap();
            let len = i32::from_be_bytes(head[1..].try_into().unwrap());
            let mut body = vec![0u8; len as usize - 4];
            s.read_exact(&mut body).await.unwrap();
            (head[0], body)
        })
        .await
        .expect("no answer from the proxy (hang)")
    }
    fn password_msg(body: &[u8]) -> Vec<u8> {
        let mut out = vec![b'p'];
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut startup = (3u32 << 16).to_be_bytes().to_vec();
    for part in ["user", user, "database", DB, ""] {
        startup.extend_from_slice(part.as_bytes());
        startup.push(0);
    }
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(startup);
    s.write_all(&packet).await.unwrap();

    let (tag, body) = read(&mut s).await;
    assert_eq!(
        (tag, body.as_slice()),
        (b'R', &b"\0\0\0\x0aSCRAM-SHA-256\0\0"[..]),
        "{user}: expected AuthenticationSASL offering SCRAM-SHA-256"
    );
    let client_first = b"n,,n=,r=0123456789abcdefghijklmn";
    let mut initial = b"SCRAM-SHA-256\0".to_vec();
    initial.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    initial.extend_from_slice(client_first);
    s.write_all(&password_msg(&initial)).await.unwrap();

    let (tag, body) = read(&mut s).await;
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &11i32.to_be_bytes()[..]),
        "{user}"
    );
    let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
    let nonce = server_first
        .split(',')
        .find_map(|f| f.strip_prefix("r="))
        .unwrap();
    assert!(
        nonce.starts_with("0123456789abcdefghijklmn"),
        "{server_first}"
    );
    let proof = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="; // 32 zero bytes: never right
    let client_final = format!("c=biws,r={nonce},p={proof}");
    s.write_all(&password_msg(client_final.as_bytes()))
        .await
        .unwrap();

    let (tag, body) = read(&mut s).await;
    assert_eq!(tag, b'E', "{user}: {:?}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body).into_owned();
    let field = |c: char| {
        text.split('\0')
            .find_map(|f| f.strip_prefix(c))
            .unwrap_or_default()
            .to_owned()
    };
    (server_first, (field('C'), field('M')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_are_challenged_like_known_ones() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let salt_and_count = |server_first: &str| -> Vec<String> {
        server_first
            .split(',')
            .filter(|f| f.starts_with("s=") || f.starts_with("i="))
            .map(str::to_owned)
            .collect()
    };
    let (known_first, known_err) = scram_with_a_bogus_proof(proxy.port, "app").await;
    assert_eq!(
        known_err,
        (
            "28P01".to_owned(),
            "password authentication failed for user \"app\"".to_owned()
        )
    );
    // As Postgres does (a mock SCRAM exchange): a name that is not configured gets the same conversation and the
    // same error, so the proxy cannot be used to find out which user names exist.
    let (first, err) = scram_with_a_bogus_proof(proxy.port, "nobody").await;
    assert_eq!(
        err,
        (
            "28P01".to_owned(),
            "password authentication failed for user \"nobody\"".to_owned()
        )
    );
    let (again, _) = scram_with_a_bogus_proof(proxy.port, "nobody").await;
    let (known, mock, mock_again) = (
        salt_and_count(&known_first),
        salt_and_count(&first),
        salt_and_count(&again),
    );
    assert_eq!(mock.len(), 2, "{first}");
    assert_eq!(
        mock, mock_again,
        "the mock salt must be stable, as a real one is"
    );
    assert_eq!(known[1], mock[1], "same iteration count");
    assert_eq!(known[0].len(), mock[0].len(), "same salt length");
    let (other, _) = scram_with_a_bogus_proof(proxy.port, "someone").await;
    assert_ne!(
        salt_and_count(&other)[0],
        mock[0],
        "salts differ per user name"
    );
}

/// Logs in as md5user over a raw socket and sends the PasswordMessage and a Query in one write, as a client that
/// pipelines its first query behind authentication may; returns everything read up to the query's ReadyForQuery.
async fn md5_login_with_pipelined_query(port: u16) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut startup = (3u32 << 16).to_be_bytes().to_vec();
    for part in ["user", "md5user", "database", DB, ""] {
        startup.extend_from_slice(part.as_bytes());
        startup.push(0);
    }
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(startup);
    s.write_all(&packet).await.unwrap();
    // AuthenticationMD5Password: 'R', length 12, code 5, salt.
    let mut head = [0u8; 13];
    timeout(STEP, s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head[..9], b"R\0\0\0\x0c\0\0\0\x05", "{head:?}");
    let salt: [u8; 4] = head[9..13].try_into().unwrap();
    let stored = shardpool::auth::md5::md5_stored_hash("md5user", "md5pw");
    let response = shardpool::auth::md5::md5_salted_response(&stored, salt);
    let mut out = vec![b'p'];
    out.extend_from_slice(&((response.len() + 5) as i32).to_be_bytes());
    out.extend_from_slice(response.as_bytes());
    out.push(0);
    out.extend_from_slice(b"Q\0\0\0\x10SELECT 40+2\0");
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let finished = timeout(STEP, async {
        // Two ReadyForQuery: one ends the login, one the query.
        while got.windows(6).filter(|w| *w == b"Z\0\0\0\x05I").count() < 2 {
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "port {port}: the pipelined query was never answered; got {:?}",
        String::from_utf8_lossy(&got)
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_pipelined_behind_the_password_is_answered() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    // Postgres answers it...
    let direct = md5_login_with_pipelined_query(backend.pg.port()).await;
    // ...and so must the proxy: the bytes behind the password message belong to the session.
    let proxied = md5_login_with_pipelined_query(proxy.port).await;
    for got in [direct, proxied] {
        // DataRow with one column "42", then CommandComplete "SELECT 1".
        let row = b"D\0\0\0\x0c\0\x01\0\0\0\x0242";
        assert!(
            got.windows(row.len()).any(|w| w == row),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(got.windows(9).any(|w| w == b"SELECT 1\0"));
    }
}
