//! The server side of the proxy: a logged-in connection to a Postgres server with the state pooling must track
//! (parameters applied on a client's behalf, prepared statements, transaction status), the login itself, and the
//! pools that lend these connections to client sessions.

pub mod auth_exchange;
pub mod connect;
pub mod pool;
pub mod server;
pub mod statements;
pub mod tls;
pub mod transport;

pub use connect::{ConnectError, ServerTarget};
pub use pool::{Pool, PoolError};
pub use server::ServerConn;
pub use transport::ServerAddr;
