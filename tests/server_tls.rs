//! The proxy's own connections to its servers: TLS in each `server_tls_mode` against a real Postgres with `ssl = on`
//! (a throwaway CA and server certificate made with `openssl`), the fallback to plain text, refusal of a cleartext
//! password where the channel does not protect it, and a SCRAM exchange that must end with a verified server
//! signature, checked against a scripted impostor (the only non-Postgres peer here, because it plays a malicious
//! server that Postgres cannot be made into).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{hba, sqlstate, try_connect, Backend, TestProxy, DB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(15);

/// A CA, a second unrelated CA, and a server certificate from the first naming only `localhost` (not 127.0.0.1),
/// so verify-full against the address fails while verify-ca passes.
struct Certs {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn make_certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    Certs {
        ca: d.join("ca.pem"),
        other_ca: d.join("other-ca.pem"),
        server_cert: d.join("server.crt"),
        server_key: d.join("server.key"),
        _dir: dir,
    }
}

/// The harness's server with `ssl = on` and a `password` (cleartext) user, `pwuser`/`pwpw`.
async fn tls_backend(certs: &Certs) -> Backend {
    let backend = Backend::start().await;
    let (cert, key) = (certs.server_cert.clone(), certs.server_key.clone());
    let pg = &backend.pg;
    let cert = hba::install_file(pg, &cert, "server.crt");
    let key = hba::install_file(pg, &key, "server.key");
    hba::alter_system(
        pg,
        &[
            ("ssl_cert_file", &cert.to_string_lossy()),
            ("ssl_key_file", &key.to_string_lossy()),
            ("ssl", "on"),
        ],
    );
    add_cleartext_user(&backend);
    backend
}

fn add_cleartext_user(backend: &Backend) {
    backend
        .pg
        .sql("postgres", "CREATE ROLE pwuser LOGIN PASSWORD 'pwpw'")
        .unwrap();
    hba::prepend(&backend.pg, &["host all pwuser 127.0.0.1/32 password"]);
}

/// A proxy in front of `backend` reached as `host`, with `general` lines added (the harness's users plus `pwuser`).
async fn proxy(backend: &Backend, host: &str, general: &str) -> TestProxy {
    let toml = backend
        .config_toml(general)
        .replace("host = \"127.0.0.1\"", &format!("host = \"{host}\""));
    let toml = format!("{toml}\n[[users]]\nname = \"pwuser\"\npassword = \"pwpw\"\n");
    TestProxy::start(&toml).await
}

fn tls_lines(mode: &str, ca: Option<&Path>) -> String {
    let mut s = format!("server_tls_mode = \"{mode}\"\n");
    if let Some(ca) = ca {
        s.push_str(&format!("server_tls_ca_file = \"{}\"\n", ca.display()));
    }
    s
}

/// Whether the proxy's server connection for `user` is encrypted, as the server sees it.
async fn server_side_ssl(proxy: &TestProxy, user: &str, password: &str) -> bool {
    let client = timeout(STEP, try_connect(&proxy.url(user, password, DB)))
        .await
        .expect("login hung")
        .unwrap_or_else(|e| panic!("login as {user}: {e}"));
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

/// A refused login's SQLSTATE and message.
async fn refused(proxy: &TestProxy, user: &str, password: &str) -> (String, String) {
    match timeout(STEP, try_connect(&proxy.url(user, password, DB)))
        .await
        .expect("login hung")
    {
        Ok(_) => panic!("{user} logged in but the server login should have been refused"),
        Err(e) => {
            let message = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string());
            (sqlstate(&e), message)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_and_verify_ca_check_the_certificate() {
    let certs = make_certs();
    let backend = tls_backend(&certs).await;

    // The certificate names localhost and chains to the CA: verify-full passes, and the server sees TLS.
    let p = proxy(
        &backend,
        "localhost",
        &tls_lines("verify-full", Some(&certs.ca)),
    )
    .await;
    assert!(server_side_ssl(&p, "app", "secret").await);
    drop(p);

    // Reached as 127.0.0.1, which the certificate does not name: verify-full refuses, verify-ca does not.
    let p = proxy(
        &backend,
        "127.0.0.1",
        &tls_lines("verify-full", Some(&certs.ca)),
    )
    .await;
    let (code, message) = refused(&p, "app", "secret").await;
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("verify-full") && message.contains("TLS"),
        "{message}"
    );
    assert!(message.to_lowercase().contains("name"), "{message}");
    drop(p);
    let p = proxy(
        &backend,
        "127.0.0.1",
        &tls_lines("verify-ca", Some(&certs.ca)),
    )
    .await;
    assert!(server_side_ssl(&p, "app", "secret").await);
    drop(p);

    // A CA that did not sign the certificate: both verifying modes refuse, whatever the name.
    for (mode, host) in [("verify-full", "localhost"), ("verify-ca", "127.0.0.1")] {
        let p = proxy(&backend, host, &tls_lines(mode, Some(&certs.other_ca))).await;
        let (code, message) = refused(&p, "app", "secret").await;
        assert_eq!(code, "08006", "{mode}: {message}");
        assert!(
            message.contains(mode) && message.contains("UnknownIssuer"),
            "{mode}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_prefer_encrypt_against_a_self_signed_certificate() {
    let certs = make_certs();
    let backend = tls_backend(&certs).await;
    for mode in ["require", "prefer"] {
        let p = proxy(&backend, "127.0.0.1", &tls_lines(mode, None)).await;
        assert!(server_side_ssl(&p, "app", "secret").await, "{mode}");
        // Messages far larger than a socket buffer, both ways, over the encrypted connection.
        let client = try_connect(&p.app_url()).await.unwrap();
        let big = "x".repeat(8 << 20);
        let row = client
            .query_one("SELECT length($1::text), repeat('y', 8388608)", &[&big])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 8 << 20);
        assert_eq!(row.get::<_, String>(1).len(), 8 << 20);
        // md5 is answered by default, and over TLS.
        assert!(server_side_ssl(&p, "md5user", "md5pw").await, "{mode}");
    }
    // The default is prefer.
    let p = proxy(&backend, "127.0.0.1", "").await;
    assert!(server_side_ssl(&p, "app", "secret").await);
    // disable never asks.
    let p = proxy(&backend, "127.0.0.1", &tls_lines("disable", None)).await;
    assert!(!server_side_ssl(&p, "app", "secret").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_falls_back_to_plain_and_require_refuses_a_server_without_tls() {
    let backend = Backend::start().await;
    for mode in ["prefer", "disable"] {
        let p = proxy(&backend, "127.0.0.1", &tls_lines(mode, None)).await;
        assert!(!server_side_ssl(&p, "app", "secret").await, "{mode}");
    }
    let p = proxy(&backend, "127.0.0.1", &tls_lines("require", None)).await;
    let (code, message) = refused(&p, "app", "secret").await;
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("does not support TLS") && message.contains("require"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleartext_password_goes_only_where_the_channel_protects_it() {
    let certs = make_certs();
    let backend = tls_backend(&certs).await;
    // Plain TCP and unverified TLS: refused with 28000 naming the setting.
    for mode in ["disable", "require"] {
        let p = proxy(&backend, "127.0.0.1", &tls_lines(mode, None)).await;
        let (code, message) = refused(&p, "pwuser", "pwpw").await;
        assert_eq!(code, "28000", "{mode}: {message}");
        assert!(
            message.contains("cleartext") && message.contains("server_allow_cleartext"),
            "{mode}: {message}"
        );
        // Other users of the same proxy are unaffected.
        assert_eq!(
            server_side_ssl(&p, "app", "secret").await,
            mode == "require"
        );
    }
    // TLS with a verified certificate protects it.
    let p = proxy(
        &backend,
        "127.0.0.1",
        &tls_lines("verify-ca", Some(&certs.ca)),
    )
    .await;
    assert!(server_side_ssl(&p, "pwuser", "pwpw").await);
    // The setting allows it anywhere, plain TCP included.
    let general = format!(
        "{}server_allow_cleartext = true\n",
        tls_lines("disable", None)
    );
    let p = proxy(&backend, "127.0.0.1", &general).await;
    assert!(!server_side_ssl(&p, "pwuser", "pwpw").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_can_be_refused_and_scram_is_verified() {
    let backend = Backend::start().await;
    let p = proxy(&backend, "127.0.0.1", "server_allow_md5 = false\n").await;
    let (code, message) = refused(&p, "md5user", "md5pw").await;
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("server_allow_md5"), "{message}");
    // SCRAM still logs in: the server's signature verified, or the login would have failed.
    assert!(!server_side_ssl(&p, "app", "secret").await);
    // A wrong server password is the server's refusal, as before.
    let toml = backend.config_toml("server_allow_md5 = false").replacen(
        "password = \"secret\"",
        "password = \"secret\"\nserver_password = \"wrong\"",
        1,
    );
    let p = TestProxy::start(&toml).await;
    let (code, message) = refused(&p, "app", "secret").await;
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
}

/// How the scripted server misbehaves after the client's SCRAM proof (or md5 answer).
#[derive(Clone, Copy, Debug)]
enum Impostor {
    /// AuthenticationOk straight after the client's proof: no AuthenticationSASLFinal, no signature.
    OkWithoutFinal,
    /// AuthenticationSASLFinal with a signature it could not have computed, then AuthenticationOk.
    ForgedSignature,
    /// After the md5 answer, a second request: the cleartext password.
    CleartextAfterMd5,
}

async fn read_message(s: &mut tokio::net::TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend_from_slice(&((8 + data.len()) as u32).to_be_bytes());
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// What a server that does not know the password can do: speaks the protocol up to its trick, then logs the
/// proxy in (ParameterStatus, BackendKeyData, ReadyForQuery) if the proxy lets it.
async fn impostor_session(mut s: tokio::net::TcpStream, how: Impostor) -> std::io::Result<()> {
    loop {
        let len = s.read_u32().await? as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut body).await?;
        if body.get(..4) == Some(&80_877_103u32.to_be_bytes()[..]) {
            s.write_all(b"N").await?; // SSLRequest: no TLS here
            continue;
        }
        break;
    }
    match how {
        Impostor::CleartextAfterMd5 => {
            s.write_all(&auth(5, b"salt")).await?;
            read_message(&mut s).await?;
            s.write_all(&auth(3, b"")).await?;
        }
        Impostor::OkWithoutFinal | Impostor::ForgedSignature => {
            s.write_all(&auth(10, b"SCRAM-SHA-256\0\0")).await?;
            let (_, initial) = read_message(&mut s).await?;
            let text = String::from_utf8_lossy(&initial).into_owned();
            let nonce = text.split("r=").nth(1).unwrap_or("").to_owned();
            let first = format!("r={nonce}impostor,s=c2FsdHNhbHRzYWx0,i=4096");
            s.write_all(&auth(11, first.as_bytes())).await?;
            read_message(&mut s).await?;
            if let Impostor::ForgedSignature = how {
                let forged = "v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
                s.write_all(&auth(12, forged.as_bytes())).await?;
            }
        }
    }
    let mut login = auth(0, b"");
    login.extend_from_slice(b"S\0\0\0\x18server_version\x0099.0\0");
    login.extend_from_slice(b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02");
    login.extend_from_slice(b"Z\0\0\0\x05I");
    s.write_all(&login).await?;
    // Hold the connection until the proxy hangs up.
    while read_message(&mut s).await.is_ok() {}
    Ok(())
}

async fn start_impostor(how: Impostor) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(impostor_session(s, how));
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_skips_or_forges_the_scram_signature_is_refused() {
    for (how, expected) in [
        (Impostor::OkWithoutFinal, "without AuthenticationSASLFinal"),
        (Impostor::ForgedSignature, "signature does not verify"),
        (
            Impostor::CleartextAfterMd5,
            "expected AuthenticationOk after the md5 answer",
        ),
    ] {
        let port = start_impostor(how).await;
        let toml = format!(
            r#"
            [general]
            listen = "127.0.0.1:0"
            server_allow_cleartext = true
            [[users]]
            name = "app"
            password = "secret"
            [databases.{DB}]
            host = "127.0.0.1"
            port = {port}
            "#
        );
        let p = TestProxy::start(&toml).await;
        let (code, message) = refused(&p, "app", "secret").await;
        assert_eq!(code, "08006", "{how:?}: {message}");
        assert!(message.contains(expected), "{how:?}: {message}");
    }
}
