//! shardpool: a PostgreSQL scaling proxy.

pub mod pgcluster;
