//! shardpool: a PostgreSQL scaling proxy. Clients connect to it as if it were Postgres; it pools server connections
//! per transaction, and (in later layers) splits reads from writes and routes across shards.
//!
//! Data path: `frontend::listener` accepts -> `frontend::handshake` and `frontend::login` -> `frontend::session`
//! borrows a `backend::ServerConn` from a `backend::Pool` per transaction and pumps bytes both ways, tracking
//! the replies it is owed in `frontend::relay`. `admin` serves the `shardpool` console database.

pub mod admin;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod context;
pub mod cores;
pub mod error;
pub mod frontend;
pub mod http;
pub mod metrics;
pub mod pgcluster;
pub mod protocol;
pub mod router;
pub mod sharding;
pub mod sqlparse;
pub mod supervisor;
