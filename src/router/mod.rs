//! Routing: deciding, once per transaction, which server pool a client's next transaction goes to, and recognising
//! the statements whose effects outlive a transaction. Today every database has one primary and the route is always
//! that primary; read/write splitting and sharding extend `Route` without changing the session.

pub mod analysis_cache;
pub mod classify;
pub mod consistency;
pub mod proxy_commands;
pub mod scan;
pub mod session_effects;

/// Where a transaction runs. Produced once; later stages never look at the SQL again for this decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Primary,
}
