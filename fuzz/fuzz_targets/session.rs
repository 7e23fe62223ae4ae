//! A whole client session: after a real login, arbitrary client messages (framed or not) go through shardpool's
//! session to a real Postgres 15 server (started once per fuzzing process with `pgcluster`, as the integration
//! tests do; a scripted in-process server would check less of the protocol). The pool has ONE server, so whatever
//! a fuzzed client leaves behind on it is what the next client gets.
//! Invariants, checked after every input with a fresh client: the proxy is still up and answers within the checkout
//! timeout (nothing holds the only server after its client has gone); the next client's server is idle (not in a
//! transaction another client opened) and carries nothing of the fuzzed client's session: the same settings set in
//! a session (`pg_settings` whose source is `session`, and the custom `fuzz.x`), role, advisory locks, temp tables,
//! LISTEN channels and open cursors as a fresh client saw before any input.
//!
//! Needs the PostgreSQL server binaries (SHARDPOOL_PG_BINDIR, or /usr/lib/postgresql/*/bin). Much slower than the
//! other targets (a TCP connection and a login per input); run it on its own.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardpool::app::Proxy;
use shardpool::config::Config;
use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};
use shardpool::protocol::backend::ErrorFields;
use shardpool::protocol::framing::split_frame;
use shardpool::protocol::frontend::write_query;
use shardpool::protocol::startup::encode_startup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct World {
    runtime: tokio::runtime::Runtime,
    port: u16,
    /// What a fresh client's server carried before any input (`SESSION_STATE`).
    baseline: String,
    _proxy: Proxy,
    _pg: PgServer,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let pg = PgServer::start_primary(&ServerOptions::default().with("statement_timeout", "2s"))
            .expect("start postgres (PostgreSQL server binaries needed)");
        pg.create_user("fuzz", "", AuthMethod::Trust)
            .expect("create user");
        pg.create_database("fuzz", "fuzz").expect("create database");
        watch_over(&pg);
        let toml = format!(
            r#"
            [general]
            listen = "127.0.0.1:0"
            pool_size = 1
            checkout_timeout = "5s"
            idle_transaction_timeout = "2s"

            [[users]]
            name = "fuzz"
            auth = "trust"

            [databases.fuzz]
            host = "127.0.0.1"
            port = {}
            "#,
            pg.port()
        );
        let config = Config::from_toml(&toml).expect("a valid config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let proxy = runtime
            .block_on(Proxy::start(config, None))
            .expect("start the proxy");
        let port = proxy.addr.port();
        let baseline = runtime.block_on(async {
            let mut first = login(port).await;
            query(&mut first, SESSION_STATE).await.0.concat()
        });
        World {
            port,
            baseline,
            runtime,
            _proxy: proxy,
            _pg: pg,
        }
    })
}

/// Everything of a server session that one client can leave to the next, as one line: settings made in the session
/// (custom ones are not listed in pg_settings: `fuzz.x`, which the seeds set, stands for them), role, advisory locks this backend holds, its temp tables, LISTEN channels and open cursors.
const SESSION_STATE: &str = "SELECT concat_ws(' | ', \
    (SELECT coalesce(string_agg(name || '=' || setting, ',' ORDER BY name), '') \
       FROM pg_settings WHERE source = 'session'), \
    'fuzz.x=' || coalesce(current_setting('fuzz.x', true), ''), \
    'role ' || current_user || '/' || session_user, \
    'advisory ' || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
    'temp ' || (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
    'listen ' || (SELECT count(*) FROM pg_listening_channels()), \
    'cursors ' || (SELECT count(*) FROM pg_cursors))";

/// libFuzzer ends the process with `exit`, which never drops statics: a shell outlives us to stop the server and
/// delete its files.
fn watch_over(pg: &PgServer) {
    let data = pg.data_dir().display().to_string();
    // Scratch directories are `<root>/sp-pg-<owner pid>-<random>`: the server's and the initdb template's.
    let root = pg
        .data_dir()
        .parent()
        .and_then(|scratch| scratch.parent())
        .map(|r| r.display().to_string())
        .expect("a scratch root");
    let pid = std::process::id();
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         kill -QUIT $(head -n1 '{data}/postmaster.pid') 2>/dev/null; sleep 2; rm -rf '{root}'/sp-pg-{pid}-*"
    );
    std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn the clean-up watcher");
}

/// Connects and logs in as `fuzz`; returns the stream once ReadyForQuery arrived.
async fn login(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the proxy accepts");
    s.write_all(&encode_startup(&[("user", "fuzz"), ("database", "fuzz")]))
        .await
        .expect("send startup");
    let mut buf = BytesMut::new();
    loop {
        while let Some(f) = split_frame(&mut buf).expect("valid frames from the proxy") {
            match f.tag {
                b'Z' => return s,
                b'E' => panic!("login refused: {:?}", ErrorFields::parse(f.body())),
                _ => {}
            }
        }
        if s.read_buf(&mut buf).await.expect("read login replies") == 0 {
            panic!("the proxy closed the connection during login");
        }
    }
}

/// Runs one simple query; returns the rows' first values and the final transaction status.
async fn query(s: &mut TcpStream, sql: &str) -> (Vec<String>, u8) {
    let mut out = BytesMut::new();
    write_query(&mut out, sql);
    s.write_all(&out).await.expect("send query");
    let mut buf = BytesMut::new();
    let mut rows = Vec::new();
    loop {
        while let Some(f) = split_frame(&mut buf).expect("valid frames from the proxy") {
            match f.tag {
                b'D' => {
                    let values =
                        shardpool::protocol::backend::parse_data_row(f.body()).expect("a DataRow");
                    rows.push(String::from_utf8_lossy(values[0].unwrap_or(b"NULL")).into_owned());
                }
                b'E' => panic!("{sql}: {:?}", ErrorFields::parse(f.body())),
                b'Z' => return (rows, f.body()[0]),
                _ => {}
            }
        }
        if s.read_buf(&mut buf).await.expect("read replies") == 0 {
            panic!("{sql}: the proxy closed the connection");
        }
    }
}

async fn session(port: u16, baseline: &str, data: &[u8]) {
    let mut s = login(port).await;
    // Each input is either written whole, or cut where its first byte says, to vary the reads the proxy sees.
    let (cut, bytes) = data
        .split_first()
        .map_or((0, data), |(c, b)| (usize::from(*c), b));
    let (a, b) = bytes.split_at(cut.min(bytes.len()));
    let _ = s.write_all(a).await;
    let _ = s.write_all(b).await;
    // Read what comes back for a moment, then hang up whatever the state.
    let mut sink = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(Duration::from_millis(50), async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    drop(s);

    // The next client gets the one server, idle, with nothing of the fuzzed client's session on it.
    let check = async {
        let mut next = login(port).await;
        let (rows, status) = query(&mut next, SESSION_STATE).await;
        assert_eq!(
            status, b'I',
            "the next client's server is inside a transaction"
        );
        assert_eq!(
            rows.concat(),
            baseline,
            "the next client's server carries the fuzzed client's session state"
        );
    };
    tokio::time::timeout(Duration::from_secs(8), check)
        .await
        .expect("the next client was served within 8 s");
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.runtime.block_on(session(w.port, &w.baseline, data));
});
