//! Configuration: the TOML file's shape as serde types, with a documented default for every field and a
//! `validate()` that reports every problem with its key at once (not just the first). A loaded `Config` is immutable;
//! reloads build a new one and swap it in atomically (see `context`).
//!
//! `config/shardpool.toml` is the annotated example; `docs/configuration.md` is the reference.

mod duration;
pub mod sharding;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use duration::{parse_duration, ConfigDuration};
pub use validate::Problem;

/// Name of the virtual database that serves the admin console.
pub const ADMIN_DATABASE: &str = "shardpool";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{}", validate::render(.0))]
    Invalid(Vec<Problem>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub general: General,
    /// TLS for client connections; absent means SSLRequest is answered 'N'.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is lent for one transaction (PgBouncer's `transaction`).
    #[default]
    Transaction,
    /// A server connection belongs to one client until it disconnects.
    Session,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

/// What to do when a transaction-pooled client uses a feature whose state outlives the transaction.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SessionFeatures {
    /// Keep the server connection for this client until it disconnects (correct, costs a server connection).
    #[default]
    Pin,
    /// Refuse the statement with SQLSTATE 0A000 (feature_not_supported).
    Error,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Address clients connect to.
    pub listen: String,
    /// Runtime worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// How long a session with the proxy to itself busy-polls for its server's reply or its client's next message
    /// instead of sleeping (0: never). Trades idle CPU for latency; see `frontend::spin`.
    pub spin_wait: ConfigDuration,
    /// Logged-in client connections at most (admin ones included); more get SQLSTATE 53300. A connection counts
    /// only once it has logged in: sockets still in the handshake or authentication count in `max_pending_logins`.
    pub max_client_conn: usize,
    /// Longest message a client may send, in bytes, as its length field counts it; a longer one ends the
    /// connection with SQLSTATE 08P01 as soon as its header arrives. Bounds what one client's input can hold.
    pub max_message_size: usize,
    /// Connections still in the handshake or authentication at most; a connection accepted beyond this is closed
    /// at once (with a 53300 ErrorResponse written if the socket takes it).
    pub max_pending_logins: usize,
    /// Users allowed into the admin console (database `shardpool`).
    pub admin_users: Vec<String>,
    /// Default pool mode for every pool.
    pub pool_mode: PoolMode,
    /// Default server connections per (database, user) pool.
    pub pool_size: usize,
    /// Server connections each pool keeps open even when idle.
    pub min_pool_size: usize,
    /// How long a client waits in the queue for a server connection before it gets an error (SQLSTATE 53300).
    /// PgBouncer calls it `query_wait_timeout`, which is accepted as another name for it.
    #[serde(alias = "query_wait_timeout")]
    pub checkout_timeout: ConfigDuration,
    /// Timeout for connecting and logging in to a server.
    pub server_connect_timeout: ConfigDuration,
    /// Idle server connections beyond `min_pool_size` are closed after this long (0: never).
    pub server_idle_timeout: ConfigDuration,
    /// Server connections are closed when released after living this long (0: never).
    pub server_lifetime: ConfigDuration,
    /// A server idle for longer than this is checked with `server_check_query` before it is lent (0: always check).
    pub server_check_delay: ConfigDuration,
    /// The health-check query; empty means an empty query (cheapest possible round trip).
    pub server_check_query: String,
    /// Query run when a session-pooled (or pinned) client gives its server back.
    pub server_reset_query: String,
    /// Clients idle outside a transaction for this long are disconnected (0: never).
    pub client_idle_timeout: ConfigDuration,
    /// Clients idle inside a transaction for this long are disconnected and their transaction rolled back (0: never).
    pub idle_transaction_timeout: ConfigDuration,
    /// A client holding a server that neither reads nor sends a byte for this long while the server waits on it
    /// (output queued for the client, COPY FROM STDIN data, the rest of a batch) is disconnected and the server
    /// cancelled and closed (0: never).
    pub client_stall_timeout: ConfigDuration,
    /// A connection that has not finished its handshake and authentication this long after it was accepted is
    /// closed (one deadline for the whole pre-auth phase).
    pub client_login_timeout: ConfigDuration,
    /// On SIGTERM/SIGINT, how long running transactions may take to finish before connections are closed.
    pub shutdown_timeout: ConfigDuration,
    /// Startup parameters accepted and ignored rather than forwarded (PgBouncer's `ignore_startup_parameters`).
    pub ignore_startup_parameters: Vec<String>,
    /// Prepared statements kept per server connection (least recently used are closed beyond this).
    pub prepared_statements_cache_size: usize,
    /// Behaviour for session-only features in transaction mode (LISTEN, session advisory locks, WITH HOLD cursors,
    /// temporary tables, SQL-level PREPARE).
    pub session_features: SessionFeatures,
    /// How often the replication monitor asks every primary and replica for its WAL position.
    pub replica_poll_interval: ConfigDuration,
    /// A replica that failed (connection refused, health check, left recovery) gets no reads for this long.
    pub replica_ban_time: ConfigDuration,
    /// The user whose server credentials the replication monitor logs in with; default: the first user with a
    /// usable server password.
    pub monitor_user: Option<String>,
    /// Groups a multi-shard aggregate (GROUP BY, or aggregates without it) may hold while merging the shards'
    /// partial rows; one more ends the statement with SQLSTATE 54000 (0: no limit). Bounds the one merge that must
    /// hold state: plain and ORDER BY scatters stream.
    pub scatter_max_groups: usize,
    /// Bytes (estimated: keys, values and a per-group overhead) a multi-shard aggregate's merged state may hold;
    /// past it the statement ends with SQLSTATE 54000 (0: no limit).
    pub scatter_max_buffer_bytes: usize,
    /// Named prepared statements one client may hold at once; a Parse of one more name gets SQLSTATE 54000 and
    /// the session goes on (0: no limit).
    pub max_prepared_statements_per_client: usize,
}

impl Default for General {
    fn default() -> Self {
        General {
            listen: "127.0.0.1:6432".into(),
            workers: 0,
            spin_wait: ConfigDuration(std::time::Duration::from_micros(100)),
            max_client_conn: 10_000,
            max_pending_logins: 10_000,
            max_message_size: 256 << 20,
            admin_users: Vec::new(),
            pool_mode: PoolMode::Transaction,
            pool_size: 20,
            min_pool_size: 0,
            checkout_timeout: ConfigDuration::secs(120),
            server_connect_timeout: ConfigDuration::secs(5),
            server_idle_timeout: ConfigDuration::secs(600),
            server_lifetime: ConfigDuration::secs(3600),
            server_check_delay: ConfigDuration::secs(30),
            server_check_query: String::new(),
            server_reset_query: "DISCARD ALL".into(),
            client_idle_timeout: ConfigDuration::secs(0),
            idle_transaction_timeout: ConfigDuration::secs(0),
            client_stall_timeout: ConfigDuration::secs(60),
            client_login_timeout: ConfigDuration::secs(15),
            shutdown_timeout: ConfigDuration::secs(30),
            ignore_startup_parameters: Vec::new(),
            prepared_statements_cache_size: 512,
            session_features: SessionFeatures::Pin,
            replica_poll_interval: ConfigDuration::millis(100),
            replica_ban_time: ConfigDuration::secs(10),
            monitor_user: None,
            scatter_max_groups: 1_000_000,
            scatter_max_buffer_bytes: 256 << 20,
            max_prepared_statements_per_client: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Offer TLS to clients that ask; plain connections are accepted too.
    #[default]
    Prefer,
    /// Refuse clients that do not use TLS (SQLSTATE 28000).
    Require,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    #[serde(default)]
    pub mode: TlsMode,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (RFC 7677), as Postgres does it. The default.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge/response, for old clients.
    #[serde(rename = "md5")]
    Md5,
    /// No password: anyone who can reach the listener may log in as this user.
    #[serde(rename = "trust")]
    Trust,
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Trust => "trust",
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plain password, a SCRAM verifier (`SCRAM-SHA-256$...` as in pg_authid) or an md5 hash (`md5...`).
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub auth: AuthMethod,
    /// Role used on the servers; defaults to `name`.
    #[serde(default)]
    pub server_user: Option<String>,
    /// Password for logging in to servers; defaults to `password` when that is plain text.
    #[serde(default)]
    pub server_password: Option<String>,
    /// Overrides the pool size for this user's pools.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Overrides the pool mode for this user's pools.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// Overrides the databases' default read consistency for this user.
    #[serde(default)]
    pub consistency: Option<crate::router::consistency::Consistency>,
}

impl UserConfig {
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    /// The password to present to servers: explicit, else the client password if it is not a hash.
    pub fn server_password(&self) -> Option<&str> {
        if let Some(p) = &self.server_password {
            return Some(p);
        }
        match self.password.as_deref() {
            Some(p)
                if !(p.starts_with("SCRAM-SHA-256$") || p.len() == 35 && p.starts_with("md5")) =>
            {
                Some(p)
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Host of the primary server.
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database name on the server; defaults to the name clients use.
    #[serde(default)]
    pub server_database: Option<String>,
    #[serde(default)]
    pub pool_size: Option<usize>,
    #[serde(default)]
    pub min_pool_size: Option<usize>,
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// Streaming replicas of the primary above: reads may be sent here.
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    /// Whether the primary takes a share of the reads too (weighted like a replica), not only the fallback ones.
    #[serde(default)]
    pub read_from_primary: bool,
    /// Weight of the primary in read balancing when `read_from_primary` is on.
    #[serde(default = "default_weight")]
    pub primary_weight: u32,
    #[serde(default)]
    pub load_balance: LoadBalance,
    /// Default read consistency for this database; `read_proxy_writes` when it has replicas.
    #[serde(default)]
    pub consistency: Option<crate::router::consistency::Consistency>,
    /// In `read_your_writes`, `read_proxy_writes` and `read_all_writes`, how long a read waits for a replica to replay
    /// the position it needs before it goes to the primary instead.
    #[serde(default = "default_ryw_wait")]
    pub read_your_writes_wait: ConfigDuration,
    /// Functions to treat as writes (sent to the primary) whatever `pg_proc` says.
    #[serde(default)]
    pub volatile_functions: Vec<String>,
    /// Functions `pg_proc` marks volatile that are safe on a replica (e.g. `random`, `clock_timestamp`).
    #[serde(default)]
    pub read_only_functions: Vec<String>,
    /// Makes this a sharded database: its shards replace `host`/`port`/`replicas` (docs/sharding.md).
    #[serde(default)]
    pub sharding: Option<sharding::ShardingConfig>,
}

impl DatabaseConfig {
    /// The server sets of this database, one per shard (a single one when unsharded), each as a plain database
    /// config: pools, the replication monitor and read/write routing work per shard exactly as for an unsharded
    /// database.
    pub fn shard_configs(&self, name: &str) -> Vec<DatabaseConfig> {
        let Some(sh) = &self.sharding else {
            return vec![self.clone()];
        };
        sh.shards
            .iter()
            .map(|s| DatabaseConfig {
                host: s.host.clone(),
                port: s.port,
                server_database: Some(s.database(name).to_owned()),
                replicas: s
                    .replicas
                    .iter()
                    .map(|r| ReplicaConfig {
                        host: r.host.clone(),
                        port: r.port,
                        weight: r.weight,
                    })
                    .collect(),
                sharding: None,
                ..self.clone()
            })
            .collect()
    }
}

/// A streaming replica of a database's primary.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Relative share of reads (0: only when nothing else is eligible).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// How reads are spread over the eligible servers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    /// Smooth weighted round robin: shares follow the weights exactly, with no bursts.
    #[default]
    RoundRobin,
    /// The server with the fewest transactions in flight per unit of weight.
    LeastOutstanding,
}

impl LoadBalance {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalance::RoundRobin => "round_robin",
            LoadBalance::LeastOutstanding => "least_outstanding",
        }
    }
}

fn default_weight() -> u32 {
    1
}

fn default_ryw_wait() -> ConfigDuration {
    ConfigDuration::millis(100)
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    5432
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            source: Box::new(e),
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn is_admin(&self, user: &str) -> bool {
        self.general.admin_users.iter().any(|a| a == user)
    }

    /// Effective pool settings for (database, user): user overrides beat database overrides beat [general].
    pub fn pool_settings(&self, db: &DatabaseConfig, user: &UserConfig) -> PoolSettings {
        let g = &self.general;
        PoolSettings {
            mode: user.pool_mode.or(db.pool_mode).unwrap_or(g.pool_mode),
            size: user.pool_size.or(db.pool_size).unwrap_or(g.pool_size),
            min_size: db.min_pool_size.unwrap_or(g.min_pool_size),
        }
    }
}

/// The per-pool numbers that a reload may change in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: usize,
    pub min_size: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(
            r#"
            [[users]]
            name = "app"
            password = "secret"
            [databases.appdb]
            port = 5433
        "#,
        )
        .unwrap();
        assert_eq!(c.general.pool_size, 20);
        assert_eq!(c.general.pool_mode, PoolMode::Transaction);
        assert_eq!(c.databases["appdb"].host, "127.0.0.1");
        assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
        assert_eq!(c.users[0].server_password(), Some("secret"));
    }

    #[test]
    fn pgbouncer_name_query_wait_timeout_sets_checkout_timeout() {
        let c = Config::from_toml("[general]\nquery_wait_timeout = \"7s\"\n").unwrap();
        assert_eq!(
            c.general.checkout_timeout.0,
            std::time::Duration::from_secs(7)
        );
        let d = General::default();
        assert_eq!(d.checkout_timeout.0, std::time::Duration::from_secs(120));
        assert!(
            d.idle_transaction_timeout.0.is_zero(),
            "off, as in PgBouncer"
        );
        assert_eq!(d.client_stall_timeout.0, std::time::Duration::from_secs(60));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Config::from_toml("[general]\npool_sise = 3\n").unwrap_err();
        assert!(err.to_string().contains("pool_sise"), "{err}");
    }

    #[test]
    fn overrides_cascade() {
        let c = Config::from_toml(
            r#"
            [general]
            pool_size = 7
            [[users]]
            name = "a"
            password = "x"
            pool_mode = "session"
            [databases.d]
            pool_size = 3
        "#,
        )
        .unwrap();
        let s = c.pool_settings(&c.databases["d"], &c.users[0]);
        assert_eq!((s.mode, s.size), (PoolMode::Session, 3));
    }
}
