//! What one client may hold and for how long: connections that have not logged in (max_pending_logins, one
//! client_login_timeout for handshake and authentication together), clients that hold a server without making
//! progress (client_stall_timeout), and the size of one client message (max_message_size). Each test holds a
//! resource the way a slow or hostile client would and checks that other clients are still served and that the
//! resource is given back within the configured time. Every read has a deadline, so a hang fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{eventually, Backend, TestProxy};
use shardpool::metrics::events::LoginFailure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long any single step may take before the test calls it a hang.
const STEP: Duration = Duration::from_secs(10);

/// Raises the soft open-file limit to the hard one (this process holds both ends of every test socket).
fn raise_nofile_limit(needed: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard} (ulimit -Hn)"
    );
}

async fn open(proxy: &TestProxy) -> TcpStream {
    TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap()
}

/// Reads until EOF (or a reset) and returns what arrived; fails the test if the proxy keeps the socket open.
async fn read_to_close(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match timeout(STEP, s.read(&mut chunk)).await {
            Err(_) => panic!("{what}: the proxy kept the socket open"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The SQLSTATE of the first ErrorResponse in `bytes`, if there is one.
fn error_code(bytes: &[u8]) -> Option<String> {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let body = rest.get(5..1 + len)?;
        if rest[0] == b'E' {
            return body
                .split(|b| *b == 0)
                .find(|f| f.first() == Some(&b'C'))
                .map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
        }
        rest = &rest[1 + len..];
    }
    None
}

/// A StartupMessage for `user` on the test database.
fn startup(user: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for s in ["user", user, "database", common::DB, ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

async fn select_1(proxy: &TestProxy) {
    let client = timeout(STEP, proxy.connect()).await.expect("login hung");
    let n: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

async fn lists(proxy: &TestProxy) -> std::collections::HashMap<String, u64> {
    proxy
        .admin("SHOW LISTS")
        .await
        .into_iter()
        .map(|r| (r["list"].clone(), r["items"].parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_silent_sockets_do_not_stop_a_real_login() {
    const SILENT: usize = 5_000;
    raise_nofile_limit(2 * SILENT as u64 + 200);
    let backend = Backend::start().await;
    // max_client_conn far below the silent sockets: they must not count against it, only logged-in clients do.
    let proxy = backend.proxy("max_client_conn = 10").await;
    let rss_before = rss_bytes();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(open(&proxy).await);
    }
    let ctx = proxy.ctx().clone();
    eventually(STEP, "every silent socket accepted", || {
        let ctx = ctx.clone();
        async move { ctx.pending_logins.load(Ordering::Relaxed) == SILENT }
    })
    .await;

    let held = rss_bytes().saturating_sub(rss_before);
    let started = Instant::now();
    select_1(&proxy).await;
    let login_took = started.elapsed();
    let l = lists(&proxy).await;
    assert_eq!(l["login_clients"], SILENT as u64, "{l:?}");
    assert_eq!(
        l["used_clients"], 1,
        "only the admin session is logged in: {l:?}"
    );
    assert_eq!(l["login_over_cap_total"], 0, "{l:?}");

    // The silent sockets are still open (the default client_login_timeout has not passed): nothing to read.
    for s in silent.iter().step_by(500) {
        let mut b = [0u8; 1];
        assert!(
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a silent socket was closed early"
        );
    }
    drop(silent);
    eventually(STEP, "the silent sockets forgotten", || {
        let ctx = ctx.clone();
        async move { ctx.pending_logins.load(Ordering::Relaxed) == 0 }
    })
    .await;
    eprintln!(
        "login + SELECT 1 with {SILENT} silent sockets held: {login_took:?}; memory for them (both ends, in this \
         process): {} KiB, {} bytes each",
        held / 1024,
        held / SILENT as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_over_max_pending_logins_are_closed_at_once_and_counted() {
    let backend = Backend::start().await;
    let proxy = backend
        .proxy("max_pending_logins = 3\nclient_login_timeout = \"30s\"")
        .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(open(&proxy).await);
    }
    let ctx = proxy.ctx().clone();
    eventually(STEP, "three pending logins", || {
        let ctx = ctx.clone();
        async move { ctx.pending_logins.load(Ordering::Relaxed) == 3 }
    })
    .await;

    // The fourth is closed at once, with a 53300 error it may read, long before any timeout.
    let started = Instant::now();
    let mut over = open(&proxy).await;
    let got = read_to_close(&mut over, "socket over the cap").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(error_code(&got).as_deref(), Some("53300"), "{got:?}");
    // A socket that sends its startup packet first is refused the same way.
    let mut over = open(&proxy).await;
    let _ = over.write_all(&startup("trustuser")).await;
    let got = read_to_close(&mut over, "socket over the cap").await;
    if !got.is_empty() {
        assert_eq!(error_code(&got).as_deref(), Some("53300"), "{got:?}");
    }
    assert_eq!(ctx.login_failures.get(LoginFailure::TooManyPending), 2);

    // Once the pending sockets go away, logins work again and the refusals are visible in SHOW LISTS.
    drop(silent);
    eventually(STEP, "pending logins gone", || {
        let ctx = ctx.clone();
        async move { ctx.pending_logins.load(Ordering::Relaxed) == 0 }
    })
    .await;
    select_1(&proxy).await;
    let l = lists(&proxy).await;
    assert_eq!(l["login_over_cap_total"], 2, "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_authentication_share_one_login_deadline() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("client_login_timeout = \"2s\"").await;
    let connected = Instant::now();
    let mut s = open(&proxy).await;
    // A slow client: the startup packet comes 1.5 s after connecting (within the deadline), then the SCRAM
    // exchange never continues. Only the time left of the 2 s remains for authentication.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(&startup("app")).await.unwrap();
    let got = read_to_close(&mut s, "stalled authentication").await;
    let closed_after = connected.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1900) && closed_after < Duration::from_millis(3200),
        "closed {closed_after:?} after connecting; the deadline is 2 s after accept"
    );
    assert_eq!(got.first(), Some(&b'R'), "the SASL request came first");
    assert_eq!(error_code(&got).as_deref(), Some("08P01"), "{got:?}");
    assert_eq!(proxy.ctx().login_failures.get(LoginFailure::Timeout), 1);
    assert_eq!(proxy.ctx().pending_logins.load(Ordering::Relaxed), 0);
    select_1(&proxy).await;
}

/// A proxy with one server connection, so a client holding it blocks everyone else, and a short stall timeout.
async fn one_server_proxy(backend: &Backend, stall: &str) -> TestProxy {
    backend
        .proxy(&format!(
            "pool_size = 1\nclient_stall_timeout = \"{stall}\""
        ))
        .await
}

/// Runs `sql` on a second client, which needs the only server: returns its answer and how long it took.
async fn query_on_the_only_server(proxy: &TestProxy, sql: &str) -> (i64, Duration) {
    let client = timeout(STEP, proxy.connect()).await.expect("login hung");
    let started = Instant::now();
    let n: i64 = timeout(Duration::from_secs(20), client.query_one(sql, &[]))
        .await
        .expect("the server was never freed")
        .unwrap()
        .get(0);
    (n, started.elapsed())
}

/// A second client gets the only server once the stalled client's 1 s `client_stall_timeout` has run (not
/// before), `table` holds nothing the stalled client sent, and the stalled client is told why it was cut off.
async fn freed_by_stall(
    proxy: &TestProxy,
    stalled: &mut common::raw::Raw,
    table: &str,
    what: &str,
) {
    let started = Instant::now();
    let (n, _) = query_on_the_only_server(proxy, &format!("SELECT count(*) FROM {table}")).await;
    assert_eq!(n, 0, "{what}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(8),
        "the server came free after {waited:?}"
    );
    let errors = timeout(STEP, stalled.errors_until_closed()).await.unwrap();
    assert_eq!(errors, ["E:C08006"], "the stalled client is told why");
}

/// Server backends running `needle`, per the server itself.
fn backends_running(backend: &Backend, needle: &str) -> Vec<String> {
    let out = backend.sql(&format!(
        "SELECT coalesce(wait_event, 'none') FROM pg_stat_activity WHERE query LIKE '{needle}%' AND pid <> pg_backend_pid()"
    ));
    out.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_big_result_loses_its_server_at_client_stall_timeout() {
    let backend = Backend::start().await;
    let proxy = one_server_proxy(&backend, "2s").await;
    let mut stalled = common::raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
    // About 1 GB of rows, never read.
    stalled
        .send_query("SELECT repeat('x', 1000) FROM generate_series(1, 1000000)")
        .await;
    // The proxy stops reading the server once 256 KiB wait for the client: the backend then blocks writing.
    eventually(
        STEP,
        "the backend blocked on writing its result",
        || async { backends_running(&backend, "SELECT repeat") == ["ClientWrite"] },
    )
    .await;
    let rss_blocked = rss_bytes();
    let (n, waited) = query_on_the_only_server(&proxy, "SELECT 1::int8").await;
    assert_eq!(n, 1);
    assert!(waited < Duration::from_secs(8), "waited {waited:?}");
    // The stalled client's server was cancelled and closed, not handed on with a result half sent.
    eventually(STEP, "the stalled query gone from the server", || async {
        backends_running(&backend, "SELECT repeat").is_empty()
    })
    .await;
    let grown = rss_bytes().saturating_sub(rss_blocked);
    assert!(
        grown < 128 << 20,
        "the proxy buffered {grown} bytes meanwhile"
    );
    let errors = timeout(STEP, stalled.errors_until_closed())
        .await
        .expect("the stalled client was never disconnected");
    assert!(errors.len() <= 1, "{errors:?}");
}

/// This process's resident memory (the proxy runs in it).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_in_copy_from_stdin_loses_its_server_at_client_stall_timeout() {
    let backend = Backend::start().await;
    backend.sql("CREATE TABLE copied (v int); ALTER TABLE copied OWNER TO app");
    let proxy = one_server_proxy(&backend, "1s").await;
    let mut stalled = common::raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
    stalled.send_query("COPY copied FROM STDIN").await;
    let (tag, _) = timeout(STEP, stalled.next()).await.unwrap();
    assert_eq!(tag, b'G', "CopyInResponse");
    stalled.send(b'd', b"1\n2\n").await; // and then nothing
    freed_by_stall(
        &proxy,
        &mut stalled,
        "copied",
        "the abandoned COPY must not be committed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_mid_batch_without_sync_loses_its_server_at_client_stall_timeout() {
    let backend = Backend::start().await;
    backend.sql("CREATE TABLE batched (v int); ALTER TABLE batched OWNER TO app");
    let proxy = one_server_proxy(&backend, "1s").await;
    let mut stalled = common::raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
    stalled.parse("", "INSERT INTO batched VALUES (1)").await;
    stalled.bind_execute("").await; // no Sync, no Flush, and then nothing
    freed_by_stall(
        &proxy,
        &mut stalled,
        "batched",
        "the unfinished batch must not be committed",
    )
    .await;
    assert_eq!(lists(&proxy).await["client_stall_timeouts_total"], 1);
    // The server the next client got was clean: its insert commits normally.
    let client = proxy.connect().await;
    client
        .simple_query("INSERT INTO batched VALUES (2)")
        .await
        .unwrap();
    assert_eq!(backend.sql("SELECT count(*) FROM batched").trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_is_not_a_stall() {
    let backend = Backend::start().await;
    let proxy = one_server_proxy(&backend, "1s").await;
    let mut slow = common::raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
    // About 8 MB, read in 10 bursts with pauses shorter than the timeout but longer in total.
    slow.send_query("SELECT repeat('x', 1000) FROM generate_series(1, 8000)")
        .await;
    let mut rows = 0;
    loop {
        let (tag, _) = timeout(STEP, slow.next()).await.unwrap();
        match tag {
            b'D' => {
                rows += 1;
                if rows % 800 == 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            b'Z' => break,
            b'E' => panic!("the slow reader was cut off"),
            _ => {}
        }
    }
    assert_eq!(rows, 8000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_message_over_max_message_size_is_refused_with_08p01_at_its_header() {
    const MAX: usize = 1 << 20;
    let backend = Backend::start().await;
    let proxy = backend
        .proxy(&format!("pool_size = 1\nmax_message_size = {MAX}"))
        .await;

    // Just under the limit: served.
    let mut ok = common::raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
    let literal = "x".repeat(MAX - 100);
    let rows = ok.query(&format!("SELECT length('{literal}')")).await;
    assert_eq!(rows, [(MAX - 100).to_string()]);

    // A header announcing 1 GiB, idle: refused as soon as the header is in, without waiting for the body.
    let mut liar = common::raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
    let mut header = vec![b'Q'];
    header.extend_from_slice(&(0x3fff_fff0i32).to_be_bytes());
    liar.send_bytes(&header).await;
    let errors = timeout(STEP, liar.errors_until_closed()).await.unwrap();
    assert_eq!(errors, ["E:C08P01"]);

    // A message one byte over, inside a transaction: refused, the transaction rolled back and its server (the
    // only one) given back for the next client. Its first kilobyte is sent, not all of it: the proxy refuses at
    // the header and closes, and unread bytes would turn that close into a reset that can swallow the error.
    let mut big = common::raw::Raw::connect(proxy.port, "app", "secret", common::DB).await;
    assert_eq!(big.query("BEGIN").await, Vec::<String>::new());
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((MAX + 1) as i32).to_be_bytes());
    msg.extend_from_slice(format!("SELECT '{}", "y".repeat(1000)).as_bytes());
    big.send_bytes(&msg).await;
    let errors = timeout(STEP, big.errors_until_closed()).await.unwrap();
    assert_eq!(errors, ["E:C08P01"]);
    let (n, _) = query_on_the_only_server(&proxy, "SELECT 7::int8").await;
    assert_eq!(n, 7);
    assert_eq!(ok.query("SELECT 1").await, ["1"]);
}
