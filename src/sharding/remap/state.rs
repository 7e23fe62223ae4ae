//! A remap's state in the catalog, where every shardpool instance and every operator sees it: the `remaps` table
//! (one row per remap: what moves, where, which phase it reached), the freeze marker instances hold writes by, and
//! the `instances` table through which each instance acknowledges the catalog epoch it routes by.
//!
//! The workflow is a state machine persisted here rather than in `shardctl`'s memory, so a `shardctl` that dies is
//! replaced by running the same command again: it reads the phase and resumes.

use std::fmt;

use tokio_postgres::{GenericClient, Transaction};

use crate::sharding::catalog::CatalogError;

/// Created by `shardctl init` and, for catalogs initialised before remaps existed, by the first `shardctl remap`.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS shardpool.remaps (
    id bigserial PRIMARY KEY,
    vshards integer[] NOT NULL,
    source integer NOT NULL,
    target integer NOT NULL,
    phase text NOT NULL,
    frozen boolean NOT NULL DEFAULT false,
    fenced integer[] NOT NULL DEFAULT '{}',
    max_pause_ms integer NOT NULL DEFAULT 2000,
    rows_copied bigint NOT NULL DEFAULT 0,
    lag_bytes bigint NOT NULL DEFAULT 0,
    pause_ms bigint NOT NULL DEFAULT 0,
    error text,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- Where the target's WAL was when the moved rows had all arrived (set with the flip): reads of the target must see
-- at least this position, wherever the rows were written before the cutover.
ALTER TABLE shardpool.remaps ADD COLUMN IF NOT EXISTS drained_lsn pg_lsn;
ALTER TABLE shardpool.remaps ADD COLUMN IF NOT EXISTS drained_at timestamptz;
-- The epoch that set the current freeze: each cutover attempt freezes anew, and instances time their holds from it.
ALTER TABLE shardpool.remaps ADD COLUMN IF NOT EXISTS frozen_epoch bigint;
CREATE UNIQUE INDEX IF NOT EXISTS remaps_one_active ON shardpool.remaps ((true)) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS shardpool.instances (
    id text PRIMARY KEY,
    epoch bigint NOT NULL,
    lease_ms integer NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);
"#;

/// The steps of a remap, in order. Each is entered only once the previous one is complete, so resuming means
/// redoing the current one (every step is idempotent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Recorded, nothing created yet.
    Planned,
    /// Publication and subscription exist; the target copies the rows.
    Copying,
    /// Initial copy done; the target applies the source's changes.
    CatchingUp,
    /// Writes to the moving vshards are held, the source is fenced, the placement flips.
    CuttingOver,
    /// The placement points at the target; the rows on the source are still there.
    Switched,
    /// Rows compared equal.
    Verified,
    /// Subscription, publication and slot gone, moved rows deleted from the source. Finished.
    Done,
    /// Undone: no replication objects left, placement as before. Finished.
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Copying => "copying",
            Phase::CatchingUp => "catching_up",
            Phase::CuttingOver => "cutting_over",
            Phase::Switched => "switched",
            Phase::Verified => "verified",
            Phase::Done => "done",
            Phase::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        [
            Phase::Planned,
            Phase::Copying,
            Phase::CatchingUp,
            Phase::CuttingOver,
            Phase::Switched,
            Phase::Verified,
            Phase::Done,
            Phase::Aborted,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }

    pub fn finished(self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `shardpool.remaps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemapRow {
    pub id: i64,
    pub vshards: Vec<u32>,
    pub source: u16,
    pub target: u16,
    pub phase: Phase,
    /// Instances hold new writes to `vshards` while set.
    pub frozen: bool,
    /// Vshards the fence on `source` still rejects (set at the flip; narrowed when some move back).
    pub fenced: Vec<u32>,
    pub max_pause_ms: u32,
    pub rows_copied: i64,
    pub lag_bytes: i64,
    pub pause_ms: i64,
    pub error: Option<String>,
    /// The target's WAL position once every change to the moved rows had been applied there (set at the flip), and
    /// when (Unix ms): what a replica of the target must have replayed to serve reads of the moved vshards.
    pub drained_lsn: Option<u64>,
    pub drained_at_ms: Option<i64>,
    /// The catalog epoch that set the current freeze (one per cutover attempt).
    pub frozen_epoch: Option<i64>,
}

impl RemapRow {
    /// Deterministic name of the publication, subscription and slot: a crashed run finds them again by it.
    pub fn replication_name(&self) -> String {
        replication_name(self.id)
    }
}

pub fn replication_name(id: i64) -> String {
    format!("shardpool_remap_{id}")
}

/// The drained position is read through `to_jsonb` so that instances keep loading catalogs whose `remaps` table
/// predates the column (it is added by the next `shardctl remap`).
const COLUMNS: &str =
    "id, vshards, source, target, phase, frozen, max_pause_ms, rows_copied, lag_bytes, pause_ms, \
     error, fenced, to_jsonb(remaps) ->> 'drained_lsn', \
     (extract(epoch FROM (to_jsonb(remaps) ->> 'drained_at')::timestamptz) * 1000)::int8, \
     (to_jsonb(remaps) ->> 'frozen_epoch')::int8";

fn row_of(row: &tokio_postgres::Row) -> Result<RemapRow, CatalogError> {
    let phase: String = row.try_get(4)?;
    let vshards: Vec<i32> = row.try_get(1)?;
    Ok(RemapRow {
        id: row.try_get(0)?,
        vshards: vshards.into_iter().map(|v| v.max(0) as u32).collect(),
        source: u16::try_from(row.try_get::<_, i32>(2)?).unwrap_or(u16::MAX),
        target: u16::try_from(row.try_get::<_, i32>(3)?).unwrap_or(u16::MAX),
        phase: Phase::parse(&phase)
            .ok_or_else(|| CatalogError::Corrupt(format!("remap phase {phase:?}")))?,
        frozen: row.try_get(5)?,
        max_pause_ms: row.try_get::<_, i32>(6)?.max(0) as u32,
        rows_copied: row.try_get(7)?,
        lag_bytes: row.try_get(8)?,
        pause_ms: row.try_get(9)?,
        error: row.try_get(10)?,
        fenced: row
            .try_get::<_, Vec<i32>>(11)?
            .into_iter()
            .map(|v| v.max(0) as u32)
            .collect(),
        drained_lsn: row
            .try_get::<_, Option<String>>(12)?
            .as_deref()
            .and_then(crate::cluster::lsn::parse),
        drained_at_ms: row.try_get(13)?,
        frozen_epoch: row.try_get(14)?,
    })
}

/// Whether the catalog has the remap tables (catalogs initialised before remaps existed do not until the first
/// `shardctl remap`).
pub async fn exists(client: &impl GenericClient) -> Result<bool, CatalogError> {
    Ok(client
        .query_one(
            "SELECT to_regclass('shardpool.remaps') IS NOT NULL AND to_regclass('shardpool.instances') IS NOT NULL",
            &[],
        )
        .await?
        .try_get(0)?)
}

/// The unfinished remap plus the last few finished ones, newest first: what `SHOW REMAPS` lists.
pub async fn recent(client: &impl GenericClient) -> Result<Vec<RemapRow>, CatalogError> {
    if !exists(client).await? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM shardpool.remaps ORDER BY (finished_at IS NULL) DESC, id DESC LIMIT 10"
    );
    client.query(&sql, &[]).await?.iter().map(row_of).collect()
}

/// The remap not finished yet, if any (there is at most one).
pub async fn active(client: &impl GenericClient) -> Result<Option<RemapRow>, CatalogError> {
    if !exists(client).await? {
        return Ok(None);
    }
    let sql = format!("SELECT {COLUMNS} FROM shardpool.remaps WHERE finished_at IS NULL");
    client
        .query_opt(&sql, &[])
        .await?
        .as_ref()
        .map(row_of)
        .transpose()
}

pub async fn get(client: &impl GenericClient, id: i64) -> Result<Option<RemapRow>, CatalogError> {
    let sql = format!("SELECT {COLUMNS} FROM shardpool.remaps WHERE id = $1");
    client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(row_of)
        .transpose()
}

/// Records a new remap in phase `planned`.
pub async fn create(
    client: &impl GenericClient,
    vshards: &[u32],
    source: u16,
    target: u16,
    max_pause_ms: u32,
) -> Result<RemapRow, CatalogError> {
    let v: Vec<i32> = vshards.iter().map(|&v| v as i32).collect();
    let sql = format!(
        "INSERT INTO shardpool.remaps (vshards, source, target, phase, max_pause_ms) VALUES ($1, $2, $3, 'planned', $4) \
         RETURNING {COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &v,
                &i32::from(source),
                &i32::from(target),
                &(max_pause_ms.min(i32::MAX as u32) as i32),
            ],
        )
        .await?;
    row_of(&row)
}

/// Moves a remap to `phase` without telling instances (progress they need not act on).
pub async fn set_phase(
    client: &impl GenericClient,
    id: i64,
    phase: Phase,
) -> Result<(), CatalogError> {
    let finished = phase.finished();
    client
        .execute(
            "UPDATE shardpool.remaps SET phase = $2, updated_at = now(), \
             finished_at = CASE WHEN $3 THEN now() END WHERE id = $1",
            &[&id, &phase.as_str(), &finished],
        )
        .await?;
    Ok(())
}

/// Progress numbers shown by `status` and `SHOW REMAPS`.
pub async fn set_progress(
    client: &impl GenericClient,
    id: i64,
    rows_copied: Option<i64>,
    lag_bytes: Option<i64>,
    pause_ms: Option<i64>,
) -> Result<(), CatalogError> {
    client
        .execute(
            "UPDATE shardpool.remaps SET rows_copied = coalesce($2, rows_copied), \
             lag_bytes = coalesce($3, lag_bytes), pause_ms = coalesce($4, pause_ms), updated_at = now() \
             WHERE id = $1",
            &[&id, &rows_copied, &lag_bytes, &pause_ms],
        )
        .await?;
    Ok(())
}

pub async fn set_error(
    client: &impl GenericClient,
    id: i64,
    error: Option<&str>,
) -> Result<(), CatalogError> {
    client
        .execute(
            "UPDATE shardpool.remaps SET error = $2, updated_at = now() WHERE id = $1",
            &[&id, &error],
        )
        .await?;
    Ok(())
}

/// Sets the freeze marker (and phase) inside the catalog change of `epoch`, so instances see it with that epoch; a
/// new freeze records the epoch, which tells this attempt's freeze from an earlier one of the same remap.
pub async fn set_frozen(
    tx: &Transaction<'_>,
    id: i64,
    frozen: bool,
    phase: Phase,
    epoch: i64,
) -> Result<(), CatalogError> {
    tx.execute(
        "UPDATE shardpool.remaps SET frozen = $2, phase = $3, updated_at = now(), \
         frozen_epoch = CASE WHEN $2 AND NOT frozen THEN $4 ELSE frozen_epoch END WHERE id = $1",
        &[&id, &frozen, &phase.as_str(), &epoch],
    )
    .await?;
    Ok(())
}

/// What an instance must know about remaps when it loads the catalog: the vshards whose writes it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Freeze {
    /// The remap that froze them (0: none).
    pub remap: i64,
    /// The epoch that set this freeze: a later cutover attempt of the same remap is a new freeze.
    pub since: i64,
    /// Sorted.
    pub vshards: Vec<u32>,
    /// How long the remap may hold writes; an instance stops holding a little after this, whatever it hears.
    pub max_pause_ms: u32,
}

impl Freeze {
    pub fn contains(&self, vshard: u32) -> bool {
        self.vshards.binary_search(&vshard).is_ok()
    }
}

/// Reads the freeze marker and the recent remaps inside the catalog's load snapshot.
pub async fn load(tx: &Transaction<'_>) -> Result<(Freeze, Vec<RemapRow>), CatalogError> {
    let remaps = recent(tx).await?;
    let freeze = remaps
        .iter()
        .find(|r| r.frozen && !r.phase.finished())
        .map(|r| {
            let mut vshards = r.vshards.clone();
            vshards.sort_unstable();
            vshards.dedup();
            Freeze {
                remap: r.id,
                since: r.frozen_epoch.unwrap_or(0),
                vshards,
                max_pause_ms: r.max_pause_ms,
            }
        })
        .unwrap_or_default();
    Ok((freeze, remaps))
}

/// An instance's acknowledgement: it routes by `epoch` (and will renew this within `lease_ms`). Errors are the
/// caller's to log; a catalog without the table (older than remaps) is not an error.
pub async fn heartbeat(
    client: &impl GenericClient,
    instance: &str,
    epoch: i64,
    lease_ms: u32,
) -> Result<(), CatalogError> {
    let lease = lease_ms.min(i32::MAX as u32) as i32;
    match client
        .execute(
            "INSERT INTO shardpool.instances (id, epoch, lease_ms, seen_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, lease_ms = excluded.lease_ms, seen_at = now()",
            &[&instance, &epoch, &lease],
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Forgets instances whose lease expired ten times over (stopped for good); run once per cutover.
pub async fn forget_dead(client: &impl GenericClient) -> Result<u64, CatalogError> {
    Ok(client
        .execute(
            "DELETE FROM shardpool.instances WHERE seen_at + make_interval(secs => lease_ms / 1000.0) * 10 < now()",
            &[],
        )
        .await?)
}

/// Live instances (lease not expired) still routing by an epoch older than `epoch`.
pub async fn laggards(
    client: &impl GenericClient,
    epoch: i64,
) -> Result<Vec<String>, CatalogError> {
    let rows = client
        .query(
            "SELECT id FROM shardpool.instances WHERE epoch < $1 \
             AND seen_at + make_interval(secs => lease_ms / 1000.0) > now() ORDER BY id",
            &[&epoch],
        )
        .await?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(CatalogError::from))
        .collect()
}

/// Finished remaps that left a fence on `shard` covering any of `vshards`.
pub async fn fences_on(
    client: &impl GenericClient,
    shard: u16,
    vshards: &[u32],
) -> Result<Vec<RemapRow>, CatalogError> {
    let v: Vec<i32> = vshards.iter().map(|&v| v as i32).collect();
    let sql = format!(
        "SELECT {COLUMNS} FROM shardpool.remaps WHERE source = $1 AND fenced && $2 AND phase IN ('switched', 'verified', 'done') \
         ORDER BY id"
    );
    client
        .query(&sql, &[&i32::from(shard), &v])
        .await?
        .iter()
        .map(row_of)
        .collect()
}

/// How long after a flip the drained position stays a floor for reads of its target. Replicas pass it within
/// moments; the limit keeps a shard whose server was replaced since (a restored server starts a new WAL history, with
/// smaller positions) from sending all its reads to its primary for good.
pub const READ_FLOOR_MS: i64 = 3_600_000;

/// The WAL position of `shard` every replica must have replayed to serve a read there: the highest drained position
/// of the recent remaps that moved vshards onto it (0: none). Positions taken on the source before the cutover mean
/// nothing on the target, so a session's own causal position cannot tell whether a target replica has the rows it
/// wrote before the flip; this floor can, for every session, since every such row was on the target at that point.
pub fn read_floor(remaps: &[RemapRow], shard: u16, now_ms: i64) -> u64 {
    remaps
        .iter()
        .filter(|r| r.target == shard)
        .filter_map(|r| Some((r.drained_lsn?, r.drained_at_ms?)))
        .filter(|&(_, at)| now_ms.saturating_sub(at) < READ_FLOOR_MS)
        .map(|(lsn, _)| lsn)
        .max()
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, the clock `read_floor` compares the catalog's timestamps with.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
