//! The client-side Unix-domain socket (`unix_socket_dir`): real psql reaches shardpool with `-h DIR -p PORT` and
//! with libpq's PGHOST/PGPORT, the socket file has the configured mode and is gone after shutdown, a stale file from
//! a dead process is replaced while a live one or a non-socket stops the start, and the login limits
//! (max_pending_logins, client_login_timeout, max_client_conn) hold for Unix clients as for TCP ones.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{eventually, Backend, TestProxy, DB};
use shardpool::app::{Proxy, StartError};
use shardpool::config::Config;
use shardpool::frontend::unix::UnixSocketError;
use shardpool::metrics::events::LoginFailure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    timeout(Duration::from_secs(120), test)
        .await
        .expect("test did not finish within 120 s");
}

fn socket(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// psql as `user` through the socket in `dir`; `by_env` passes host and port as PGHOST/PGPORT instead of -h/-p.
fn psql(
    dir: &Path,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
    by_env: bool,
) -> String {
    let mut cmd = Command::new(common::bin("psql"));
    cmd.env_remove("PGHOST")
        .env_remove("PGPORT")
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            user,
            "-d",
            db,
            "-c",
            sql,
        ]);
    if by_env {
        cmd.env("PGHOST", dir).env("PGPORT", port.to_string());
    } else {
        cmd.arg("-h").arg(dir).args(["-p", &port.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A tokio-postgres client over the Unix socket in `dir`.
async fn unix_client(
    dir: &Path,
    port: u16,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(dir)
        .port(port)
        .user("app")
        .password("secret")
        .dbname(DB)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Reads until the proxy closes the socket; fails the test if it keeps it open.
async fn read_to_close(s: &mut UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    timeout(STEP, s.read_to_end(&mut got))
        .await
        .expect("the proxy kept the socket open")
        .ok();
    got
}

/// Whether `bytes` hold an ErrorResponse with SQLSTATE `code`.
fn has_error(bytes: &[u8], code: &str) -> bool {
    bytes.first() == Some(&b'E')
        && bytes
            .split(|b| *b == 0)
            .any(|f| f == format!("C{code}").as_bytes())
}

/// A TCP port nothing listens on right now, for a test that must know the socket's name before the proxy starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_libpq_defaults_work_over_the_socket() {
    bounded(async {
        let backend = Backend::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut proxy = backend
            .proxy(&format!(
                "unix_socket_dir = \"{}\"\nunix_socket_mode = \"0700\"",
                dir.path().display()
            ))
            .await;
        let path = socket(dir.path(), proxy.port);
        assert_eq!(
            proxy.proxy.as_ref().unwrap().unix_socket.as_deref(),
            Some(&*path)
        );
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket(), "{meta:?}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);

        let d = dir.path();
        let port = proxy.port;
        let sum = tokio::task::spawn_blocking({
            let d = d.to_owned();
            move || {
                (
                    psql(&d, port, "app", "secret", DB, "SELECT 40 + 2", false),
                    psql(&d, port, "app", "secret", DB, "SELECT current_user", true),
                    psql(&d, port, "md5user", "md5pw", DB, "SELECT 1", false),
                )
            }
        })
        .await
        .unwrap();
        assert_eq!(sum, ("42".into(), "app".into(), "1".into()));

        // A session over the socket shows as addr "unix" with the listen port in SHOW CLIENTS, and works as any.
        let client = unix_client(d, port).await.unwrap();
        client
            .batch_execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let clients = proxy.admin("SHOW CLIENTS").await;
        let unix: Vec<_> = clients.iter().filter(|c| c["addr"] == "unix").collect();
        assert_eq!(unix.len(), 1, "{clients:?}");
        assert_eq!(
            (&*unix[0]["user"], &*unix[0]["port"]),
            ("app", &*port.to_string())
        );
        assert!(
            clients.iter().any(|c| c["addr"] == "127.0.0.1"),
            "the admin session came over TCP: {clients:?}"
        );
        // The console is reachable over the socket too.
        let pools = tokio::task::spawn_blocking({
            let d = d.to_owned();
            move || {
                psql(
                    &d,
                    port,
                    "admin",
                    "adminpw",
                    "shardpool",
                    "SHOW POOLS",
                    false,
                )
            }
        })
        .await
        .unwrap();
        assert!(pools.contains(DB), "{pools}");

        drop(client);
        let cut = proxy.proxy.take().unwrap().shutdown().await;
        assert_eq!(cut, 0);
        assert!(!path.exists(), "the socket file outlived the proxy");
        assert!(unix_client(d, port).await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_a_live_one_or_a_file_is_not() {
    bounded(async {
        let backend = Backend::start().await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let path = socket(dir.path(), port);
        let toml = backend.config_toml(&format!(
            "listen = \"127.0.0.1:{port}\"\nunix_socket_dir = \"{}\"",
            dir.path().display()
        ));

        // Something else listens there: the start fails and leaves that listener alone.
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = Proxy::start(Config::from_toml(&toml).unwrap(), None)
            .await
            .err()
            .expect("started over a live socket");
        assert!(
            matches!(err, StartError::Unix(UnixSocketError::InUse(_))),
            "{err}"
        );
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        // Closed without removing its file, as a killed process leaves it: stale, so it is replaced.
        drop(live);
        assert!(path.exists());
        let proxy = Proxy::start(Config::from_toml(&toml).unwrap(), None)
            .await
            .unwrap();
        assert_eq!(proxy.addr.port(), port);
        let client = unix_client(dir.path(), port).await.unwrap();
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        drop(client);
        proxy.shutdown().await;
        assert!(!path.exists());

        // A regular file by that name is not shardpool's to delete.
        std::fs::write(&path, "not a socket").unwrap();
        let err = Proxy::start(Config::from_toml(&toml).unwrap(), None)
            .await
            .err()
            .expect("started over a regular file");
        assert!(
            matches!(err, StartError::Unix(UnixSocketError::NotASocket(_))),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_limits_hold_for_unix_clients() {
    bounded(async {
        let backend = Backend::start().await;
        let dir = tempfile::tempdir().unwrap();
        let general = |pending: usize, login_timeout: &str| {
            backend.config_toml(&format!(
                "unix_socket_dir = \"{}\"\nmax_pending_logins = {pending}\nclient_login_timeout = \"{login_timeout}\"\nmax_client_conn = 2",
                dir.path().display()
            ))
        };
        let proxy = TestProxy::start(&general(1, "3s")).await;
        let path = socket(dir.path(), proxy.port);
        let ctx = proxy.ctx().clone();

        // One silent connection takes the only pending-login place: the next is refused with 53300 at once.
        let mut silent = UnixStream::connect(&path).await.unwrap();
        eventually(STEP, "the silent connection counted as pending", || {
            let n = ctx.pending_logins.load(Ordering::Relaxed);
            async move { n == 1 }
        })
        .await;
        let mut refused = UnixStream::connect(&path).await.unwrap();
        let got = read_to_close(&mut refused).await;
        assert!(has_error(&got, "53300"), "{got:?}");
        // The silent one is closed at client_login_timeout.
        let timeouts = ctx.login_failures.get(LoginFailure::Timeout);
        assert!(read_to_close(&mut silent).await.is_empty());
        assert_eq!(ctx.login_failures.get(LoginFailure::Timeout), timeouts + 1);
        eventually(STEP, "no pending logins left", || {
            let n = ctx.pending_logins.load(Ordering::Relaxed);
            async move { n == 0 }
        })
        .await;

        // max_client_conn = 2 counts Unix clients: two log in, the third is told 53300. (A login deadline long
        // enough for SCRAM on a loaded machine, and room for more than one login at a time, from here on.)
        ctx.reload(Config::from_toml(&general(10, "30s")).unwrap());
        let first = unix_client(dir.path(), proxy.port).await.unwrap();
        let second = unix_client(dir.path(), proxy.port).await.unwrap();
        let third = unix_client(dir.path(), proxy.port).await.expect_err("a third client got in");
        assert_eq!(common::sqlstate(&third), "53300", "{third}");
        drop(first);
        eventually(STEP, "a place is free again", || {
            let n = ctx.connections.load(Ordering::Relaxed);
            async move { n < 2 }
        })
        .await;
        let again = unix_client(dir.path(), proxy.port).await.unwrap();
        for c in [&second, &again] {
            let v: i32 = c.query_one("SELECT 5", &[]).await.unwrap().get(0);
            assert_eq!(v, 5);
        }

        // A garbage startup packet over the socket gets the same protocol error as over TCP.
        let mut bad = UnixStream::connect(&path).await.unwrap();
        bad.write_all(&[0, 0, 0, 8, 0, 9, 0, 0]).await.unwrap();
        let got = read_to_close(&mut bad).await;
        assert!(has_error(&got, "08P01") || has_error(&got, "0A000"), "{got:?}");
    })
    .await;
}

/// A self-signed certificate and key in `dir`, made with the openssl CLI.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI is needed for this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// `[tls] mode = "require"` governs TCP; the Unix socket, like Postgres' `local` lines, is guarded by its file mode
/// instead: an SSLRequest there is answered 'N' and a plain login goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_applies_to_tcp_not_to_the_unix_socket() {
    bounded(async {
        let backend = Backend::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = make_cert(dir.path());
        let toml = format!(
            "{}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nmode = \"require\"\n",
            backend.config_toml(&format!("unix_socket_dir = \"{}\"", dir.path().display())),
            cert.display().to_string(),
            key.display().to_string()
        );
        let proxy = TestProxy::start(&toml).await;

        let err = common::try_connect(&format!("{}?sslmode=disable", proxy.app_url()))
            .await
            .expect_err("a plain TCP client got in under mode = require");
        assert_eq!(common::sqlstate(&err), "28000", "{err}");

        let mut s = UnixStream::connect(socket(dir.path(), proxy.port))
            .await
            .unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        let mut answer = [0u8; 1];
        timeout(STEP, s.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"N");

        let client = unix_client(dir.path(), proxy.port).await.unwrap();
        let v: i32 = client.query_one("SELECT 9", &[]).await.unwrap().get(0);
        assert_eq!(v, 9);
        // The console too, over the socket (over TCP it would need TLS here).
        let (admin, conn) = tokio_postgres::Config::new()
            .host_path(dir.path())
            .port(proxy.port)
            .user("admin")
            .password("adminpw")
            .dbname("shardpool")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let clients = common::admin_rows(&admin, "SHOW CLIENTS").await;
        assert_eq!(clients.len(), 2, "{clients:?}");
        assert!(
            clients
                .iter()
                .all(|c| c["addr"] == "unix" && c["tls"].is_empty()),
            "{clients:?}"
        );
    })
    .await;
}
