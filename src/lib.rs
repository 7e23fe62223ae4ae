//! shardpool: a PostgreSQL scaling proxy.
