//! `shardctl`: the operator CLI, so scripts do not need psql.
//!
//! Two kinds of verbs: `show`, `reload`, `pause` and `resume` talk to a running shardpool's admin console (`--url`);
//! `init`, `map` and `directory` work on a sharded database's catalog directly (`--config`, `--database`), because
//! the catalog must be creatable before any shardpool runs and is shared by all of them. `remap` drives an online
//! move of vshards between shards (`sharding::remap`), also against the catalog and the shards directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use shardpool::config::sharding::{MapConfig, ShardingConfig};
use shardpool::config::UserConfig;
use shardpool::sharding::catalog::{self, key_text, Catalog};

#[derive(Parser)]
#[command(
    name = "shardctl",
    version,
    about = "Operate shardpool and its sharding catalog"
)]
struct Cli {
    /// Admin console URL for show/reload/pause/resume, e.g. postgres://admin:secret@127.0.0.1:6432/shardpool
    #[arg(long, env = "SHARDPOOL_ADMIN_URL", global = true)]
    url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// SHOW POOLS|CLIENTS|SERVERS|STATS|CONFIG|DATABASES|USERS|VERSION
    Show { what: String },
    /// Re-read the config file.
    Reload,
    /// Wait until all server connections are idle and hold new transactions.
    Pause,
    /// Release paused transactions.
    Resume,
    /// Create a sharded database's catalog with an even placement (idempotent; adds maps new in the config).
    Init(CatalogArgs),
    /// Print the catalog's epoch, its vshard -> shard placement and its maps.
    Map(CatalogArgs),
    /// Where a key of a sharded table goes: its vshard and shard, by the table's map and the current catalog.
    Route {
        table: String,
        key: String,
        #[command(flatten)]
        target: CatalogArgs,
    },
    /// Directory map entries.
    Directory {
        #[command(subcommand)]
        action: DirectoryAction,
    },
    /// Move vshards to another shard under live traffic (see docs/remap.md), or act on the remap in progress.
    Remap(RemapArgs),
    /// Measure rows or bytes per vshard on the shards, or statements per vshard on the shardpool instances, and
    /// propose (or, without --dry-run, run) the fewest remaps that even the shards out.
    Rebalance(RebalanceArgs),
}

#[derive(Args)]
struct RebalanceArgs {
    /// What to even out: rows or bytes stored per vshard (measured on the shards), or load (statements per vshard,
    /// counted by the shardpool instances named with --instance).
    #[arg(long, value_enum, default_value = "rows")]
    by: shardpool::sharding::remap::rebalance::Measure,
    /// --by load: the admin console of a shardpool instance (repeat for every instance); default: --url.
    #[arg(long = "instance")]
    instances: Vec<String>,
    /// --by load: count statements during this window, e.g. 30s; 0s uses the counters since each instance started.
    #[arg(long, default_value = "10s")]
    sample: String,
    /// Print the proposal, change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, default_value = "2s")]
    max_pause: String,
    #[arg(long, env = "SHARDCTL_SHARD_USER")]
    shard_user: Option<String>,
    #[command(flatten)]
    target: CatalogArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RemapAction {
    /// Plan, check, copy, catch up, cut over, verify and clean up; resumes the remap in progress when it is the same.
    Start,
    /// The remap in progress and recent ones.
    Status,
    /// Undo the remap in progress (any phase before the vshards moved): nothing is left behind.
    Abort,
    /// Compare the moving rows on source and target now.
    Verify,
    /// Drop the replication objects and delete the moved rows on the source (after a verified remap).
    Cleanup,
    /// After the cutover and before cleanup: move the vshards back (a remap of its own, from the target).
    Rollback,
}

#[derive(Args)]
struct RemapArgs {
    #[arg(value_enum, default_value = "start")]
    action: RemapAction,
    /// Vshards to move: numbers and ranges, e.g. 0-15,40 (start only).
    #[arg(long)]
    vshards: Option<String>,
    /// The shard they move to (start only).
    #[arg(long)]
    to: Option<u16>,
    /// Print the plan and the preflight checks, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Longest pause of writes to the moving vshards at cutover, e.g. 2s or 500ms; beyond it the cutover is undone
    /// and retried.
    #[arg(long, default_value = "2s")]
    max_pause: String,
    /// Role on the shards (a superuser: PostgreSQL 15 needs one for CREATE SUBSCRIPTION); default: the catalog's.
    #[arg(long, env = "SHARDCTL_SHARD_USER")]
    shard_user: Option<String>,
    /// cleanup: also after a verification that found differences (once you have checked them).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    target: CatalogArgs,
}

#[derive(Subcommand)]
enum DirectoryAction {
    /// Point a key at a vshard (adds or replaces the entry). Routing follows at once; rows already stored under
    /// the old vshard are not moved.
    Set {
        map: String,
        key: String,
        vshard: u32,
        #[command(flatten)]
        target: CatalogArgs,
    },
}

#[derive(Args)]
struct CatalogArgs {
    /// shardpool config file.
    #[arg(
        short,
        long,
        env = "SHARDPOOL_CONFIG",
        default_value = "config/shardpool.toml"
    )]
    config: PathBuf,
    /// The sharded database: a `[databases.NAME]` with a `sharding` section.
    #[arg(short, long)]
    database: String,
    /// The `[[users]]` entry whose server credentials open the catalog; may be omitted when there is one user.
    #[arg(short, long, env = "SHARDCTL_USER")]
    user: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Show { what } => admin(cli.url, &format!("SHOW {what}")).await,
        Command::Reload => admin(cli.url, "RELOAD").await,
        Command::Pause => admin(cli.url, "PAUSE").await,
        Command::Resume => admin(cli.url, "RESUME").await,
        Command::Init(args) => init(&args).await,
        Command::Map(args) => map(&args).await,
        Command::Route { table, key, target } => route(&target, &table, &key).await,
        Command::Directory {
            action:
                DirectoryAction::Set {
                    map,
                    key,
                    vshard,
                    target,
                },
        } => directory_set(&target, &map, &key, vshard).await,
        Command::Remap(args) => remap(&args).await,
        Command::Rebalance(args) => rebalance(&args, cli.url).await,
    }
}

async fn admin(url: Option<String>, sql: &str) -> anyhow::Result<()> {
    let url =
        url.context("--url (or SHARDPOOL_ADMIN_URL) is required for show/reload/pause/resume")?;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .context("connecting to the admin console")?;
    tokio::spawn(conn);
    for msg in client
        .simple_query(sql)
        .await
        .context("running the command")?
    {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
            let cells: Vec<String> = (0..row.len())
                .map(|i| format!("{}={}", row.columns()[i].name(), row.get(i).unwrap_or("")))
                .collect();
            println!("{}", cells.join(" "));
        }
    }
    Ok(())
}

/// The parts of the config file shardctl needs. Only these are read (other keys are ignored, not rejected):
/// validating the whole file is `shardpool check-config`'s job, and the sharding section is validated here.
#[derive(Deserialize)]
struct ConfigView {
    #[serde(default)]
    users: Vec<UserConfig>,
    #[serde(default)]
    databases: BTreeMap<String, DatabaseView>,
}

#[derive(Deserialize)]
struct DatabaseView {
    #[serde(default)]
    sharding: Option<ShardingConfig>,
}

/// A sharded database's config and an open connection to its catalog.
struct Target {
    cfg: ShardingConfig,
    client: tokio_postgres::Client,
    location: String,
}

fn read_config(path: &Path, database: &str) -> anyhow::Result<(ShardingConfig, Vec<UserConfig>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut view: ConfigView =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let cfg = view
        .databases
        .remove(database)
        .with_context(|| format!("{}: no [databases.{database}]", path.display()))?
        .sharding
        .with_context(|| {
            format!(
                "{}: [databases.{database}] has no sharding section",
                path.display()
            )
        })?;
    let problems = cfg.validate_at(&format!("databases.{database}.sharding"));
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("  {}: {}", p.key, p.message))
            .collect();
        bail!(
            "{}: invalid sharding config:\n{}",
            path.display(),
            lines.join("\n")
        );
    }
    Ok((cfg, view.users))
}

fn pick_user<'a>(users: &'a [UserConfig], name: Option<&str>) -> anyhow::Result<&'a UserConfig> {
    match (name, users) {
        (Some(n), _) => users
            .iter()
            .find(|u| u.name == n)
            .with_context(|| format!("no [[users]] entry named {n:?}")),
        (None, [only]) => Ok(only),
        (None, _) => {
            let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
            bail!("choose the catalog's credentials with --user (one of {names:?})")
        }
    }
}

async fn connect(args: &CatalogArgs) -> anyhow::Result<Target> {
    let (cfg, users) = read_config(&args.config, &args.database)?;
    let user = pick_user(&users, args.user.as_deref())?;
    let at = cfg
        .catalog_target(&args.database)
        .context("no shards configured")?;
    let pg = catalog::connect_config(&at, user.server_user(), user.server_password(), "shardctl");
    let location = format!("{}:{}/{}", at.host, at.port, at.database);
    let (client, conn) = pg.connect(tokio_postgres::NoTls).await.with_context(|| {
        format!(
            "connecting to the catalog at {location} as {}",
            user.server_user()
        )
    })?;
    tokio::spawn(conn);
    Ok(Target {
        cfg,
        client,
        location,
    })
}

async fn init(args: &CatalogArgs) -> anyhow::Result<()> {
    let mut t = connect(args).await?;
    let outcome = catalog::init(&mut t.client, &t.cfg).await?;
    if outcome.created {
        println!(
            "created the catalog at {}: {} vshards on {} shards, epoch {}",
            t.location,
            t.cfg.vshards,
            t.cfg.shards.len(),
            outcome.epoch
        );
    } else {
        println!(
            "the catalog at {} already exists with {} vshards; placement unchanged, epoch {}",
            t.location, t.cfg.vshards, outcome.epoch
        );
    }
    for map in &outcome.added_maps {
        println!("added map {map}");
    }
    Ok(())
}

async fn map(args: &CatalogArgs) -> anyhow::Result<()> {
    let mut t = connect(args).await?;
    let c = catalog::load(&mut t.client).await?;
    print!("{}", render_map(&c, &t.cfg, &t.location));
    Ok(())
}

async fn route(args: &CatalogArgs, table: &str, key: &str) -> anyhow::Result<()> {
    let mut t = connect(args).await?;
    let c = catalog::load(&mut t.client).await?;
    let Some(tc) = t.cfg.tables.iter().find(|x| x.name == table) else {
        bail!(
            "{table} is not a sharded table of database {}",
            args.database
        );
    };
    let value = tc.key_type.parse_text(key)?;
    let vshard = if tc.map == "hash" {
        value
            .vshard(c.vshards)
            .context("a NULL key has no vshard")?
    } else {
        match t.cfg.maps.get(&tc.map) {
            Some(MapConfig::Range { .. }) => c.range_vshard(&tc.map, &value)?,
            Some(MapConfig::Directory { unknown_keys, .. }) => {
                match c.directory_vshard(&tc.map, &value)? {
                    Some(v) => v,
                    None if *unknown_keys == shardpool::config::sharding::UnknownKeys::Hash => {
                        println!("(no directory entry: placed by hash)");
                        value
                            .vshard(c.vshards)
                            .context("a NULL key has no vshard")?
                    }
                    None => bail!(
                        "key {key} has no entry in directory map {} (unknown_keys = error)",
                        tc.map
                    ),
                }
            }
            None => bail!("table {table} names unknown map {}", tc.map),
        }
    };
    let shard = c
        .shard_of(vshard)
        .with_context(|| format!("vshard {vshard} has no shard"))?;
    let sc = t.cfg.shards.get(shard as usize);
    println!(
        "table {table} key {key}: map {} -> vshard {vshard} -> shard {shard}{} (catalog epoch {})",
        tc.map,
        sc.map(|s| format!(" ({}:{})", s.host, s.port))
            .unwrap_or_default(),
        c.epoch
    );
    Ok(())
}

fn render_map(c: &Catalog, cfg: &ShardingConfig, location: &str) -> String {
    let mut out = format!(
        "catalog {location}: epoch {}, {} vshards\n\nvshards -> shard\n",
        c.epoch, c.vshards
    );
    for (first, last, shard) in c.placement_runs() {
        let span = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        out.push_str(&format!("{span:>11} → shard {shard}\n"));
    }
    out.push_str("\nper shard\n");
    let counts: BTreeMap<u16, u32> = c.shard_counts().into_iter().collect();
    let configured = (0..cfg.shards.len()).filter_map(|s| u16::try_from(s).ok());
    let mut shards: Vec<u16> = configured.chain(counts.keys().copied()).collect();
    shards.sort_unstable();
    shards.dedup();
    for s in shards {
        let n = counts.get(&s).copied().unwrap_or(0);
        let addr = cfg
            .shards
            .get(usize::from(s))
            .map(|sh| format!("{}:{}", sh.host, sh.port))
            .unwrap_or_else(|| "not in the config".into());
        out.push_str(&format!("  shard {s} ({addr}): {n} vshards\n"));
    }
    let mut names: Vec<&String> = c.directories.keys().chain(c.ranges.keys()).collect();
    names.sort();
    if !names.is_empty() {
        out.push_str("\nmaps\n");
    }
    for name in names {
        if let Some(d) = c.directories.get(name) {
            out.push_str(&format!(
                "  {name}: directory of {} keys, {} entries\n",
                d.key_type.name(),
                d.entries.len()
            ));
        } else if let Some(r) = c.ranges.get(name) {
            out.push_str(&format!("  {name}: range of {} keys\n", r.key_type.name()));
            let lowers = std::iter::once("-inf".to_string())
                .chain(r.bounds.iter().filter_map(|(k, _)| key_text(k)));
            let vshards = std::iter::once(r.first).chain(r.bounds.iter().map(|(_, v)| *v));
            for (lower, v) in lowers.zip(vshards) {
                let shard = c.shard_of(v).map_or("?".to_string(), |s| s.to_string());
                out.push_str(&format!("    from {lower} → vshard {v} (shard {shard})\n"));
            }
        }
    }
    let problems = c.check_against(cfg);
    if !problems.is_empty() {
        out.push_str("\nthe catalog and the config disagree\n");
        for p in problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out
}

async fn directory_set(
    args: &CatalogArgs,
    map: &str,
    key: &str,
    vshard: u32,
) -> anyhow::Result<()> {
    let mut t = connect(args).await?;
    let key_type = match t.cfg.maps.get(map) {
        Some(MapConfig::Directory { key_type, .. }) => *key_type,
        Some(other) => bail!("map {map:?} is a {} map, not a directory", other.kind()),
        None => bail!(
            "no map {map:?} in [databases.{}.sharding.maps]",
            args.database
        ),
    };
    let value = key_type.parse_text(key)?;
    let epoch = catalog::set_directory(&mut t.client, map, &value, vshard).await?;
    let canonical = key_text(&value).unwrap_or_default();
    println!("{map}: {canonical} → vshard {vshard}, epoch {epoch}");
    Ok(())
}

/// `2s`, `500ms` or a number of milliseconds.
fn parse_duration(text: &str) -> anyhow::Result<std::time::Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "ms"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {text:?} (use e.g. 2s or 500ms)"))?;
    Ok(match unit.trim() {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        _ => bail!("invalid duration {text:?} (use e.g. 2s or 500ms)"),
    })
}

/// A libpq connection-string value, quoted.
fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A remap driver for the database `target` names, reaching the shards as `shard_user` (default: the catalog's
/// role and password; `SHARDCTL_SHARD_PASSWORD` for another role).
async fn remapper(
    target: &CatalogArgs,
    shard_user: Option<&str>,
    max_pause: &str,
) -> anyhow::Result<shardpool::sharding::remap::Remapper> {
    use shardpool::sharding::remap::{RemapOptions, Remapper, ShardAccess};
    let (cfg, users) = read_config(&target.config, &target.database)?;
    let user = pick_user(&users, target.user.as_deref())?;
    let t = connect(target).await?;
    let (role, password) = match shard_user {
        Some(u) => (u.to_owned(), std::env::var("SHARDCTL_SHARD_PASSWORD").ok()),
        None => (
            user.server_user().to_owned(),
            user.server_password().map(str::to_owned),
        ),
    };
    let shards = cfg
        .shards
        .iter()
        .map(|s| {
            let db = s.database(&target.database);
            let mut pg = tokio_postgres::Config::new();
            pg.host(&s.host)
                .port(s.port)
                .dbname(db)
                .user(&role)
                .application_name("shardctl remap");
            let mut conninfo = format!(
                "host={} port={} dbname={} user={}",
                conninfo_value(&s.host),
                s.port,
                conninfo_value(db),
                conninfo_value(&role)
            );
            if let Some(pw) = &password {
                pg.password(pw);
                conninfo.push_str(&format!(" password={}", conninfo_value(pw)));
            }
            ShardAccess { pg, conninfo }
        })
        .collect();
    let opts = RemapOptions {
        max_pause: parse_duration(max_pause)?,
        ..RemapOptions::default()
    };
    let mut r = Remapper {
        cfg,
        catalog: t.client,
        shards,
        opts,
        log: Box::new(|line: &str| println!("{line}")),
        progress: None,
    };
    // On a terminal, a live block (phase, a bar per table, lag, ETA) with the log lines above it; otherwise the log
    // lines alone, one per phase, for scripts and log files.
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        use shardpool::sharding::remap::display::Display;
        use std::sync::{Arc, Mutex, PoisonError};
        let display = Arc::new(Mutex::new(Display::new(Box::new(std::io::stdout()))));
        let d = Arc::clone(&display);
        r.log =
            Box::new(move |line: &str| d.lock().unwrap_or_else(PoisonError::into_inner).line(line));
        r.progress = Some(Box::new(move |event| {
            display
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .event(event)
        }));
    }
    Ok(r)
}

async fn rebalance(args: &RebalanceArgs, url: Option<String>) -> anyhow::Result<()> {
    use shardpool::sharding::remap::plan::format_vshards;
    use shardpool::sharding::remap::rebalance::{self, Measure};
    let mut r = remapper(&args.target, args.shard_user.as_deref(), &args.max_pause).await?;
    let p = if args.by == Measure::Load {
        let mut instances = args.instances.clone();
        if instances.is_empty() {
            instances.extend(url);
        }
        let sample = parse_duration(&args.sample)?;
        if !sample.is_zero() {
            println!(
                "counting statements per vshard on {} instance(s) for {}",
                instances.len(),
                args.sample
            );
        }
        let weights = rebalance::measure_load(&instances, &args.target.database, sample).await?;
        r.propose(&weights).await?
    } else {
        r.rebalance(args.by).await?
    };
    let unit = args.by.unit();
    println!("per shard ({unit}): now -> after the moves");
    for (i, (b, a)) in p.before.iter().zip(&p.after).enumerate() {
        println!("  shard {i}: {b} -> {a}");
    }
    if p.moves.is_empty() {
        println!("balanced: no move narrows the gap between the fullest and the emptiest shard");
        return Ok(());
    }
    println!("moves:");
    for m in &p.moves {
        println!(
            "  shardctl remap --database {} --vshards {} --to {}   # from shard {}, {} {unit}",
            args.target.database,
            format_vshards(&m.vshards),
            m.target,
            m.source,
            m.amount
        );
    }
    if args.dry_run {
        return Ok(());
    }
    for m in &p.moves {
        let row = r.start(&m.vshards, m.target).await?;
        println!("remap {}: {}", row.id, row.phase);
    }
    Ok(())
}

async fn remap(args: &RemapArgs) -> anyhow::Result<()> {
    use shardpool::sharding::remap::plan;
    let cfg = read_config(&args.target.config, &args.target.database)?.0;
    let mut r = remapper(&args.target, args.shard_user.as_deref(), &args.max_pause).await?;
    match args.action {
        RemapAction::Start => {
            let (Some(list), Some(to)) = (&args.vshards, args.to) else {
                bail!("remap needs --vshards and --to (e.g. --vshards 0-15,40 --to 1)");
            };
            let vshards = plan::parse_vshards(list, cfg.vshards)?;
            if args.dry_run {
                let (p, report) = r.plan(&vshards, to).await?;
                print!("{}{}", p.describe(None), report.render());
                return Ok(());
            }
            let row = r.start(&vshards, to).await?;
            println!("remap {}: {}", row.id, row.phase);
        }
        RemapAction::Status => {
            let rows = r.status().await?;
            if rows.is_empty() {
                println!("no remaps");
            }
            for row in rows {
                println!(
                    "remap {}: {} vshards {} shard {} -> {}{} rows_copied={} lag_bytes={} pause_ms={}{}",
                    row.id,
                    row.phase,
                    plan::format_vshards(&row.vshards),
                    row.source,
                    row.target,
                    if row.frozen { " (writes held)" } else { "" },
                    row.rows_copied,
                    row.lag_bytes,
                    row.pause_ms,
                    row.error.map(|e| format!(" error: {e}")).unwrap_or_default()
                );
            }
        }
        RemapAction::Abort => {
            let row = r.abort().await?;
            println!("remap {} aborted; nothing left on the shards", row.id);
        }
        RemapAction::Verify => {
            let problems = r.verify().await?;
            if problems.is_empty() {
                println!("verify: source and target agree");
            } else {
                for p in &problems {
                    println!("{p}");
                }
                bail!("verify: {} differences", problems.len());
            }
        }
        RemapAction::Rollback => {
            let row = r.rollback().await?;
            println!(
                "rolled back: remap {} moved the vshards back ({})",
                row.id, row.phase
            );
        }
        RemapAction::Cleanup => {
            let row = r.cleanup(args.force).await?;
            println!("remap {}: {}", row.id, row.phase);
        }
    }
    Ok(())
}
