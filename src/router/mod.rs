//! Routing: deciding, once per transaction, which server pool a client's next transaction goes to, and recognising
//! the statements whose effects outlive a transaction. `Route` says primary or replica (with the freshness the
//! client's consistency demands); sharding extends it.

pub mod analysis_cache;
pub mod classify;
pub mod consistency;
pub mod proxy_commands;
pub mod scan;
pub mod session_effects;

/// Where a transaction runs. Produced once; later stages never look at the SQL again for this decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The server that takes writes. `capture`: record the WAL position the transaction reached before the server
    /// goes back (read-your-writes).
    Primary { capture: bool },
    /// A replica meeting the freshness need, else the primary.
    Replica(crate::cluster::balance::ReadNeed),
}
