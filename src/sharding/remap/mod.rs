//! Online remap: moving virtual shards from one physical shard to another under live traffic, with Postgres' own
//! logical replication carrying the rows. See docs/remap.md for the whole story.
//!
//! One room per step of the workflow: `plan` (what moves, the SQL that selects its rows), `preflight` (refusals
//! before anything is created), `replicate` (publication, subscription, waiting for the copy and the catch-up),
//! `cutover` (hold writes, fence the source, flip the placement), `verify` and `cleanup`; `run` strings them
//! together, persisting the phase in the catalog (`state`) after each, so that running it again resumes.

pub mod cutover;
pub mod display;
pub mod filter;
pub mod plan;
pub mod preflight;
pub mod rebalance;
pub mod replicate;
pub mod run;
pub mod state;
pub mod verify;

pub use run::{Progress, ProgressSink, RemapError, RemapOptions, Remapper, ShardAccess};
