//! The startup phase, spoken byte by byte over raw sockets where a driver cannot express it: bad first packets,
//! SSLRequest/GSSENCRequest answered 'N', TLS with psql, protocol-version negotiation and refused replication
//! connections. Every read has a deadline, so a proxy that hangs fails the test instead of stalling it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestProxy, DB};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long any single step may take before the test calls it a hang.
const STEP: Duration = Duration::from_secs(5);

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A message from the proxy: tag and body.
#[derive(Debug)]
struct Msg {
    tag: u8,
    body: Vec<u8>,
}

impl Msg {
    /// Fields of an ErrorResponse, by field type.
    fn error_fields(&self) -> HashMap<char, String> {
        assert_eq!(self.tag, b'E', "not an ErrorResponse: {self:?}");
        let mut out = HashMap::new();
        let mut rest = &self.body[..];
        while let Some((&field, tail)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let nul = tail
                .iter()
                .position(|&b| b == 0)
                .expect("unterminated field");
            out.insert(
                field as char,
                String::from_utf8_lossy(&tail[..nul]).into_owned(),
            );
            rest = &tail[nul + 1..];
        }
        out
    }
}

fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn startup_message(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    packet((u32::from(major) << 16) | u32::from(minor), &body)
}

fn query(sql: &str) -> Vec<u8> {
    let mut out = vec![b'Q'];
    out.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    out.extend_from_slice(sql.as_bytes());
    out.push(0);
    out
}

async fn open(proxy: &TestProxy) -> TcpStream {
    timeout(STEP, TcpStream::connect(("127.0.0.1", proxy.port)))
        .await
        .expect("connect timed out")
        .unwrap()
}

async fn send(s: &mut TcpStream, bytes: &[u8]) {
    timeout(STEP, s.write_all(bytes))
        .await
        .expect("write timed out")
        .unwrap();
}

/// Reads one message; `None` on a clean EOF (or a reset) before the first byte.
async fn read_msg(s: &mut TcpStream) -> Option<Msg> {
    timeout(STEP, async {
        let mut tag = [0u8; 1];
        match s.read(&mut tag).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.expect("truncated header");
        let len = i32::from_be_bytes(len);
        assert!(
            (4..1 << 20).contains(&len),
            "absurd length {len} for {:?}",
            tag[0] as char
        );
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body).await.expect("truncated body");
        Some(Msg { tag: tag[0], body })
    })
    .await
    .expect("no message or EOF from the proxy within the deadline (hang)")
}

/// Reads one single byte (the answer to SSLRequest / GSSENCRequest).
async fn read_byte(s: &mut TcpStream) -> u8 {
    let mut b = [0u8; 1];
    timeout(STEP, s.read_exact(&mut b))
        .await
        .expect("no answer to the encryption request (hang)")
        .unwrap();
    b[0]
}

/// Reads messages until ReadyForQuery (inclusive).
async fn read_until_ready(s: &mut TcpStream) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        let m = read_msg(s)
            .await
            .unwrap_or_else(|| panic!("EOF before ReadyForQuery; got {out:?}"));
        let done = m.tag == b'Z';
        if m.tag == b'E' {
            panic!("unexpected error: {:?}", m.error_fields());
        }
        out.push(m);
        if done {
            return out;
        }
    }
}

/// After a refused startup: the next message must be an ErrorResponse (returned), then the proxy must close.
async fn expect_fatal_then_close(s: &mut TcpStream, case: &str) -> HashMap<char, String> {
    let m = read_msg(s)
        .await
        .unwrap_or_else(|| panic!("{case}: closed without an ErrorResponse"));
    assert_eq!(m.tag, b'E', "{case}: expected ErrorResponse, got {m:?}");
    let fields = m.error_fields();
    assert_eq!(fields[&'S'], "FATAL", "{case}: {fields:?}");
    expect_closed(s, case).await;
    fields
}

async fn expect_closed(s: &mut TcpStream, case: &str) {
    if let Some(m) = read_msg(s).await {
        panic!("{case}: expected the connection to close, got {m:?}");
    }
}

/// A full trust login on an open socket, then `SELECT 1` over the simple protocol.
async fn login_and_select_1(s: &mut TcpStream, startup: &[u8]) -> Vec<Msg> {
    send(s, startup).await;
    let login = read_until_ready(s).await;
    let auth_ok = login.iter().find(|m| m.tag == b'R').expect("no auth msg");
    assert_eq!(auth_ok.body, 0i32.to_be_bytes(), "not AuthenticationOk");
    assert!(login.iter().any(|m| m.tag == b'K'), "no BackendKeyData");
    assert_eq!(login.last().unwrap().body, b"I");
    send(s, &query("SELECT 1")).await;
    let reply = read_until_ready(s).await;
    let row = reply.iter().find(|m| m.tag == b'D').expect("no DataRow");
    // DataRow: int16 column count 1, int32 length 1, "1".
    assert_eq!(row.body, b"\x00\x01\x00\x00\x00\x011");
    login
}

fn trust_startup() -> Vec<u8> {
    startup_message(3, 0, &[("user", "trustuser"), ("database", DB)])
}

async fn assert_serves_normal_client(proxy: &TestProxy, after: &str) {
    let client = timeout(STEP, proxy.connect())
        .await
        .unwrap_or_else(|_| panic!("after {after}: a normal client could not log in in time"));
    let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2, "after {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_first_packets_get_protocol_violation_and_proxy_keeps_serving() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;

    let mut too_short = 4i32.to_be_bytes().to_vec();
    too_short.extend_from_slice(&[0; 4]);
    let mut claims_too_much = 10_001i32.to_be_bytes().to_vec();
    claims_too_much.extend_from_slice(&(3u32 << 16).to_be_bytes());
    let mut negative = (-8i32).to_be_bytes().to_vec();
    negative.extend_from_slice(&[0; 4]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            "invalid startup packet length",
        ),
        (
            "length over 10000",
            claims_too_much,
            "invalid startup packet length 10001",
        ),
        ("length 4", too_short, "invalid startup packet length 4"),
        (
            "negative length",
            negative,
            "invalid startup packet length -8",
        ),
        (
            "protocol 2.0",
            startup_message(2, 0, &[("user", "trustuser"), ("database", DB)]),
            "unsupported frontend protocol 2.0",
        ),
        (
            "unterminated parameter list",
            packet(3 << 16, b"user\0trustuser\0"),
            "invalid startup packet layout",
        ),
        (
            "SSLRequest with a body",
            packet(SSL_REQUEST, b"xx"),
            "invalid startup packet layout",
        ),
    ];
    for (case, bytes, message) in cases {
        let mut s = open(&proxy).await;
        send(&mut s, &bytes).await;
        let fields = expect_fatal_then_close(&mut s, case).await;
        assert_eq!(fields[&'C'], "08P01", "{case}: {fields:?}");
        assert!(
            fields[&'M'].contains(message),
            "{case}: message {:?} does not contain {message:?}",
            fields[&'M']
        );
        assert_serves_normal_client(&proxy, case).await;
    }
}

/// Sends `bytes` as the first packet to `port` and returns the SQLSTATE of the FATAL error that must follow.
async fn first_packet_error(port: u16, bytes: &[u8], case: &str) -> HashMap<char, String> {
    let mut s = timeout(STEP, TcpStream::connect(("127.0.0.1", port)))
        .await
        .unwrap()
        .unwrap();
    send(&mut s, bytes).await;
    expect_fatal_then_close(&mut s, case).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_without_user_is_28000_as_in_postgres() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let cases = [
        ("no user", startup_message(3, 0, &[("database", DB)])),
        (
            "empty user",
            startup_message(3, 0, &[("user", ""), ("database", DB)]),
        ),
    ];
    for (case, bytes) in cases {
        // What Postgres itself answers, so the expectation is grounded, not guessed.
        let direct = first_packet_error(backend.pg.port(), &bytes, case).await;
        assert_eq!(direct[&'C'], "28000", "{case}: postgres said {direct:?}");
        let proxied = first_packet_error(proxy.port, &bytes, case).await;
        assert_eq!(proxied[&'C'], direct[&'C'], "{case}: {proxied:?}");
        assert_eq!(
            proxied[&'M'], "no PostgreSQL user name specified in startup packet",
            "{case}"
        );
        assert_serves_normal_client(&proxy, case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_startup_packet_then_eof_is_closed_quietly() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let full = trust_startup();
    for cut in [2, 4, 6, full.len() - 1] {
        let mut s = open(&proxy).await;
        send(&mut s, &full[..cut]).await;
        s.shutdown().await.unwrap(); // EOF in the middle of the packet
        expect_closed(&mut s, &format!("cut at {cut}")).await;
        assert_serves_normal_client(&proxy, &format!("cut at {cut}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_sent_startup_is_dropped_at_client_login_timeout() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("client_login_timeout = \"1s\"").await;
    let full = trust_startup();
    let mut s = open(&proxy).await;
    send(&mut s, &full[..10]).await; // and then nothing, without closing
    let started = std::time::Instant::now();
    expect_closed(&mut s, "half-sent startup").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "closed after {waited:?}, before the login timeout"
    );
    assert_serves_normal_client(&proxy, "half-sent startup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_without_tls_get_n_then_startup_works() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;

    // SSLRequest -> 'N', then a normal startup on the same socket.
    let mut s = open(&proxy).await;
    send(&mut s, &packet(SSL_REQUEST, &[])).await;
    assert_eq!(read_byte(&mut s).await, b'N');
    login_and_select_1(&mut s, &trust_startup()).await;

    // GSSENCRequest -> 'N', then a normal startup.
    let mut s = open(&proxy).await;
    send(&mut s, &packet(GSSENC_REQUEST, &[])).await;
    assert_eq!(read_byte(&mut s).await, b'N');
    login_and_select_1(&mut s, &trust_startup()).await;

    // libpq with gssencmode=prefer and sslmode=prefer sends both, GSS first.
    let mut s = open(&proxy).await;
    send(&mut s, &packet(GSSENC_REQUEST, &[])).await;
    assert_eq!(read_byte(&mut s).await, b'N');
    send(&mut s, &packet(SSL_REQUEST, &[])).await;
    assert_eq!(read_byte(&mut s).await, b'N');
    login_and_select_1(&mut s, &trust_startup()).await;

    // Asking for SSL twice is a protocol violation.
    let mut s = open(&proxy).await;
    send(&mut s, &packet(SSL_REQUEST, &[])).await;
    assert_eq!(read_byte(&mut s).await, b'N');
    send(&mut s, &packet(SSL_REQUEST, &[])).await;
    let fields = expect_fatal_then_close(&mut s, "second SSLRequest").await;
    assert_eq!(fields[&'C'], "08P01", "{fields:?}");
    assert_serves_normal_client(&proxy, "second SSLRequest").await;
}

/// A self-signed certificate and key made with the openssl CLI.
fn make_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI is needed for the TLS tests and could not be run");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn tls_toml(backend: &Backend, cert: &Path, key: &Path, mode: &str) -> String {
    format!(
        "{}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nmode = \"{mode}\"\n",
        backend.config_toml(""),
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn psql_command(port: u16, sslmode: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(common::bin("psql"));
    cmd.arg(format!(
        "host=127.0.0.1 port={port} user=app dbname={DB} sslmode={sslmode} gssencmode=disable"
    ))
    .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
    .env("PGPASSWORD", "secret")
    .env("PGSSLROOTCERT", "/nonexistent")
    .env("PGSSLCERT", "/nonexistent")
    .env("PGSSLKEY", "/nonexistent")
    .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_psql_sslmode_require_and_show_clients_says_tls() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let proxy = TestProxy::start(&tls_toml(&backend, &cert, &key, "prefer")).await;

    // One-shot psql over TLS.
    let out = timeout(
        Duration::from_secs(30),
        psql_command(proxy.port, "require")
            .args([
                "-c",
                "SELECT 1",
                "-c",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ])
            .output(),
    )
    .await
    .expect("psql hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql sslmode=require failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The proxy-to-server leg is plain TCP: TLS ends at the proxy.
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["1", "f"], "{stdout}");

    // A psql that stays connected, so the admin console can see it.
    let mut child = psql_command(proxy.port, "require")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin.write_all(b"SELECT 'ready' || 1;\n").await.unwrap();
    stdin.flush().await.unwrap();
    let line = timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("psql did not answer")
        .unwrap();
    assert_eq!(line.as_deref(), Some("ready1"));

    let clients = proxy.admin("SHOW CLIENTS").await;
    let app: Vec<_> = clients.iter().filter(|c| c["user"] == "app").collect();
    assert_eq!(app.len(), 1, "{clients:?}");
    assert_eq!(app[0]["tls"], "TLS", "{:?}", app[0]);
    assert_eq!(app[0]["database"], DB);
    let admin: Vec<_> = clients.iter().filter(|c| c["user"] == "admin").collect();
    assert_eq!(admin.len(), 1, "{clients:?}");
    assert_eq!(admin[0]["tls"], "", "the plain admin connection is not TLS");

    drop(stdin); // psql exits at end of input
    let status = timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("psql did not exit")
        .unwrap();
    assert!(status.success());

    // Plaintext sent right behind the SSLRequest, before the 'S', must not be read as the startup that follows
    // (the CVE-2021-23214 class of bug): it can only be taken as the TLS handshake, which then fails.
    let mut s = open(&proxy).await;
    let mut pipelined = packet(SSL_REQUEST, &[]);
    pipelined.extend(trust_startup());
    pipelined.extend(query("SELECT 1"));
    send(&mut s, &pipelined).await;
    assert_eq!(read_byte(&mut s).await, b'S');
    let mut rest = Vec::new();
    let _ = timeout(STEP, s.read_to_end(&mut rest))
        .await
        .expect("the proxy neither finished nor failed the TLS handshake (hang)");
    assert!(
        rest.is_empty() || rest[0] == 0x15,
        "expected nothing or a TLS alert record, got {rest:?}"
    );

    // With mode = prefer, plain clients are still welcome.
    let plain = psql_command(proxy.port, "disable")
        .args(["-c", "SELECT 2"])
        .output()
        .await
        .unwrap();
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mode_require_refuses_plain_clients_with_28000() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let proxy = TestProxy::start(&tls_toml(&backend, &cert, &key, "require")).await;

    // tokio-postgres without TLS.
    let url = format!("{}?sslmode=disable", proxy.app_url());
    let err = match timeout(STEP, common::try_connect(&url)).await.unwrap() {
        Ok(_) => panic!("a plain client was let in with tls mode = require"),
        Err(e) => e,
    };
    assert_eq!(common::sqlstate(&err), "28000", "{err}");

    // psql sslmode=disable.
    let out = timeout(
        Duration::from_secs(30),
        psql_command(proxy.port, "disable")
            .args(["-c", "SELECT 1"])
            .output(),
    )
    .await
    .expect("psql hung")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires TLS"), "{stderr}");

    // Raw: the refusal is a FATAL 28000 ErrorResponse, then the connection closes.
    let mut s = open(&proxy).await;
    send(&mut s, &trust_startup()).await;
    let fields = expect_fatal_then_close(&mut s, "plain startup under require").await;
    assert_eq!(fields[&'C'], "28000", "{fields:?}");

    // TLS clients still get in.
    let out = psql_command(proxy.port, "require")
        .args(["-c", "SELECT 3"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
}

/// NegotiateProtocolVersion body: newest minor version supported, then the unrecognised options.
fn parse_negotiate(m: &Msg) -> (u32, Vec<String>) {
    assert_eq!(m.tag, b'v', "expected NegotiateProtocolVersion, got {m:?}");
    let version = u32::from_be_bytes(m.body[..4].try_into().unwrap());
    let count = i32::from_be_bytes(m.body[4..8].try_into().unwrap());
    let names: Vec<String> = m.body[8..]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    assert_eq!(names.len(), count as usize, "{m:?}");
    (version, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_and_pq_options_are_negotiated_down() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;

    // Protocol 3.2 (PostgreSQL 18 libpq with max_protocol_version=latest).
    let mut s = open(&proxy).await;
    let startup = startup_message(3, 2, &[("user", "trustuser"), ("database", DB)]);
    let login = login_and_select_1(&mut s, &startup).await;
    assert_eq!(parse_negotiate(&login[0]), (3 << 16, vec![]));
    // BackendKeyData is the 3.0 shape (pid + 4-byte secret) since 3.0 was negotiated.
    let key = login.iter().find(|m| m.tag == b'K').unwrap();
    assert_eq!(key.body.len(), 8);

    // 3.0 with protocol options: they are listed back as unrecognised.
    let mut s = open(&proxy).await;
    let startup = startup_message(
        3,
        0,
        &[
            ("user", "trustuser"),
            ("database", DB),
            ("_pq_.x", "1"),
            ("_pq_.compression", "on"),
        ],
    );
    let login = login_and_select_1(&mut s, &startup).await;
    let (version, mut names) = parse_negotiate(&login[0]);
    names.sort();
    assert_eq!(version, 3 << 16);
    assert_eq!(names, ["_pq_.compression", "_pq_.x"]);

    // Both at once, with a SCRAM user through tokio-postgres afterwards to be sure nothing got stuck.
    let mut s = open(&proxy).await;
    let startup = startup_message(
        3,
        9,
        &[("user", "trustuser"), ("database", DB), ("_pq_.y", "")],
    );
    let login = login_and_select_1(&mut s, &startup).await;
    assert_eq!(parse_negotiate(&login[0]), (3 << 16, vec!["_pq_.y".into()]));
    assert_serves_normal_client(&proxy, "protocol negotiation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connections_are_refused_but_replication_false_is_a_normal_login() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    for value in ["true", "database"] {
        let mut s = open(&proxy).await;
        send(
            &mut s,
            &startup_message(
                3,
                0,
                &[
                    ("user", "trustuser"),
                    ("database", DB),
                    ("replication", value),
                ],
            ),
        )
        .await;
        let fields = expect_fatal_then_close(&mut s, &format!("replication={value}")).await;
        assert_eq!(fields[&'C'], "0A000", "{fields:?}");
        assert!(fields[&'M'].contains("replication"), "{fields:?}");
    }
    assert!(
        proxy.admin("SHOW CLIENTS").await.len() == 1,
        "a refused replication connection stayed registered"
    );
    // Postgres reads the parameter as a boolean (or "database"): a false value is an ordinary connection.
    for value in ["false", "off", "0", "no", "FALSE"] {
        let startup = startup_message(
            3,
            0,
            &[
                ("user", "trustuser"),
                ("database", DB),
                ("replication", value),
            ],
        );
        let mut direct = timeout(STEP, TcpStream::connect(("127.0.0.1", backend.pg.port())))
            .await
            .unwrap()
            .unwrap();
        login_and_select_1(&mut direct, &startup).await;
        let mut s = open(&proxy).await;
        login_and_select_1(&mut s, &startup).await;
    }
    assert_serves_normal_client(&proxy, "replication").await;
}
