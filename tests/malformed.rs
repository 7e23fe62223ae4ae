//! Malformed messages after a successful login, written byte by byte over a raw socket: impossible lengths, unknown
//! message types, Parse/Bind/Describe bodies that do not parse, a Query without its NUL. Each must end the session
//! with a FATAL 08P01 (never a hang or a silent drop from a panic), in both the idle state (no server) and inside a
//! transaction (server attached), and the server must go back to the pool rather than leak. Also: clients that
//! vanish in the middle of logging in leave nothing behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{admin_rows, connect, eventually, Backend, TestProxy, DB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long any single step may take before the test calls it a hang.
const STEP: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Msg {
    tag: u8,
    body: Vec<u8>,
}

impl Msg {
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

/// A regular message: tag, length counting itself, body.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A header with an arbitrary length field and a few body bytes after it.
fn raw_header(tag: u8, len: i32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    msg(b'Q', &body)
}

fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

async fn send(s: &mut TcpStream, bytes: &[u8]) {
    timeout(STEP, s.write_all(bytes))
        .await
        .expect("write timed out")
        .unwrap();
}

/// Reads one message; `None` on EOF (or a reset) before its first byte.
async fn read_msg(s: &mut TcpStream) -> Option<Msg> {
    read_msg_in(s, "").await
}

/// `read_msg`, naming `case` if it times out.
async fn read_msg_in(s: &mut TcpStream, case: &str) -> Option<Msg> {
    timeout(STEP, async {
        let mut tag = [0u8; 1];
        match s.read(&mut tag).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.expect("truncated header");
        let len = i32::from_be_bytes(len);
        assert!((4..1 << 20).contains(&len), "absurd length {len}");
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body).await.expect("truncated body");
        Some(Msg { tag: tag[0], body })
    })
    .await
    .unwrap_or_else(|_| panic!("{case}: no message or EOF from the proxy within {STEP:?} (hang)"))
}

/// Reads until ReadyForQuery (inclusive); an ErrorResponse on the way is returned, not fatal.
async fn read_until_ready(s: &mut TcpStream) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        let m = read_msg(s)
            .await
            .unwrap_or_else(|| panic!("EOF before ReadyForQuery; got {out:?}"));
        let done = m.tag == b'Z';
        out.push(m);
        if done {
            return out;
        }
    }
}

fn no_errors(msgs: &[Msg]) {
    if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
        panic!("unexpected error {:?}", e.error_fields());
    }
}

/// Logs in as `trustuser` (trust: no password exchange) and reads up to the first ReadyForQuery.
async fn login_trust(proxy: &TestProxy) -> TcpStream {
    let mut s = timeout(STEP, TcpStream::connect(("127.0.0.1", proxy.port)))
        .await
        .unwrap()
        .unwrap();
    send(
        &mut s,
        &startup_message(&[("user", "trustuser"), ("database", DB)]),
    )
    .await;
    let login = read_until_ready(&mut s).await;
    no_errors(&login);
    assert_eq!(login[0].tag, b'R');
    assert_eq!(login[0].body, 0i32.to_be_bytes(), "not AuthenticationOk");
    assert_eq!(login.last().unwrap().body, b"I");
    s
}

async fn simple(s: &mut TcpStream, sql: &str) -> Vec<Msg> {
    send(s, &query(sql)).await;
    let reply = read_until_ready(s).await;
    no_errors(&reply);
    reply
}

async fn begin(s: &mut TcpStream) {
    let reply = simple(s, "BEGIN").await;
    assert_eq!(reply.last().unwrap().body, b"T", "not in a transaction");
}

/// The proxy must answer with FATAL 08P01 and close; returns the message text.
async fn expect_protocol_violation(s: &mut TcpStream, case: &str) -> String {
    let m = read_msg_in(s, case).await.unwrap_or_else(|| {
        panic!("{case}: connection closed without an ErrorResponse (a panic in the proxy?)")
    });
    assert_eq!(m.tag, b'E', "{case}: expected ErrorResponse, got {m:?}");
    let fields = m.error_fields();
    assert_eq!(fields[&'C'], "08P01", "{case}: {fields:?}");
    assert_eq!(fields[&'S'], "FATAL", "{case}: {fields:?}");
    if let Some(m) = read_msg_in(s, case).await {
        panic!("{case}: expected the connection to close, got {m:?}");
    }
    fields[&'M'].clone()
}

fn pool_row(pools: &[HashMap<String, String>], user: &str) -> Option<HashMap<String, String>> {
    pools
        .iter()
        .find(|p| p["database"] == DB && p["user"] == user)
        .cloned()
}

/// No server left lent out, none left in a transaction on the Postgres side, and a fresh client works.
async fn assert_nothing_leaked(backend: &Backend, proxy: &TestProxy, case: &str) {
    let admin = connect(&proxy.admin_url()).await;
    eventually(
        Duration::from_secs(10),
        &format!("{case}: sv_active back to 0"),
        || async {
            let pools = admin_rows(&admin, "SHOW POOLS").await;
            pool_row(&pools, "trustuser")
                .is_some_and(|p| p["sv_active"] == "0" && p["cl_active"] == "0")
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        &format!("{case}: no trustuser backend busy or in a transaction"),
        || async {
            backend.sql(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = 'trustuser' AND state IS DISTINCT FROM 'idle'",
            ) == "0"
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        &format!("{case}: only the admin client registered"),
        || async { admin_rows(&admin, "SHOW CLIENTS").await.len() == 1 },
    )
    .await;
    let mut s = login_trust(proxy).await;
    let reply = simple(&mut s, "SELECT 41 + 1").await;
    let row = reply.iter().find(|m| m.tag == b'D').expect("no DataRow");
    assert_eq!(row.body, b"\x00\x01\x00\x00\x00\x0242", "{case}");
}

fn malformed_cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("negative length", raw_header(b'Q', -1, b"SELECT 1\0")),
        ("length 3", raw_header(b'Q', 3, b"")),
        ("length i32::MAX", raw_header(b'Q', i32::MAX, b"SELECT 1\0")),
        ("length 1 GiB", raw_header(b'Q', 0x4000_0000, b"SELECT 1\0")),
        ("unknown message type", msg(b'z', b"")),
        ("unknown message type with body", msg(0xff, b"hello\0")),
        ("PasswordMessage after login", msg(b'p', b"secret\0")),
        ("Query without NUL", msg(b'Q', b"SELECT 1")),
        ("empty Query body", msg(b'Q', b"")),
        ("Parse with unterminated name", msg(b'P', b"stmt")),
        (
            "Parse with unterminated query",
            msg(b'P', b"stmt\0SELECT 1"),
        ),
        (
            "unnamed Parse with half a count",
            msg(b'P', b"\0SELECT 1\0\x00"),
        ),
        (
            "Parse with a negative count",
            msg(b'P', b"s\0SELECT 1\0\xff\xff"),
        ),
        (
            "Parse with count beyond the body",
            msg(b'P', b"s\0SELECT $1\0\x00\x03\x00\x00\x00\x17"),
        ),
        ("Bind with unterminated portal", msg(b'B', b"portal")),
        ("Bind with unterminated statement", msg(b'B', b"\0stmt")),
        ("Describe of an unknown kind", msg(b'D', b"Xname\0")),
        ("Describe without NUL", msg(b'D', b"Sname")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_when_idle_end_with_08p01_and_leak_nothing() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    for (case, bytes) in malformed_cases() {
        let mut s = login_trust(&proxy).await;
        simple(&mut s, "SELECT 1").await; // a server has been used and given back
        send(&mut s, &bytes).await;
        let text = expect_protocol_violation(&mut s, case).await;
        assert!(!text.is_empty(), "{case}");
        assert_nothing_leaked(&backend, &proxy, case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_inside_a_transaction_end_with_08p01_and_roll_back() {
    let backend = Backend::start().await;
    backend.sql("CREATE TABLE marks (case_name text)");
    backend.sql("GRANT ALL ON marks TO trustuser");
    let proxy = backend.proxy("").await;
    for (case, bytes) in malformed_cases() {
        let mut s = login_trust(&proxy).await;
        begin(&mut s).await;
        simple(
            &mut s,
            &format!("INSERT INTO marks VALUES ('{}')", case.replace('\'', "''")),
        )
        .await;
        send(&mut s, &bytes).await;
        expect_protocol_violation(&mut s, case).await;
        assert_nothing_leaked(&backend, &proxy, case).await;
    }
    // Every transaction cut short by a protocol violation was rolled back, not committed by accident.
    assert_eq!(backend.sql("SELECT count(*) FROM marks"), "0");
    // And the servers went back to the pool for reuse (rolled back), not just closed: at most pool_size were made.
    let pools = proxy.admin("SHOW POOLS").await;
    let p = pool_row(&pools, "trustuser").unwrap();
    let idle: usize =
        p["sv_idle"].parse::<usize>().unwrap() + p["sv_used"].parse::<usize>().unwrap();
    assert!(idle >= 1, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_inside_a_forwarded_bind_gets_the_servers_08p01_and_the_session_survives() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let mut s = login_trust(&proxy).await;
    // Valid names, then a parameter-format count of 65535 with no formats behind it.
    let mut batch = msg(b'P', b"\0SELECT 1\0\x00\x00");
    batch.extend(msg(b'B', b"\0\0\xff\xff"));
    batch.extend(msg(b'E', b"\0\x00\x00\x00\x00"));
    batch.extend(msg(b'S', b""));
    send(&mut s, &batch).await;
    let reply = read_until_ready(&mut s).await;
    let tags: Vec<char> = reply.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, ['1', 'E', 'Z'], "{reply:?}");
    let fields = reply[1].error_fields();
    assert_eq!(fields[&'C'], "08P01", "{fields:?}");
    assert_eq!(fields[&'S'], "ERROR", "{fields:?}");
    assert_eq!(reply[2].body, b"I");
    // Same connection, still good.
    let reply = simple(&mut s, "SELECT 41 + 1").await;
    let row = reply.iter().find(|m| m.tag == b'D').expect("no DataRow");
    assert_eq!(row.body, b"\x00\x01\x00\x00\x00\x0242");
    drop(s);
    assert_nothing_leaked(&backend, &proxy, "garbage Bind").await;
}

/// SASLInitialResponse: mechanism, then the client-first-message with its length.
fn sasl_initial(data: &[u8]) -> Vec<u8> {
    sasl_initial_with("SCRAM-SHA-256", data)
}

fn sasl_initial_with(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data);
    msg(b'p', &body)
}

fn auth_code(m: &Msg) -> i32 {
    assert_eq!(m.tag, b'R', "expected an Authentication message, got {m:?}");
    i32::from_be_bytes(m.body[..4].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_login_leave_nothing_registered() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let admin = connect(&proxy.admin_url()).await;
    let connections = || proxy.ctx().connections.load(Ordering::Relaxed);
    let pending = || proxy.ctx().pending_logins.load(Ordering::Relaxed);
    let settle = |what: &'static str| {
        let admin = &admin;
        async move {
            eventually(Duration::from_secs(10), what, || async {
                admin_rows(admin, "SHOW CLIENTS").await.len() == 1
                    && connections() == 1
                    && pending() == 0
            })
            .await;
        }
    };
    settle("only the admin connection at the start").await;

    let open = || async {
        timeout(STEP, TcpStream::connect(("127.0.0.1", proxy.port)))
            .await
            .unwrap()
            .unwrap()
    };

    // SCRAM: gone after the proxy asked for SASL.
    let mut s = open().await;
    send(
        &mut s,
        &startup_message(&[("user", "app"), ("database", DB)]),
    )
    .await;
    let m = read_msg(&mut s).await.unwrap();
    assert_eq!(auth_code(&m), 10, "AuthenticationSASL");
    // Mid-login: a pending login, neither counted as a client connection (max_client_conn) nor registered.
    assert_eq!(pending(), 1);
    assert_eq!(connections(), 1);
    assert_eq!(admin_rows(&admin, "SHOW CLIENTS").await.len(), 1);
    drop(s);
    settle("SCRAM client gone after AuthenticationSASL").await;

    // SCRAM: gone halfway through the exchange.
    let mut s = open().await;
    send(
        &mut s,
        &startup_message(&[("user", "app"), ("database", DB)]),
    )
    .await;
    assert_eq!(auth_code(&read_msg(&mut s).await.unwrap()), 10);
    send(&mut s, &sasl_initial(b"n,,n=,r=abcdefghijklmnopqrstuvwx")).await;
    let m = read_msg(&mut s).await.unwrap();
    assert_eq!(auth_code(&m), 11, "AuthenticationSASLContinue");
    assert!(
        String::from_utf8_lossy(&m.body[4..]).starts_with("r=abcdefghijklmnopqrstuvwx"),
        "{m:?}"
    );
    drop(s);
    settle("SCRAM client gone after SASLContinue").await;

    // md5: gone after the salt.
    let mut s = open().await;
    send(
        &mut s,
        &startup_message(&[("user", "md5user"), ("database", DB)]),
    )
    .await;
    let m = read_msg(&mut s).await.unwrap();
    assert_eq!(auth_code(&m), 5, "AuthenticationMD5Password");
    assert_eq!(m.body.len(), 8);
    drop(s);
    settle("md5 client gone after the salt").await;

    // Half a password message, then gone.
    let mut s = open().await;
    send(
        &mut s,
        &startup_message(&[("user", "md5user"), ("database", DB)]),
    )
    .await;
    assert_eq!(auth_code(&read_msg(&mut s).await.unwrap()), 5);
    send(&mut s, &raw_header(b'p', 40, b"md5abc")).await;
    drop(s);
    settle("md5 client gone mid-password").await;

    // Trust: the StartupMessage and an immediate close, without reading anything.
    let mut s = open().await;
    send(
        &mut s,
        &startup_message(&[("user", "trustuser"), ("database", DB)]),
    )
    .await;
    // Without reading anything, nothing tells us the proxy has this connection yet; wait until it counts it, or
    // the settle below could pass before the proxy even accepted it.
    eventually(
        Duration::from_secs(10),
        "the trust client accepted",
        || async { connections() == 2 },
    )
    .await;
    drop(s);
    settle("trust client gone right after its StartupMessage").await;

    // And the pools show no client either.
    let pools = admin_rows(&admin, "SHOW POOLS").await;
    for p in &pools {
        assert_eq!(
            (p["cl_active"].as_str(), p["cl_waiting"].as_str()),
            ("0", "0"),
            "{p:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_while_a_query_runs_cancels_it_and_frees_the_server() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    let mut s = login_trust(&proxy).await;
    send(&mut s, &query("SELECT pg_sleep(60) AS long_one")).await;
    eventually(
        Duration::from_secs(10),
        "the long query running",
        || async {
            backend.sql(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = 'trustuser' AND query LIKE '%long_one%' AND state = 'active'",
            ) == "1"
        },
    )
    .await;
    send(&mut s, &msg(b'z', b"")).await;
    // Well before the query would have finished by itself.
    expect_protocol_violation(&mut s, "garbage while a query runs").await;
    eventually(Duration::from_secs(10), "the long query gone", || async {
        backend.sql(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = 'trustuser' AND query LIKE '%long_one%' AND state = 'active'",
        ) == "0"
    })
    .await;
    assert_nothing_leaked(&backend, &proxy, "garbage while a query runs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_refused_even_when_no_server_is_free() {
    let backend = Backend::start().await;
    // One server, held by another client's open transaction: a message that needs a server would wait 10s.
    let proxy = backend.proxy("pool_size = 1").await;
    let mut holder = login_trust(&proxy).await;
    begin(&mut holder).await;
    for (case, bytes) in malformed_cases() {
        let mut s = login_trust(&proxy).await;
        send(&mut s, &bytes).await;
        expect_protocol_violation(&mut s, case).await;
    }
    simple(&mut holder, "COMMIT").await;
    drop(holder);
    assert_nothing_leaked(&backend, &proxy, "malformed with a busy pool").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_during_authentication_get_08p01() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("").await;
    // (case, user, bytes, what the error message must say)
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "md5: Query instead",
            "md5user",
            query("SELECT 1"),
            "expected password response, got message type 'Q'",
        ),
        (
            "md5: negative length",
            "md5user",
            raw_header(b'p', -2, b""),
            "invalid message length -2",
        ),
        (
            "md5: length 3",
            "md5user",
            raw_header(b'p', 3, b""),
            "invalid message length 3",
        ),
        (
            "md5: over 16 KiB",
            "md5user",
            raw_header(b'p', 20_000, b"x"),
            "authentication message too long",
        ),
        (
            "md5: unterminated",
            "md5user",
            msg(b'p', b"md5abc"),
            "malformed password message",
        ),
        (
            "SCRAM: Terminate instead",
            "app",
            msg(b'X', b""),
            "got message type 'X'",
        ),
        (
            "SCRAM: garbage initial",
            "app",
            msg(b'p', b"\xff\xff"),
            "malformed SASLInitialResponse",
        ),
        (
            "SCRAM: unknown mechanism",
            "app",
            sasl_initial_with("SCRAM-SHA-1", b"n,,n=,r=abc"),
            "invalid SASL authentication mechanism",
        ),
        (
            "SCRAM: length field beyond the data",
            "app",
            msg(b'p', b"SCRAM-SHA-256\0\x00\x00\x01\x00n,,n=,r=abc"),
            "malformed SASLInitialResponse",
        ),
        (
            "SCRAM: not a client-first-message",
            "app",
            sasl_initial(b"hello"),
            "",
        ),
    ];
    for (case, user, bytes, reason) in cases {
        let mut s = timeout(STEP, TcpStream::connect(("127.0.0.1", proxy.port)))
            .await
            .unwrap()
            .unwrap();
        send(
            &mut s,
            &startup_message(&[("user", user), ("database", DB)]),
        )
        .await;
        let m = read_msg(&mut s).await.unwrap();
        assert_eq!(m.tag, b'R', "{case}");
        send(&mut s, &bytes).await;
        let text = expect_protocol_violation(&mut s, case).await;
        assert!(text.contains(reason), "{case}: {text:?} lacks {reason:?}");
    }
    assert_eq!(proxy.admin("SHOW CLIENTS").await.len(), 1);
}
