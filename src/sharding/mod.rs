//! Sharding: key -> virtual shard -> physical shard. The virtual-shard space is fixed when a sharded database is
//! initialised, so growing means moving whole virtual shards between physical shards, never rehashing every row.
//! The hash functions are Postgres' own, so a shard can compute a row's virtual shard in SQL (publication row
//! filters for online moves, check constraints refusing rows it does not own).

pub mod catalog;
pub mod columns;
pub mod copy;
pub mod follow;
pub mod hash;
pub mod key;
pub mod keys;
pub mod recorder;
pub mod remap;
pub mod router;
pub mod scatter;
pub mod schema;
