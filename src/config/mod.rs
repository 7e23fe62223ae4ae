//! Configuration: the TOML file's shape as serde types, with a documented default for every field and a
//! `validate()` that reports every problem with its key at once (not just the first). A loaded `Config` is immutable;
//! reloads build a new one and swap it in atomically (see `context`).
//!
//! `config/shardpool.toml` is the annotated example; `docs/configuration.md` is the reference.

mod duration;
pub mod instances;
pub mod sharding;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use duration::{parse_duration, ConfigDuration};
pub use instances::{FileMode, PeerAddr};
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
    /// Other instances cancel requests are forwarded to, by peer id (as text, a TOML key): `"2" = "10.0.0.2:6432"`
    /// or the path of a peer's Unix socket. Read again at every reload.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    /// Users read from `general.auth_file` when the config was loaded (see `crate::auth::auth_file`).
    #[serde(skip)]
    pub auth_file_users: BTreeMap<String, UserConfig>,
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

/// How client sessions are spread over threads (`general.runtime`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeShape {
    /// One tokio multi-thread runtime: any worker runs any session, idle workers steal work.
    #[default]
    WorkStealing,
    /// One single-threaded runtime per core, each accepting on its own `SO_REUSEPORT` listener; a session stays on
    /// the core that accepted it. Pools stay shared; a server moves to the core of the session that borrows it.
    ThreadPerCore,
}

impl RuntimeShape {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeShape::WorkStealing => "work_stealing",
            RuntimeShape::ThreadPerCore => "thread_per_core",
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
    /// Runtime worker threads (with `thread_per_core`: cores, i.e. single-threaded runtimes); 0 means one per CPU
    /// core.
    pub workers: usize,
    /// The runtime's shape: a work-stealing pool of workers, or one single-threaded runtime per core. Measured
    /// against each other in docs/benchmarks.md (issue 15).
    pub runtime: RuntimeShape,
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
    /// A request the server has not finished answering this long after it was sent (counted again from each
    /// ReadyForQuery) disconnects the client and closes the server (0: never). PgBouncer's `query_timeout`: a guard
    /// against frozen servers and broken networks, set above the servers' own `statement_timeout`.
    pub query_timeout: ConfigDuration,
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
    /// Directory of a Unix-domain socket `.s.PGSQL.<port>` (the port of `listen`) that clients may connect to as
    /// well; unset: none. Read at start only.
    pub unix_socket_dir: Option<PathBuf>,
    /// Permission bits of that socket file.
    pub unix_socket_mode: FileMode,
    /// This instance's id among peers sharing a load balancer (1 to 16383), encoded in the cancel keys it hands to
    /// clients so that any peer can tell where a cancel request belongs; 0: none. Read at start only.
    pub peer_id: u16,
    /// A PgBouncer-style `userlist.txt` with more users (`"name" "secret"` per line); a relative path is taken from
    /// the config file's directory. `[[users]]` entries win over its lines for the same name.
    pub auth_file: Option<PathBuf>,
    /// The user that looks up the secrets of users found neither in `[[users]]` nor in `auth_file`, with
    /// `auth_query`, on the server of the database the client asks for (or `auth_dbname`'s). Unset: no lookups.
    pub auth_user: Option<String>,
    /// The lookup: `$1` is the user name; the first two columns are the name and the secret (NULL: no login).
    pub auth_query: String,
    /// Run `auth_query` in this database (a name in `[databases]`) instead of the one the client asks for.
    pub auth_dbname: Option<String>,
    /// How long a secret found by `auth_query` is used before it is looked up again.
    pub auth_cache_ttl: ConfigDuration,
    /// How long "no such user" (or a NULL secret) from `auth_query` is remembered.
    pub auth_cache_negative_ttl: ConfigDuration,
    /// `auth_query` results kept at most (the oldest are dropped beyond this).
    pub auth_cache_size: usize,
    /// TLS to servers, with libpq's `sslmode` meanings (see `backend::tls`); default `prefer`, as libpq and PgBouncer.
    pub server_tls_mode: crate::backend::tls::ServerTlsMode,
    /// PEM file of the CA(s) server certificates must chain to; required by `verify-ca`/`verify-full`, and makes
    /// `prefer`/`require` verify the chain too (as libpq does with a root certificate).
    pub server_tls_ca_file: Option<PathBuf>,
    /// Send a cleartext password to a server that asks for one even over plain TCP or unverified TLS.
    pub server_allow_cleartext: bool,
    /// Answer a server's md5 password request (otherwise the login is refused).
    pub server_allow_md5: bool,
    /// Address of the HTTP listener serving `/metrics` (Prometheus), `/healthz` and `/readyz`; none by default.
    pub http_listen: Option<String>,
    /// How long an HTTP client has to send its whole request head; a slower one gets 408 and is closed.
    pub http_request_timeout: ConfigDuration,
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

/// PgBouncer's default `auth_query`: a role's secret unless it has expired, for roles that may log in.
pub const DEFAULT_AUTH_QUERY: &str =
    "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END \
     FROM pg_authid WHERE rolname = $1 AND rolcanlogin";

impl Default for General {
    fn default() -> Self {
        General {
            listen: "127.0.0.1:6432".into(),
            workers: 0,
            runtime: RuntimeShape::WorkStealing,
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
            query_timeout: ConfigDuration::secs(0),
            client_login_timeout: ConfigDuration::secs(15),
            shutdown_timeout: ConfigDuration::secs(30),
            ignore_startup_parameters: Vec::new(),
            prepared_statements_cache_size: 512,
            session_features: SessionFeatures::Pin,
            replica_poll_interval: ConfigDuration::millis(100),
            replica_ban_time: ConfigDuration::secs(10),
            monitor_user: None,
            unix_socket_dir: None,
            unix_socket_mode: FileMode::default(),
            peer_id: 0,
            auth_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_dbname: None,
            auth_cache_ttl: ConfigDuration::secs(60),
            auth_cache_negative_ttl: ConfigDuration::secs(5),
            auth_cache_size: 10_000,
            server_tls_mode: Default::default(),
            server_tls_ca_file: None,
            server_allow_cleartext: false,
            server_allow_md5: true,
            http_listen: None,
            http_request_timeout: ConfigDuration::secs(5),
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
    /// A user with every setting at its default and no password: what a user found by `auth_query` is, since its
    /// secret lives on the server.
    pub fn named(name: &str) -> UserConfig {
        UserConfig {
            name: name.to_owned(),
            password: None,
            auth: AuthMethod::ScramSha256,
            server_user: None,
            server_password: None,
            pool_size: None,
            pool_mode: None,
            consistency: None,
        }
    }

    /// Whether this user's servers are logged in to with what its clients' logins leave behind (SCRAM keys, an md5
    /// hash) rather than a configured password: there is none to send, and the server role is the user itself.
    pub fn logs_in_by_passthrough(&self) -> bool {
        self.server_password().is_none() && self.server_user() == self.name
    }

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
    /// Overrides `general.server_tls_mode` for this database's servers.
    #[serde(default)]
    pub server_tls_mode: Option<crate::backend::tls::ServerTlsMode>,
    /// Overrides `general.server_tls_ca_file` for this database's servers.
    #[serde(default)]
    pub server_tls_ca_file: Option<PathBuf>,
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
        Config::from_toml_in(&text, path.parent()).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_in(text, None)
    }

    /// Parses and validates a config whose relative paths (`auth_file`) are taken from `base` (the current directory
    /// when `None`), reading the auth file as part of it: a broken auth file is a broken config, reported at start,
    /// by check-config and by a reload alike.
    pub fn from_toml_in(text: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            source: Box::new(e),
        })?;
        let mut problems = config.load_auth_file(base);
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// A user from `[[users]]`, else from `auth_file`.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users
            .iter()
            .find(|u| u.name == name)
            .or_else(|| self.auth_file_users.get(name))
    }

    /// Like [`Config::user`], but a name found in neither is an `auth_query` user when lookups are configured: the
    /// settings a logged-in session of that name runs with.
    pub fn resolve_user(&self, name: &str) -> Option<std::borrow::Cow<'_, UserConfig>> {
        match self.user(name) {
            Some(u) => Some(std::borrow::Cow::Borrowed(u)),
            None if self.general.auth_user.is_some() => {
                Some(std::borrow::Cow::Owned(UserConfig::named(name)))
            }
            None => None,
        }
    }

    /// Reads `general.auth_file` into `auth_file_users`; the problems say which lines are wrong.
    fn load_auth_file(&mut self, base: Option<&Path>) -> Vec<Problem> {
        let Some(path) = &self.general.auth_file else {
            return Vec::new();
        };
        let path = match base {
            Some(b) if path.is_relative() => b.join(path),
            _ => path.clone(),
        };
        let problem = |message: String| Problem {
            key: "general.auth_file".into(),
            message,
        };
        let too_big = std::fs::metadata(&path)
            .is_ok_and(|m| m.len() > crate::auth::auth_file::MAX_AUTH_FILE_BYTES);
        if too_big {
            return vec![problem(format!("{} is larger than 64 MiB", path.display()))];
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return vec![problem(format!("cannot read {}: {e}", path.display()))],
        };
        match crate::auth::auth_file::parse(&text) {
            Ok(entries) => {
                self.auth_file_users = entries
                    .into_iter()
                    .map(|(name, secret)| {
                        let mut u = UserConfig::named(&name);
                        if matches!(
                            crate::auth::StoredSecret::parse(&secret),
                            crate::auth::StoredSecret::Md5(_)
                        ) {
                            u.auth = AuthMethod::Md5;
                        }
                        u.password = Some(secret);
                        (name, u)
                    })
                    .collect();
                Vec::new()
            }
            Err(errors) => errors
                .into_iter()
                .map(|e| problem(format!("{}: {e}", path.display())))
                .collect(),
        }
    }

    /// Where the peer with id `id` takes connections, if `[peers]` names it.
    pub fn peer(&self, id: u16) -> Option<PeerAddr> {
        self.peers
            .iter()
            .find(|(k, _)| instances::parse_peer_id(k) == Ok(id))
            .and_then(|(_, v)| PeerAddr::parse(v).ok())
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

impl Config {
    /// How carefully the proxy logs in to `db`'s servers: its TLS (database override, else [general]) and which
    /// password answers it may give. A CA file that cannot be read (it passed validation, then went away) gives a
    /// target that refuses to connect rather than one that verifies less.
    pub fn server_security(
        &self,
        db: &DatabaseConfig,
    ) -> (
        crate::backend::tls::ServerTls,
        crate::backend::auth_exchange::ServerAuthPolicy,
    ) {
        let (mode, ca) = self.server_tls_settings(db);
        let g = &self.general;
        (
            crate::backend::tls::ServerTls::new_or_unusable(mode, ca),
            crate::backend::auth_exchange::ServerAuthPolicy {
                allow_cleartext: g.server_allow_cleartext,
                allow_md5: g.server_allow_md5,
            },
        )
    }

    /// `db`'s effective TLS mode and CA file.
    pub fn server_tls_settings<'a>(
        &'a self,
        db: &'a DatabaseConfig,
    ) -> (crate::backend::tls::ServerTlsMode, Option<&'a Path>) {
        let g = &self.general;
        (
            db.server_tls_mode.unwrap_or(g.server_tls_mode),
            db.server_tls_ca_file
                .as_deref()
                .or(g.server_tls_ca_file.as_deref()),
        )
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
    fn auth_file_and_auth_query_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("userlist.txt"),
            "\"filed\" \"md52aea419619857e8a27f0f7aa641db0c6\"\n\"a\" \"ignored\"\n",
        )
        .unwrap();
        let toml = r#"
            [general]
            auth_file = "userlist.txt"
            auth_user = "filed"
            [[users]]
            name = "a"
            password = "x"
            [databases.d]
        "#;
        // Relative to the config's directory; [[users]] wins over the file; an md5 hash means md5 logins.
        let c = Config::from_toml_in(toml, Some(dir.path())).unwrap();
        assert_eq!(c.user("a").unwrap().password.as_deref(), Some("x"));
        assert_eq!(c.user("filed").unwrap().auth, AuthMethod::Md5);
        assert!(c.user("filed").unwrap().logs_in_by_passthrough());
        assert_eq!(c.resolve_user("stranger").unwrap().name, "stranger");
        assert_eq!(
            c.general.auth_cache_ttl.0,
            std::time::Duration::from_secs(60)
        );
        assert!(c.general.auth_query.contains("$1"));

        std::fs::write(dir.path().join("userlist.txt"), "\"ok\" \"pw\"\nbroken\n").unwrap();
        let err = Config::from_toml_in(
            "[general]\nauth_file = \"userlist.txt\"\nauth_user = \"ghost\"\nauth_dbname = \"nope\"\nauth_cache_size = 0\n",
            Some(dir.path()),
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "general.auth_file",
            "line 2",
            "general.auth_user",
            "general.auth_dbname",
            "general.auth_cache_size",
        ] {
            assert!(err.contains(expected), "{expected} missing from {err}");
        }
        let err =
            Config::from_toml("[general]\nauth_file = \"/nonexistent/userlist\"\n").unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        // Without auth_user, a name in neither list is nobody.
        assert!(Config::from_toml("").unwrap().resolve_user("x").is_none());
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
