//! Editing a running test server's pg_hba.conf and postgresql.auto.conf, for tests of what the proxy does when a
//! server demands something the harness does not set up (a cleartext password, TLS, SCRAM over its Unix socket).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use shardpool::pgcluster::PgServer;

/// Puts `lines` before the generated rules (Postgres uses the first matching line) and reloads. Call after the
/// last `create_user`, which regenerates the file.
pub fn prepend(pg: &PgServer, lines: &[&str]) {
    let path = pg.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{}\n{old}", lines.join("\n"))).unwrap();
    reload(pg);
}

/// `ALTER SYSTEM SET` for each pair, then a reload that is known to have happened.
pub fn alter_system(pg: &PgServer, settings: &[(&str, &str)]) {
    for (k, v) in settings {
        pg.sql("postgres", &format!("ALTER SYSTEM SET {k} = '{v}'"))
            .unwrap();
    }
    reload(pg);
}

/// Signals a reload and waits until a new session sees a later configuration load time.
pub fn reload(pg: &PgServer) {
    let before = pg.sql("postgres", "SELECT pg_conf_load_time()").unwrap();
    pg.sql("postgres", "SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let check = format!("SELECT pg_conf_load_time() > '{before}'::timestamptz");
    while pg.sql("postgres", &check).unwrap() != "t" {
        assert!(
            Instant::now() < deadline,
            "server did not reload its configuration"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies `src` into the server's data directory as `name`, owned by the server's account with mode 0600 (what
/// Postgres demands of a private key).
pub fn install_file(pg: &PgServer, src: &Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dest = pg.data_dir().join(name);
    std::fs::copy(src, &dest).unwrap();
    let meta = std::fs::metadata(pg.data_dir()).unwrap();
    std::os::unix::fs::chown(&dest, Some(meta.uid()), Some(meta.gid())).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
    dest
}

/// The directory of the server's Unix socket (`unix_socket_directories`, the data directory's parent here).
pub fn socket_dir(pg: &PgServer) -> String {
    pg.data_dir()
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}
