//! The remap workflow: plan, preflight, copy, catch up, cut over, verify, clean up, each step persisted in the
//! catalog before the next begins. Running `start` again with the same vshards and target resumes the remap in
//! whatever phase it stopped; `abort` undoes it from any phase before the flip.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::cutover::{self, Cutover, CutoverError, Refence};
use super::plan::{format_vshards, Plan, PlanError};
use super::preflight::{self, Report};
use super::replicate::{self, ReplicateError};
use super::state::{self, Phase, RemapRow};
use super::verify;
use crate::config::sharding::ShardingConfig;
use crate::sharding::catalog::{self, Catalog, CatalogError};

#[derive(Debug, thiserror::Error)]
pub enum RemapError {
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Replicate(#[from] ReplicateError),
    #[error("{0}")]
    Cutover(#[from] CutoverError),
    #[error("shard {shard}: {source}")]
    Shard {
        shard: u16,
        source: tokio_postgres::Error,
    },
    #[error("preflight refused the remap; nothing was changed:\n{}", .0.render())]
    Refused(Report),
    #[error(
        "remap {id} (vshards {vshards} from shard {from} to shard {target}) is in progress, phase {phase}: finish \
         it (run the same command again) or abort it (`shardctl remap abort`) first"
    )]
    Busy {
        id: i64,
        vshards: String,
        from: u16,
        target: u16,
        phase: Phase,
    },
    #[error("no remap in progress")]
    NoneActive,
    #[error("remap {id} is in phase {phase}; {what}")]
    WrongPhase {
        id: i64,
        phase: Phase,
        what: &'static str,
    },
    #[error("{0}")]
    Load(#[from] super::rebalance::LoadError),
    #[error("verification found differences between source and target:\n  {}", .0.join("\n  "))]
    Mismatch(Vec<String>),
}

/// How to reach one physical shard as a role that may create publications, subscriptions and triggers.
#[derive(Clone, Debug)]
pub struct ShardAccess {
    pub pg: tokio_postgres::Config,
    /// libpq connection string the target's subscription uses to reach this shard.
    pub conninfo: String,
}

#[derive(Clone, Debug)]
pub struct RemapOptions {
    /// Longest time writes to the moving vshards may be held; the cutover gives up (and retries) beyond it.
    pub max_pause: Duration,
    /// How long the initial copy may take.
    pub copy_timeout: Duration,
    /// Cut over once the target is at most this many bytes of WAL behind.
    pub catch_up_bytes: i64,
    pub catch_up_timeout: Duration,
    /// Cutover attempts before giving up (each one that exceeds `max_pause` resumes writes on the source).
    pub cutover_attempts: u32,
    /// Stop after reaching this phase (tests simulate a `shardctl` that died there).
    pub stop_after: Option<Phase>,
}

impl Default for RemapOptions {
    fn default() -> Self {
        RemapOptions {
            max_pause: Duration::from_secs(2),
            copy_timeout: Duration::from_secs(3600),
            catch_up_bytes: 1 << 20,
            catch_up_timeout: Duration::from_secs(3600),
            cutover_attempts: 5,
            stop_after: None,
        }
    }
}

/// What a running remap reports besides its log lines, for a live display (`shardctl` draws progress bars from it
/// on a terminal).
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// Remap `id` entered `phase`.
    Phase { id: i64, phase: Phase },
    /// The initial copy: `done` of `total` tables synchronised, each table's copy so far, and the rows expected per
    /// table (estimated from the source's statistics, absent when it has none).
    Copy {
        done: i64,
        total: i64,
        tables: &'a [replicate::TableCopy],
        expected: &'a std::collections::BTreeMap<String, u64>,
    },
    /// The catch-up: bytes of WAL the target is behind.
    Lag(i64),
    /// A step of the cutover just completed (`cutover: fence`, `cutover: flip`...).
    Step(&'a str),
}

/// Where a remap's progress events go.
pub type ProgressSink = Box<dyn FnMut(&Progress<'_>) + Send + Sync>;

/// A remap driver: the catalog, the shards, and where progress lines (and events, for a display) go.
pub struct Remapper {
    pub cfg: ShardingConfig,
    pub catalog: Client,
    pub shards: Vec<ShardAccess>,
    pub opts: RemapOptions,
    pub log: Box<dyn FnMut(&str) + Send + Sync>,
    pub progress: Option<ProgressSink>,
}

impl Remapper {
    async fn connect(&self, shard: u16) -> Result<Client, RemapError> {
        let access = self
            .shards
            .get(usize::from(shard))
            .ok_or(PlanError::UnknownShard(shard))?;
        let (client, conn) = access
            .pg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| RemapError::Shard { shard, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(shard, error = %e, "remap connection ended");
            }
        });
        // Logical decoding sends only flushed WAL: with asynchronous commit, the fence's and the marker's commits
        // would reach the target only when the WAL writer gets round to them (up to wal_writer_delay later).
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(|source| RemapError::Shard { shard, source })?;
        Ok(client)
    }

    fn say(&mut self, line: &str) {
        (self.log)(line);
    }

    fn report(&mut self, event: &Progress<'_>) {
        if let Some(p) = self.progress.as_mut() {
            p(event);
        }
    }

    /// Creates the remap tables on catalogs made before remaps existed, and the columns added since.
    async fn ensure_schema(&self) -> Result<(), RemapError> {
        let current = self
            .catalog
            .query_one(
                "SELECT count(*) = 3 FROM pg_attribute WHERE attrelid = to_regclass('shardpool.remaps') \
                 AND attname IN ('drained_lsn', 'drained_at', 'frozen_epoch') AND NOT attisdropped",
                &[],
            )
            .await
            .map_err(CatalogError::from)?
            .try_get::<_, bool>(0)
            .map_err(CatalogError::from)?;
        if !current || !state::exists(&self.catalog).await? {
            self.catalog
                .batch_execute(state::SCHEMA)
                .await
                .map_err(CatalogError::from)?;
        }
        Ok(())
    }

    async fn load(&mut self) -> Result<Catalog, RemapError> {
        Ok(catalog::load(&mut self.catalog).await?)
    }

    /// The plan and the preflight report, changing nothing (`--dry-run`).
    pub async fn plan(
        &mut self,
        vshards: &[u32],
        target: u16,
    ) -> Result<(Plan, Report), RemapError> {
        let c = self.load().await?;
        let plan = Plan::new(&self.cfg, &c, vshards, target)?;
        let source = self.connect(plan.source).await?;
        let target_client = self.connect(plan.target).await?;
        let report = preflight::check(&plan, &source, &target_client)
            .await
            .map_err(|source| RemapError::Shard {
                shard: plan.source,
                source,
            })?;
        Ok((plan, report))
    }

    /// Starts a remap, or resumes the one in progress if it moves the same vshards to the same shard.
    pub async fn start(&mut self, vshards: &[u32], target: u16) -> Result<RemapRow, RemapError> {
        self.ensure_schema().await?;
        if let Some(row) = state::active(&self.catalog).await? {
            let mut asked = vshards.to_vec();
            asked.sort_unstable();
            if row.vshards == asked && row.target == target {
                self.say(&format!("resuming remap {} in phase {}", row.id, row.phase));
                return self.drive(row).await;
            }
            return Err(RemapError::Busy {
                id: row.id,
                vshards: format_vshards(&row.vshards),
                from: row.source,
                target: row.target,
                phase: row.phase,
            });
        }
        let (plan, report) = self.plan(vshards, target).await?;
        let text = plan.describe(None);
        self.say(&text);
        if !report.refusals.is_empty() {
            return Err(RemapError::Refused(report));
        }
        let rendered = report.render();
        self.say(&rendered);
        let max_pause = u32::try_from(self.opts.max_pause.as_millis()).unwrap_or(u32::MAX);
        let row = state::create(
            &self.catalog,
            &plan.vshards,
            plan.source,
            plan.target,
            max_pause,
        )
        .await?;
        self.say(&format!("remap {} planned", row.id));
        self.drive(row).await
    }

    /// Resumes the remap in progress.
    pub async fn resume(&mut self) -> Result<RemapRow, RemapError> {
        let row = state::active(&self.catalog)
            .await?
            .ok_or(RemapError::NoneActive)?;
        self.drive(row).await
    }

    fn plan_of(&self, c: &Catalog, row: &RemapRow) -> Result<Plan, RemapError> {
        Ok(Plan::with_source(
            &self.cfg,
            c,
            row.vshards.clone(),
            row.source,
            row.target,
        )?)
    }

    async fn drive(&mut self, mut row: RemapRow) -> Result<RemapRow, RemapError> {
        self.ensure_schema().await?;
        let id = row.id;
        self.report(&Progress::Phase {
            id,
            phase: row.phase,
        });
        let c = self.load().await?;
        let plan = self.plan_of(&c, &row)?;
        let mut source = self.connect(row.source).await?;
        let target = self.connect(row.target).await?;
        let shard_err = |shard| move |source| RemapError::Shard { shard, source };
        loop {
            let phase = row.phase;
            match phase {
                Phase::Planned => {
                    replicate::ensure_publication(&source, &plan, id).await?;
                    let conninfo = self.shards[usize::from(row.source)].conninfo.clone();
                    replicate::ensure_subscription(&source, &target, id, &conninfo).await?;
                    self.advance(&mut row, Phase::Copying).await?;
                }
                Phase::Copying => {
                    let started = Instant::now();
                    let mut last = (-1, -1);
                    let mut lines = Vec::new();
                    let expected = expected_rows(&source, &plan, &c).await;
                    let progress = &mut self.progress;
                    replicate::wait_synced(
                        &target,
                        id,
                        plan.tables.len(),
                        row.target,
                        self.opts.copy_timeout,
                        |done, total, tables| {
                            if (done, total) != last {
                                last = (done, total);
                                lines.push(format!("copy: {done} of {total} tables synchronised"));
                            }
                            if let Some(p) = progress.as_mut() {
                                p(&Progress::Copy {
                                    done,
                                    total,
                                    tables,
                                    expected: &expected,
                                });
                            }
                        },
                    )
                    .await?;
                    for l in lines {
                        self.say(&l);
                    }
                    let rows = verify::count(&target, &plan)
                        .await
                        .map_err(shard_err(row.target))?;
                    state::set_progress(&self.catalog, id, Some(rows), None, None).await?;
                    self.say(&format!(
                        "copy: {rows} rows on shard {} after {:.1?}",
                        row.target,
                        started.elapsed()
                    ));
                    self.advance(&mut row, Phase::CatchingUp).await?;
                }
                Phase::CatchingUp => {
                    let mut seen = 0;
                    let progress = &mut self.progress;
                    replicate::wait_caught_up(
                        &source,
                        &target,
                        id,
                        row.target,
                        self.opts.catch_up_bytes,
                        self.opts.catch_up_timeout,
                        |l| {
                            seen = l;
                            if let Some(p) = progress.as_mut() {
                                p(&Progress::Lag(l));
                            }
                        },
                    )
                    .await?;
                    state::set_progress(&self.catalog, id, None, Some(seen), None).await?;
                    self.say(&format!("catch-up: {seen} bytes behind; cutting over"));
                    let verified = self.cut_over(&c, &plan, &row, &mut source, &target).await?;
                    row = state::get(&self.catalog, id)
                        .await?
                        .ok_or(RemapError::NoneActive)?;
                    if verified {
                        self.advance(&mut row, Phase::Verified).await?;
                    }
                }
                Phase::CuttingOver => {
                    // A run died inside the cutover, before the flip (the flip moves the phase on in the same
                    // transaction): undo the freeze and the fence, then try again from catch-up.
                    self.say("the last run stopped inside the cutover: resuming writes on the source first");
                    cutover::disarm_fence(&source, &plan, id)
                        .await
                        .map_err(shard_err(row.source))?;
                    cutover::set_frozen(&mut self.catalog, id, false, Phase::CatchingUp).await?;
                    row.phase = Phase::CatchingUp;
                }
                Phase::Switched => {
                    if row.frozen {
                        // A run that died between the flip and the release: open the target to the returning
                        // vshards (the dead run may not have narrowed its old fences), then release the held writes
                        // to it.
                        let refence = self.refences(&c, &row).await?;
                        cutover::narrow_fences(&target, &self.catalog, &refence)
                            .await
                            .map_err(shard_err(row.target))?;
                        cutover::set_frozen(&mut self.catalog, id, false, Phase::Switched).await?;
                    }
                    let problems = self.compare(&plan, &source, &target, c.vshards).await?;
                    if !problems.is_empty() {
                        state::set_error(&self.catalog, id, Some(&problems.join("; "))).await?;
                        return Err(RemapError::Mismatch(problems));
                    }
                    self.advance(&mut row, Phase::Verified).await?;
                }
                Phase::Verified => {
                    self.clean_up(&plan, &source, &target, id).await?;
                    self.advance(&mut row, Phase::Done).await?;
                    self.say(&format!(
                        "remap {id} done: vshards {} are on shard {}",
                        format_vshards(&row.vshards),
                        row.target
                    ));
                }
                Phase::Done | Phase::Aborted => return Ok(row),
            }
            if self.opts.stop_after == Some(phase) && row.phase != phase {
                return Ok(row);
            }
        }
    }

    /// Records the next phase as a catalog change, so instances' `SHOW REMAPS` follow it.
    async fn advance(&mut self, row: &mut RemapRow, phase: Phase) -> Result<(), RemapError> {
        let tx = self
            .catalog
            .transaction()
            .await
            .map_err(CatalogError::from)?;
        let (epoch, _) = catalog::begin_change(&tx).await?;
        state::set_phase(&tx, row.id, phase).await?;
        catalog::notify(&tx, epoch).await?;
        tx.commit().await.map_err(CatalogError::from)?;
        row.phase = phase;
        self.report(&Progress::Phase { id: row.id, phase });
        self.say(&format!("remap {}: {phase}", row.id));
        Ok(())
    }

    /// Cuts over (retrying a cutover that exceeded the pause), verifies against the snapshot taken at the drained
    /// point. True when verified.
    async fn cut_over(
        &mut self,
        c: &Catalog,
        plan: &Plan,
        row: &RemapRow,
        source: &mut Client,
        target: &Client,
    ) -> Result<bool, RemapError> {
        let snapshot = self.connect(row.target).await?;
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let refence = self.refences(c, row).await?;
            let progress = &mut self.progress;
            let result = Cutover {
                catalog: &mut self.catalog,
                source,
                target,
                plan,
                id: row.id,
                max_pause: self.opts.max_pause,
                snapshot: Some(&snapshot),
                refence,
                on_step: &mut |step: &str| {
                    if let Some(p) = progress.as_mut() {
                        p(&Progress::Step(step));
                    }
                },
            }
            .run()
            .await;
            match result {
                Ok(o) => break o,
                Err(e @ CutoverError::PauseExceeded { .. })
                    if attempt < self.opts.cutover_attempts =>
                {
                    self.say(&format!("cutover attempt {attempt}: {e}"));
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let pause_ms = i64::try_from(outcome.pause.as_millis()).unwrap_or(i64::MAX);
        state::set_progress(&self.catalog, row.id, None, None, Some(pause_ms)).await?;
        let steps: Vec<String> = outcome
            .steps
            .iter()
            .map(|(name, d)| format!("{name} {:.1}ms", d.as_secs_f64() * 1000.0))
            .collect();
        self.say(&format!(
            "cutover: vshards {} now on shard {} (epoch {}); writes to them paused {:.1}ms ({})",
            format_vshards(&row.vshards),
            row.target,
            outcome.epoch,
            outcome.pause.as_secs_f64() * 1000.0,
            steps.join(", ")
        ));
        let on_target = verify::sums(&snapshot, plan, &self.cfg, c.vshards)
            .await
            .map_err(|source| RemapError::Shard {
                shard: row.target,
                source,
            })?;
        let _ = snapshot.batch_execute("COMMIT").await;
        let on_source = verify::sums(source, plan, &self.cfg, c.vshards)
            .await
            .map_err(|e| RemapError::Shard {
                shard: row.source,
                source: e,
            })?;
        let problems = verify::compare(&on_source, &on_target);
        if problems.is_empty() {
            self.say(&format!(
                "verify: {} rows equal on both shards ({} groups)",
                verify::rows(&on_source),
                on_source.len()
            ));
            Ok(true)
        } else {
            state::set_error(&self.catalog, row.id, Some(&problems.join("; "))).await?;
            Err(RemapError::Mismatch(problems))
        }
    }

    /// Fences earlier remaps left on this remap's target over vshards that now come back: narrowed at the flip.
    async fn refences(&self, c: &Catalog, row: &RemapRow) -> Result<Vec<Refence>, RemapError> {
        let mut out = Vec::new();
        for earlier in state::fences_on(&self.catalog, row.target, &row.vshards).await? {
            let keep: Vec<u32> = earlier
                .fenced
                .iter()
                .copied()
                .filter(|v| row.vshards.binary_search(v).is_err())
                .collect();
            let p = Plan::with_source(&self.cfg, c, keep.clone(), earlier.source, earlier.target)?;
            out.push(Refence {
                id: earlier.id,
                target: earlier.target,
                tables: p.tables,
                keep,
            });
        }
        Ok(out)
    }

    async fn compare(
        &mut self,
        plan: &Plan,
        source: &Client,
        target: &Client,
        vshards: u32,
    ) -> Result<Vec<String>, RemapError> {
        let a = verify::sums(source, plan, &self.cfg, vshards)
            .await
            .map_err(|e| RemapError::Shard {
                shard: plan.source,
                source: e,
            })?;
        let b = verify::sums(target, plan, &self.cfg, vshards)
            .await
            .map_err(|e| RemapError::Shard {
                shard: plan.target,
                source: e,
            })?;
        Ok(verify::compare(&a, &b))
    }

    /// Compares the moving rows on both shards now (`shardctl remap verify`). Before the cutover, differences can be
    /// changes not applied yet; after it, writes made since on the target.
    pub async fn verify(&mut self) -> Result<Vec<String>, RemapError> {
        let row = state::active(&self.catalog)
            .await?
            .ok_or(RemapError::NoneActive)?;
        let c = self.load().await?;
        let plan = self.plan_of(&c, &row)?;
        let source = self.connect(row.source).await?;
        let target = self.connect(row.target).await?;
        self.compare(&plan, &source, &target, c.vshards).await
    }

    /// Subscription first (so no DELETE on the source can replicate), then its slots and the publication, then the
    /// moved rows on the source, past the fence that keeps everyone else out.
    async fn clean_up(
        &mut self,
        plan: &Plan,
        source: &Client,
        target: &Client,
        id: i64,
    ) -> Result<(), RemapError> {
        replicate::drop_all(source, target, id).await?;
        delete_moved(source, plan, plan.source).await?;
        self.say(&format!(
            "cleanup: replication objects dropped, moved rows deleted on shard {}",
            plan.source
        ));
        Ok(())
    }

    /// `shardctl remap cleanup`: after a verified remap; `force` also after an unverified one.
    pub async fn cleanup(&mut self, force: bool) -> Result<RemapRow, RemapError> {
        let mut row = state::active(&self.catalog)
            .await?
            .ok_or(RemapError::NoneActive)?;
        match row.phase {
            Phase::Verified => {}
            Phase::Switched if force => {
                self.advance(&mut row, Phase::Verified).await?;
            }
            phase => {
                return Err(RemapError::WrongPhase {
                    id: row.id,
                    phase,
                    what: "cleanup needs a verified remap (run `shardctl remap verify`, or `cleanup --force` after \
                           checking the differences yourself)",
                })
            }
        }
        self.drive(row).await
    }

    /// Undoes the remap in progress from any phase before the flip: the freeze lifted, the fence disarmed, the
    /// subscription, slots and publication dropped, the rows copied to the target deleted.
    pub async fn abort(&mut self) -> Result<RemapRow, RemapError> {
        self.ensure_schema().await?;
        let mut row = state::active(&self.catalog)
            .await?
            .ok_or(RemapError::NoneActive)?;
        if row.phase >= Phase::Switched {
            return Err(RemapError::WrongPhase {
                id: row.id,
                phase: row.phase,
                what: "the vshards already moved; finish the remap (run it again), then move them back with another \
                       remap",
            });
        }
        let c = self.load().await?;
        let plan = self.plan_of(&c, &row)?;
        let source = self.connect(row.source).await?;
        let target = self.connect(row.target).await?;
        if row.frozen || row.phase == Phase::CuttingOver {
            cutover::disarm_fence(&source, &plan, row.id)
                .await
                .map_err(|e| RemapError::Shard {
                    shard: row.source,
                    source: e,
                })?;
            cutover::set_frozen(&mut self.catalog, row.id, false, row.phase).await?;
        }
        replicate::drop_all(&source, &target, row.id).await?;
        delete_moved(&target, &plan, row.target).await?;
        self.advance(&mut row, Phase::Aborted).await?;
        Ok(row)
    }

    /// Measures every shard and proposes the moves that even them out (`shardctl rebalance`).
    pub async fn rebalance(
        &mut self,
        by: super::rebalance::Measure,
    ) -> Result<super::rebalance::Proposal, RemapError> {
        if by == super::rebalance::Measure::Load {
            return Err(super::rebalance::LoadError::NoInstances.into());
        }
        let c = self.load().await?;
        let mut weights = std::collections::BTreeMap::new();
        for shard in 0..self.cfg.shards.len() {
            let shard = u16::try_from(shard).unwrap_or(u16::MAX);
            let client = self.connect(shard).await?;
            let measured = super::rebalance::measure(&client, &c, &self.cfg, by)
                .await
                .map_err(|source| RemapError::Shard { shard, source })?;
            for (v, n) in measured {
                // Rows of a vshard on a shard that does not own it (left by hand) are not the owner's load.
                if c.shard_of(v) == Some(shard) {
                    *weights.entry(v).or_insert(0) += n;
                }
            }
        }
        Ok(super::rebalance::propose(
            &c.placement,
            &weights,
            self.cfg.shards.len(),
        ))
    }

    /// Proposes the moves that even out `weights` (per vshard, measured elsewhere: the instances' load), by the
    /// current placement.
    pub async fn propose(
        &mut self,
        weights: &std::collections::BTreeMap<u32, u64>,
    ) -> Result<super::rebalance::Proposal, RemapError> {
        let c = self.load().await?;
        Ok(super::rebalance::propose(
            &c.placement,
            weights,
            self.cfg.shards.len(),
        ))
    }

    /// Moves the vshards of the remap in progress back to where they came from, after its cutover and before its
    /// cleanup. The rows on the source are as they were at the cutover and the target has taken writes since, so
    /// the source's copy is dropped and the move back is a remap of its own (copy, catch up, cut over, verify,
    /// clean up) from the target; the forward remap is closed as done, with `rolled back by remap N` as its error.
    pub async fn rollback(&mut self) -> Result<RemapRow, RemapError> {
        self.ensure_schema().await?;
        let mut row = state::active(&self.catalog)
            .await?
            .ok_or(RemapError::NoneActive)?;
        if !matches!(row.phase, Phase::Switched | Phase::Verified) {
            return Err(RemapError::WrongPhase {
                id: row.id,
                phase: row.phase,
                what: "rollback undoes a cutover before cleanup; before the cutover use abort, after cleanup move \
                       the vshards back with another remap",
            });
        }
        let c = self.load().await?;
        let plan = self.plan_of(&c, &row)?;
        let source = self.connect(row.source).await?;
        let target = self.connect(row.target).await?;
        if row.frozen {
            cutover::set_frozen(&mut self.catalog, row.id, false, row.phase).await?;
        }
        replicate::drop_all(&source, &target, row.id).await?;
        delete_moved(&source, &plan, row.source).await?;
        self.advance(&mut row, Phase::Done).await?;
        self.say(&format!(
            "remap {}: the copy on shard {} is dropped; moving vshards {} back from shard {}",
            row.id,
            row.source,
            format_vshards(&row.vshards),
            row.target
        ));
        let back = self.start(&row.vshards, row.source).await;
        let note = match &back {
            Ok(b) => format!("rolled back by remap {}", b.id),
            Err(e) => format!("rollback failed: {e}"),
        };
        state::set_error(&self.catalog, row.id, Some(&note)).await?;
        back
    }

    /// The active remap and recent ones.
    pub async fn status(&mut self) -> Result<Vec<RemapRow>, RemapError> {
        Ok(state::recent(&self.catalog).await?)
    }

    /// Replication objects of remap `id` still on its shards (empty after cleanup or abort).
    pub async fn leftovers(&mut self, id: i64) -> Result<Vec<String>, RemapError> {
        let row = state::get(&self.catalog, id)
            .await?
            .ok_or(RemapError::NoneActive)?;
        let source = self.connect(row.source).await?;
        let target = self.connect(row.target).await?;
        Ok(replicate::leftovers(&source, &target, id).await?)
    }
}

/// Rows of each table expected to move, for the progress display: the source's row estimate (`reltuples`) times the
/// share of the source's vshards that move. Tables without statistics are left out; errors only cost the estimate.
async fn expected_rows(
    source: &Client,
    plan: &Plan,
    c: &Catalog,
) -> std::collections::BTreeMap<String, u64> {
    let on_source = c.placement.iter().filter(|&&s| s == plan.source).count() as f64;
    let share = plan.vshards.len() as f64 / on_source.max(1.0);
    let mut out = std::collections::BTreeMap::new();
    for t in &plan.tables {
        let estimate = source
            .query_one(
                "SELECT reltuples::float8 FROM pg_class WHERE oid = to_regclass($1)",
                &[&t.sql_name],
            )
            .await
            .ok()
            .and_then(|r| r.try_get::<_, Option<f64>>(0).ok().flatten());
        if let Some(n) = estimate.filter(|n| *n >= 0.0) {
            out.insert(t.name.clone(), (n * share.min(1.0)).round() as u64);
        }
    }
    out
}

/// Deletes the rows of `plan`'s vshards on `server` (the source after a move, the target on abort), past any fence
/// there (this remap's, or one an earlier remap left over the same vshards).
async fn delete_moved(server: &Client, plan: &Plan, shard: u16) -> Result<(), RemapError> {
    let mut sql = String::from("BEGIN; SET LOCAL shardpool.fence_bypass = 'on';\n");
    for t in &plan.tables {
        sql.push_str(&format!("DELETE FROM {} WHERE {};\n", t.sql_name, t.filter));
    }
    sql.push_str("COMMIT");
    server
        .batch_execute(&sql)
        .await
        .map_err(|source| RemapError::Shard { shard, source })
}
