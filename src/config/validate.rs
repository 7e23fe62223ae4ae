//! Semantic checks that serde cannot express. Every problem is collected with the key it concerns, so an operator
//! fixes a broken file in one round instead of one error per restart.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{AuthMethod, Config, ADMIN_DATABASE};

/// The smallest `max_message_size` accepted: room for ordinary statements and every message shardpool itself reads.
const MIN_MESSAGE_SIZE: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending key, e.g. `databases.app.pool_size`.
    pub key: String,
    pub message: String,
}

pub(super) fn render(problems: &[Problem]) -> String {
    let mut out = format!("invalid configuration ({} problem(s)):", problems.len());
    for p in problems {
        out.push_str(&format!("\n  {}: {}", p.key, p.message));
    }
    out
}

impl Config {
    /// Returns every problem found; empty means valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: String, message: String| out.push(Problem { key, message });
        let g = &self.general;

        if g.listen.parse::<SocketAddr>().is_err() {
            problem(
                "general.listen".into(),
                format!("{:?} is not an address like 127.0.0.1:6432", g.listen),
            );
        }
        if let Some(http) = &g.http_listen {
            if http.parse::<SocketAddr>().is_err() {
                problem(
                    "general.http_listen".into(),
                    format!("{http:?} is not an address like 127.0.0.1:9930"),
                );
            }
        }
        if g.http_request_timeout.0.is_zero() {
            problem(
                "general.http_request_timeout".into(),
                "must be more than 0".into(),
            );
        }
        if g.max_client_conn == 0 {
            problem(
                "general.max_client_conn".into(),
                "must be at least 1".into(),
            );
        }
        if !(MIN_MESSAGE_SIZE..=crate::protocol::MAX_MESSAGE_LEN).contains(&g.max_message_size) {
            problem(
                "general.max_message_size".into(),
                format!(
                    "must be from {MIN_MESSAGE_SIZE} to {} (Postgres' own limit)",
                    crate::protocol::MAX_MESSAGE_LEN
                ),
            );
        }
        if g.max_pending_logins == 0 {
            problem(
                "general.max_pending_logins".into(),
                "must be at least 1".into(),
            );
        }
        if g.client_login_timeout.0.is_zero() {
            problem(
                "general.client_login_timeout".into(),
                "must be more than 0".into(),
            );
        }
        if g.pool_size == 0 {
            problem("general.pool_size".into(), "must be at least 1".into());
        }
        if g.min_pool_size > g.pool_size {
            problem(
                "general.min_pool_size".into(),
                "must not exceed general.pool_size".into(),
            );
        }
        if g.prepared_statements_cache_size == 0 {
            problem(
                "general.prepared_statements_cache_size".into(),
                "must be at least 1".into(),
            );
        }
        if g.checkout_timeout.0.is_zero() {
            problem(
                "general.checkout_timeout".into(),
                "must be greater than 0".into(),
            );
        }
        if g.server_connect_timeout.0.is_zero() {
            problem(
                "general.server_connect_timeout".into(),
                "must be greater than 0".into(),
            );
        }

        if let Err(e) =
            crate::backend::tls::ServerTls::new(g.server_tls_mode, g.server_tls_ca_file.as_deref())
        {
            problem("general.server_tls_mode".into(), e.to_string());
        }

        let mut seen = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = |field: &str| format!("users[{i}].{field}");
            if u.name.is_empty() {
                problem(key("name"), "must not be empty".into());
            }
            if !seen.insert(u.name.as_str()) {
                problem(key("name"), format!("user {:?} is defined twice", u.name));
            }
            let pw = u.password.as_deref();
            match (u.auth, pw) {
                (AuthMethod::Trust, _) => {}
                (_, None) => problem(key("password"), format!("required for auth = \"{}\"", u.auth)),
                (AuthMethod::Md5, Some(p)) if p.starts_with("SCRAM-SHA-256$") => problem(
                    key("password"),
                    "a SCRAM verifier cannot answer md5 authentication; give a plain password or md5 hash".into(),
                ),
                (AuthMethod::ScramSha256, Some(p)) if p.len() == 35 && p.starts_with("md5") => problem(
                    key("password"),
                    "an md5 hash cannot answer SCRAM authentication; give a plain password or SCRAM verifier".into(),
                ),
                (AuthMethod::ScramSha256, Some(p)) if p.starts_with("SCRAM-SHA-256$") => {
                    if let Err(e) = crate::auth::scram::ScramVerifier::parse(p) {
                        problem(key("password"), format!("invalid SCRAM verifier: {e}"));
                    }
                }
                _ => {}
            }
            if u.pool_size == Some(0) {
                problem(key("pool_size"), "must be at least 1".into());
            }
        }
        if let Some(au) = &g.auth_user {
            match self.user(au) {
                None => problem(
                    "general.auth_user".into(),
                    format!("{au:?} is defined neither in [[users]] nor in auth_file"),
                ),
                Some(u) if u.server_password().is_none() && !is_md5(u.password.as_deref()) => problem(
                    "general.auth_user".into(),
                    format!(
                        "{au:?} needs a plain password (or server_password, or an md5 hash) to log in to servers with"
                    ),
                ),
                Some(_) => {}
            }
            if g.auth_query.trim().is_empty() {
                problem(
                    "general.auth_query".into(),
                    "must not be empty when auth_user is set".into(),
                );
            }
        }
        if let Some(db) = &g.auth_dbname {
            if !self.databases.contains_key(db) {
                problem(
                    "general.auth_dbname".into(),
                    format!("{db:?} is not defined in [databases]"),
                );
            }
        }
        if g.auth_cache_size == 0 {
            problem(
                "general.auth_cache_size".into(),
                "must be at least 1".into(),
            );
        }
        for a in &g.admin_users {
            if self.user(a).is_none() {
                problem(
                    "general.admin_users".into(),
                    format!("{a:?} is not defined in [[users]]"),
                );
            }
        }

        for (name, db) in &self.databases {
            let key = |field: &str| format!("databases.{name}.{field}");
            if name == ADMIN_DATABASE {
                problem(
                    format!("databases.{name}"),
                    "this name is reserved for the admin console".into(),
                );
            }
            if db.host.is_empty() {
                problem(key("host"), "must not be empty".into());
            }
            if db.port == 0 {
                problem(key("port"), "must not be 0".into());
            }
            if db.pool_size == Some(0) {
                problem(key("pool_size"), "must be at least 1".into());
            }
            if let Some(sh) = &db.sharding {
                if !db.replicas.is_empty() {
                    problem(
                        key("replicas"),
                        "a sharded database lists replicas per shard (sharding.shards[].replicas)"
                            .into(),
                    );
                }
                for p in sh.validate_at(&key("sharding")) {
                    problem(p.key, p.message);
                }
            }
            let (mode, ca) = self.server_tls_settings(db);
            let overridden = db.server_tls_mode.is_some() || db.server_tls_ca_file.is_some();
            if overridden {
                if let Err(e) = crate::backend::tls::ServerTls::new(mode, ca) {
                    problem(key("server_tls_mode"), e.to_string());
                }
            }
            if db.sharding.is_some() && mode.requires_tls() {
                // The catalog follower, directory recorder and shardctl connect through tokio-postgres without TLS.
                problem(
                    key("server_tls_mode"),
                    format!(
                        "\"{mode}\" is not supported for a sharded database yet: its catalog connections \
                         do not use TLS (use prefer or disable)"
                    ),
                );
            }
            let size = db.pool_size.unwrap_or(g.pool_size);
            if db.min_pool_size.unwrap_or(g.min_pool_size) > size {
                problem(
                    key("min_pool_size"),
                    format!("must not exceed the pool size ({size})"),
                );
            }
        }

        if let Some(dir) = &g.unix_socket_dir {
            let longest = super::instances::socket_path(dir, u16::MAX);
            if dir.as_os_str().is_empty() {
                problem(
                    "general.unix_socket_dir".into(),
                    "must not be empty (leave it out for no Unix socket)".into(),
                );
            } else if longest.as_os_str().len() > super::instances::MAX_SOCKET_PATH {
                problem(
                    "general.unix_socket_dir".into(),
                    format!(
                        "{} is too long for a Unix socket path ({} bytes at most)",
                        longest.display(),
                        super::instances::MAX_SOCKET_PATH
                    ),
                );
            }
        }
        if g.peer_id > super::instances::MAX_PEER_ID {
            problem(
                "general.peer_id".into(),
                format!(
                    "must be from 1 to {} (0: none)",
                    super::instances::MAX_PEER_ID
                ),
            );
        }
        if !self.peers.is_empty() && g.peer_id == 0 {
            problem(
                "general.peer_id".into(),
                "[peers] is set, so this instance needs a peer_id of its own (1 to 16383)".into(),
            );
        }
        let mut peer_ids = HashSet::new();
        for (id, addr) in &self.peers {
            match super::instances::parse_peer_id(id) {
                Ok(n) if !peer_ids.insert(n) => {
                    problem(format!("peers.{id}"), format!("peer {n} is listed twice"))
                }
                Ok(_) => {}
                Err(e) => problem(format!("peers.{id}"), e),
            }
            if let Err(e) = super::PeerAddr::parse(addr) {
                problem(format!("peers.{id}"), e);
            }
        }

        if let Some(tls) = &self.tls {
            for (field, path) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !path.is_file() {
                    problem(
                        format!("tls.{field}"),
                        format!("{} is not a readable file", path.display()),
                    );
                }
            }
        }
        out
    }
}

fn is_md5(password: Option<&str>) -> bool {
    password.is_some_and(|p| {
        matches!(
            crate::auth::StoredSecret::parse(p),
            crate::auth::StoredSecret::Md5(_)
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    #[test]
    fn server_tls_settings_are_checked() {
        let err = Config::from_toml(
            r#"
            [general]
            server_tls_mode = "verify-full"
            [databases.a]
            server_tls_mode = "verify-ca"
            server_tls_ca_file = "/nonexistent/ca.pem"
            [databases.b]
            server_tls_mode = "require"
            [databases.b.sharding]
            vshards = 4
            [[databases.b.sharding.shards]]
            host = "/var/run/postgresql"
            port = 5432
        "#,
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("{err}")
        };
        let text: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect();
        let has =
            |key: &str, words: &str| text.iter().any(|t| t.starts_with(key) && t.contains(words));
        assert!(
            has("general.server_tls_mode", "needs server_tls_ca_file"),
            "{text:?}"
        );
        assert!(
            has("databases.a.server_tls_mode", "/nonexistent/ca.pem"),
            "{text:?}"
        );
        assert!(has("databases.b.server_tls_mode", "sharded"), "{text:?}");
        // A Unix-socket host is a valid host, and disable needs nothing.
        let ok = Config::from_toml(
            "[general]\nserver_tls_mode = \"disable\"\n[databases.a]\nhost = \"/var/run/postgresql\"\n",
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let err = Config::from_toml(
            r#"
            [general]
            listen = "nowhere"
            pool_size = 0
            admin_users = ["ghost"]
            [[users]]
            name = "a"
            [[users]]
            name = "a"
            auth = "md5"
            password = "SCRAM-SHA-256$4096:abc"
            [databases.shardpool]
            [databases.x]
            min_pool_size = 50
            [peers]
            0 = "10.0.0.1:6432"
            2 = "nowhere"
        "#,
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("{err}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "general.listen",
            "general.pool_size",
            "general.admin_users",
            "users[0].password",
            "users[1].name",
            "users[1].password",
            "databases.shardpool",
            "databases.x.min_pool_size",
            "general.peer_id",
            "peers.0",
            "peers.2",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }
}
