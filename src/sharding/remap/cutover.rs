//! The cutover: the only step during which writes to the moving vshards pause.
//!
//! 1. **Freeze.** The remap's row in the catalog gets `frozen = true` (a catalog change: epoch bump + NOTIFY); every
//!    instance then holds new writes to those vshards. Wait until every live instance acknowledged that epoch.
//! 2. **Fence.** On the source, a trigger per sharded table rejects writes to rows of the moving vshards, whoever sends
//!    them (SQLSTATE 40001). Creating it locks each table in SHARE ROW EXCLUSIVE mode, which waits for the
//!    transactions that were writing it to end, so after the fence commits nothing more is written to the moving rows.
//! 3. **Drain.** Insert a marker row on the source after the fence and wait until the target has applied it: changes
//!    are applied in commit order, so the target then has every change to the moving rows. The target's WAL position
//!    at that point is recorded with the flip: reads of the target need a replica that replayed it.
//! 4. **Flip.** The placement of the moving vshards points at the target (catalog change), still frozen; wait until
//!    every live instance routes by it (an instance whose lease expires meanwhile is not waited for).
//! 5. **Release.** `frozen = false` (catalog change): instances send the held writes, to the target.
//!
//! Steps 1 to 4 must fit in `max_pause`. Before the flip, exceeding it disarms the fence and lifts the freeze; after
//! the flip, it undoes the flip first (placement back to the source, still frozen), then does the same. Either way
//! the held writes resume on the source and the remap stays in catch-up, ready for another try. Nothing was written
//! to the target in between by the writes that are held: every instance that saw the flip was still holding them.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::plan::{Plan, TableMove};
use super::replicate::{self, ReplicateError};
use super::state::{self, Phase};
use crate::sharding::catalog::{self, CatalogError};
use crate::sharding::hash::quote_ident;

#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Replicate(#[from] ReplicateError),
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error(
        "the cutover would have paused writes longer than --max-pause ({max:?}) while {step}; writes resumed on the \
         source. Run the command again to retry (at a quieter moment, or with a larger --max-pause)"
    )]
    PauseExceeded { max: Duration, step: String },
}

/// How every fence refusal's message begins: sessions recognise a refusal they may route again by it
/// (`frontend/session/fence_retry.rs`).
pub const FENCE_MESSAGE_PREFIX: &str = "shardpool: this row of ";

/// Schema holding the fence functions on each shard.
const FENCE_SCHEMA: &str = "shardpool_fence";

/// Function of the fence of remap `id` on `table`: named after both, so several fences coexist and are found again.
fn fence_function(id: i64, table: &str) -> String {
    let clean: String = table
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!(
        "{FENCE_SCHEMA}.{}",
        quote_ident(&format!("remap_{id}_{clean}"))
    )
}

pub fn fence_trigger(id: i64) -> String {
    format!("shardpool_fence_{id}")
}

/// The fence functions of remap `id` for `tables` (whose filters select the fenced rows); `target` names where the
/// rows went, for the error message. Replacing a function changes the fence without locking its table.
pub fn fence_functions_sql(tables: &[TableMove], id: i64, target: u16) -> String {
    let mut sql = format!("CREATE SCHEMA IF NOT EXISTS {FENCE_SCHEMA};\n");
    for t in tables {
        sql.push_str(&format!(
            "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $shardpool_fence$\n\
             BEGIN\n\
               IF current_setting('shardpool.fence_bypass', true) IS DISTINCT FROM 'on' AND (\n\
                  (TG_OP <> 'INSERT' AND ({old})) OR (TG_OP <> 'DELETE' AND ({new}))) THEN\n\
                 RAISE EXCEPTION USING ERRCODE = '40001',\n\
                   MESSAGE = format('shardpool: this row of %s belongs to a vshard that remap {id} moved to shard {target}; it can no longer be written on this shard', TG_TABLE_NAME),\n\
                   HINT = 'Write through shardpool, which routes the row to its current shard (retry the transaction).';\n\
               END IF;\n\
               IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;\n\
               RETURN NEW;\n\
             END\n\
             $shardpool_fence$;\n",
            f = fence_function(id, &t.name),
            old = t.old_filter,
            new = t.new_filter,
        ));
    }
    sql
}

/// Locks every table whose rows move (waiting for its writers to finish) and attaches the fence trigger.
fn fence_triggers_sql(tables: &[TableMove], id: i64) -> String {
    let mut sql = String::new();
    for t in tables.iter().filter(|t| t.filter != "false") {
        sql.push_str(&format!(
            "LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE;\n\
             CREATE OR REPLACE TRIGGER {trigger} BEFORE INSERT OR UPDATE OR DELETE ON {name} \
             FOR EACH ROW EXECUTE FUNCTION {f}();\n",
            name = t.sql_name,
            trigger = fence_trigger(id),
            f = fence_function(id, &t.name),
        ));
    }
    sql
}

/// One attempt's wait for the table locks: well under Postgres' default `deadlock_timeout` (1 s), so that when the
/// fence and a client transaction lock the moving tables in opposite orders, the fence gives up and tries again
/// before the deadlock detector can pick the client's transaction as its victim.
const FENCE_LOCK_ATTEMPT: Duration = Duration::from_millis(100);

/// Installs the fence of `plan` on `source` in one transaction, trying again (each try waiting at most
/// `FENCE_LOCK_ATTEMPT` for each table lock) until `lock_wait` has passed. The last refusal is returned.
pub async fn install_fence(
    source: &mut Client,
    plan: &Plan,
    id: i64,
    lock_wait: Duration,
) -> Result<(), tokio_postgres::Error> {
    let deadline = tokio::time::Instant::now() + lock_wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match install_fence_once(source, plan, id, left.min(FENCE_LOCK_ATTEMPT)).await {
            Err(e)
                if matches!(
                    e.code(),
                    Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                        | Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
                ) && tokio::time::Instant::now() < deadline => {}
            other => return other,
        }
    }
}

async fn install_fence_once(
    source: &mut Client,
    plan: &Plan,
    id: i64,
    lock_wait: Duration,
) -> Result<(), tokio_postgres::Error> {
    let tx = source.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {}",
        lock_wait.as_millis().max(1)
    ))
    .await?;
    tx.batch_execute(&fence_functions_sql(&plan.tables, id, plan.target))
        .await?;
    tx.batch_execute(&fence_triggers_sql(&plan.tables, id))
        .await?;
    tx.commit().await
}

/// Makes the fence of remap `id` let everything through (its triggers stay, cheap and harmless). No table lock.
pub async fn disarm_fence(
    server: &Client,
    plan: &Plan,
    id: i64,
) -> Result<(), tokio_postgres::Error> {
    let open: Vec<TableMove> = plan
        .tables
        .iter()
        .map(|t| TableMove {
            old_filter: "false".into(),
            new_filter: "false".into(),
            ..t.clone()
        })
        .collect();
    server
        .batch_execute(&fence_functions_sql(&open, id, plan.target))
        .await
}

/// Waits until no live instance routes by an epoch older than `epoch`; `None` when `deadline` passed first.
pub async fn wait_acknowledged(
    catalog: &Client,
    epoch: i64,
    deadline: Instant,
) -> Result<Option<()>, CatalogError> {
    loop {
        if state::laggards(catalog, epoch).await?.is_empty() {
            return Ok(Some(()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sets or lifts the freeze in one catalog change; returns its epoch.
pub async fn set_frozen(
    catalog: &mut Client,
    id: i64,
    frozen: bool,
    phase: Phase,
) -> Result<i64, CatalogError> {
    let tx = catalog.transaction().await?;
    let (epoch, _) = catalog::begin_change(&tx).await?;
    state::set_frozen(&tx, id, frozen, phase, epoch).await?;
    catalog::notify(&tx, epoch).await?;
    tx.commit().await?;
    Ok(epoch)
}

/// Points the moving vshards at the target, records the fence and the target's drained position, in one catalog change
/// (still frozen).
async fn flip(
    catalog: &mut Client,
    plan: &Plan,
    id: i64,
    drained: u64,
) -> Result<i64, CatalogError> {
    let v: Vec<i32> = plan.vshards.iter().map(|&v| v as i32).collect();
    let tx = catalog.transaction().await?;
    let (epoch, _) = catalog::begin_change(&tx).await?;
    tx.execute(
        "UPDATE shardpool.placement SET shard = $2 WHERE vshard = ANY ($1)",
        &[&v, &i32::from(plan.target)],
    )
    .await?;
    tx.execute(
        "UPDATE shardpool.remaps SET phase = 'switched', fenced = $2, drained_lsn = $3::text::pg_lsn, \
         drained_at = now(), updated_at = now() WHERE id = $1",
        &[&id, &v, &crate::cluster::lsn::format(drained)],
    )
    .await?;
    catalog::notify(&tx, epoch).await?;
    tx.commit().await?;
    Ok(epoch)
}

/// Undoes `flip`: the vshards back on the source, still frozen, in the phase a run that dies next resumes from
/// (`cutting_over`: it disarms the fence and lifts the freeze).
async fn unflip(catalog: &mut Client, plan: &Plan, id: i64) -> Result<i64, CatalogError> {
    let v: Vec<i32> = plan.vshards.iter().map(|&v| v as i32).collect();
    let tx = catalog.transaction().await?;
    let (epoch, _) = catalog::begin_change(&tx).await?;
    tx.execute(
        "UPDATE shardpool.placement SET shard = $2 WHERE vshard = ANY ($1)",
        &[&v, &i32::from(plan.source)],
    )
    .await?;
    tx.execute(
        "UPDATE shardpool.remaps SET phase = 'cutting_over', fenced = '{}', drained_lsn = NULL, drained_at = NULL, \
         updated_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    catalog::notify(&tx, epoch).await?;
    tx.commit().await?;
    Ok(epoch)
}

/// The target's position once the marker is applied: the apply worker's commits are in its WAL by then, though
/// perhaps not flushed yet (subscriptions commit asynchronously), so the insert position is the one sure to cover
/// them; replicas reach it as soon as the WAL writer flushes.
async fn drained_position(target: &Client) -> Result<u64, tokio_postgres::Error> {
    let row = target
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?;
    let text: String = row.try_get(0)?;
    Ok(crate::cluster::lsn::parse(&text).unwrap_or(0))
}

/// What the cutover measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// From the freeze to the release: the longest any held write could have waited.
    pub pause: Duration,
    /// The epoch that moved the vshards.
    pub epoch: i64,
    /// How long each step took, for the log.
    pub steps: Vec<(&'static str, Duration)>,
}

/// Everything the cutover needs.
pub struct Cutover<'a> {
    pub catalog: &'a mut Client,
    pub source: &'a mut Client,
    pub target: &'a Client,
    pub plan: &'a Plan,
    pub id: i64,
    /// Bounds the whole pause, from the freeze to the release.
    pub max_pause: Duration,
    /// Opened at the drained point, before the flip, as a REPEATABLE READ snapshot of the target: verification then
    /// compares exactly what was copied, whatever is written after the release.
    pub snapshot: Option<&'a Client>,
    /// Fences of earlier remaps on the target to narrow, because some of their vshards come back.
    pub refence: Vec<Refence>,
    /// Told each step as it completes (`cutover: fence`...): progress for the operator.
    pub on_step: &'a mut (dyn FnMut(&str) + Send + Sync),
}

/// Narrows earlier remaps' fences on the target to the vshards that stay away from it, so the vshards coming back
/// can be written there; done while their writes are still held. Idempotent, so a run resumed after dying between
/// the flip and the release does it again (`run.rs`, phase `switched`).
pub async fn narrow_fences(
    target: &Client,
    catalog: &Client,
    refence: &[Refence],
) -> Result<(), tokio_postgres::Error> {
    for r in refence {
        target
            .batch_execute(&fence_functions_sql(&r.tables, r.id, r.target))
            .await?;
        let keep: Vec<i32> = r.keep.iter().map(|&v| v as i32).collect();
        catalog
            .execute(
                "UPDATE shardpool.remaps SET fenced = $2 WHERE id = $1",
                &[&r.id, &keep],
            )
            .await?;
    }
    Ok(())
}

/// An earlier remap's fence on this remap's target, narrowed to the vshards that stay away.
pub struct Refence {
    pub id: i64,
    /// Where that remap sent its vshards (for the fence's message).
    pub target: u16,
    /// Filters selecting `keep`.
    pub tables: Vec<TableMove>,
    pub keep: Vec<u32>,
}

impl Cutover<'_> {
    fn exceeded(&self, step: &str) -> CutoverError {
        CutoverError::PauseExceeded {
            max: self.max_pause,
            step: step.to_string(),
        }
    }

    fn step(
        &mut self,
        name: &'static str,
        mark: &mut Instant,
        steps: &mut Vec<(&'static str, Duration)>,
    ) {
        steps.push((name, mark.elapsed()));
        *mark = Instant::now();
        (self.on_step)(&format!("cutover: {name}"));
    }

    pub async fn run(mut self) -> Result<Outcome, CutoverError> {
        state::forget_dead(&*self.catalog).await?;
        let started = Instant::now();
        let deadline = started + self.max_pause;
        let epoch = set_frozen(self.catalog, self.id, true, Phase::CuttingOver).await?;
        let mut steps = Vec::new();
        let mut mark = started;
        self.step("freeze", &mut mark, &mut steps);
        let drained = match self.drain(epoch, deadline, &mut mark, &mut steps).await {
            Ok(drained) => drained,
            Err(e) => {
                // Nothing flipped: open the source again, then let the held writes go there.
                self.end_snapshot().await;
                let _ = disarm_fence(self.source, self.plan, self.id).await;
                set_frozen(self.catalog, self.id, false, Phase::CatchingUp).await?;
                return Err(e);
            }
        };
        let epoch = match flip(self.catalog, self.plan, self.id, drained).await {
            Ok(epoch) => epoch,
            Err(e) => {
                // The commit may have happened with only its answer lost: undo only what certainly did not flip.
                let flipped = state::get(&*self.catalog, self.id)
                    .await?
                    .is_some_and(|r| r.phase != Phase::CuttingOver);
                if !flipped {
                    self.end_snapshot().await;
                    let _ = disarm_fence(self.source, self.plan, self.id).await;
                    set_frozen(self.catalog, self.id, false, Phase::CatchingUp).await?;
                }
                return Err(e.into());
            }
        };
        self.step("flip", &mut mark, &mut steps);
        if wait_acknowledged(self.catalog, epoch, deadline)
            .await?
            .is_none()
        {
            // A live instance (its lease runs past the pause) still routes by the old placement, so the held writes
            // cannot go to the target yet: go back to the source rather than pause longer.
            let late = state::laggards(self.catalog, epoch).await?;
            self.end_snapshot().await;
            unflip(self.catalog, self.plan, self.id).await?;
            disarm_fence(self.source, self.plan, self.id).await?;
            set_frozen(self.catalog, self.id, false, Phase::CatchingUp).await?;
            (self.on_step)("cutover: flip undone, writes resume on the source");
            return Err(self.exceeded(&format!(
                "waiting for instances {late:?} to acknowledge the new placement (the flip was undone)"
            )));
        }
        self.step("flip acknowledged", &mut mark, &mut steps);
        // Writes are still held: nobody writes the returning vshards on the target before its old fences let them.
        narrow_fences(self.target, self.catalog, &self.refence).await?;
        let release = set_frozen(self.catalog, self.id, false, Phase::Switched).await?;
        self.step("release", &mut mark, &mut steps);
        let pause = started.elapsed();
        tracing::info!(epoch, release, ?pause, "cutover done");
        Ok(Outcome {
            pause,
            epoch,
            steps,
        })
    }

    /// Closes the verification snapshot of an attempt that gave up: the next attempt opens its own.
    async fn end_snapshot(&self) {
        if let Some(s) = self.snapshot {
            let _ = s.batch_execute("ROLLBACK").await;
        }
    }

    /// Steps 1 to 3, inside the deadline; returns the target's drained position.
    async fn drain(
        &mut self,
        frozen: i64,
        deadline: Instant,
        mark: &mut Instant,
        steps: &mut Vec<(&'static str, Duration)>,
    ) -> Result<u64, CutoverError> {
        if wait_acknowledged(self.catalog, frozen, deadline)
            .await?
            .is_none()
        {
            let late = state::laggards(self.catalog, frozen).await?;
            return Err(self.exceeded(&format!("waiting for instances {late:?} to hold writes")));
        }
        self.step("freeze acknowledged", mark, steps);
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = install_fence(self.source, self.plan, self.id, left).await {
            if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                return Err(
                    self.exceeded("fencing the source (a transaction kept writing a moving table)")
                );
            }
            return Err(e.into());
        }
        self.step("fence", mark, steps);
        let token = replicate::send_marker(self.source, self.id).await?;
        while !replicate::marker_applied(self.target, self.id, token).await? {
            if Instant::now() >= deadline {
                return Err(self.exceeded("the target applied the last changes"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let drained = drained_position(self.target).await?;
        if let Some(s) = self.snapshot {
            s.batch_execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1 FROM pg_class LIMIT 1",
            )
            .await?;
        }
        self.step("drain", mark, steps);
        Ok(drained)
    }
}
