//! `/metrics`: the proxy's state in Prometheus' text format, rendered at scrape time from the same counters the
//! admin console's SHOW commands read (pool stats, replica state, shard routers, supervised tasks). The only
//! bookkeeping added for it, the checkout wait histogram and the error counts by SQLSTATE class, is relaxed atomic
//! adds; a scrape takes each pool's lock once, as SHOW POOLS does, and nothing on the data path waits for it.
//! docs/operations.md lists every metric.

pub mod errors;
pub mod events;
pub mod exposition;
pub mod histogram;
mod process;
mod render;

pub use render::{render, TOP_VSHARDS};
