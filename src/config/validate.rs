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
            let size = db.pool_size.unwrap_or(g.pool_size);
            if db.min_pool_size.unwrap_or(g.min_pool_size) > size {
                problem(
                    key("min_pool_size"),
                    format!("must not exceed the pool size ({size})"),
                );
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

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

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
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }
}
