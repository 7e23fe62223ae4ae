//! Per-process state shared by every throwaway server: binaries, account and template.
//!
//! `initdb` costs about a second of CPU, while copying its result costs a tenth of that, so
//! each process runs it once into a template directory and copies the template for every new
//! primary. The template outlives all servers and is deliberately left on disk at exit;
//! every process sweeps away directories of processes that have died (and any server they
//! left running, e.g. a `shardpool demo` interrupted with Ctrl-C), so nothing accumulates.

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::unistd::Pid;
use tempfile::TempDir;

use super::binaries::PgBinaries;
use super::command::{run, RunAs};
use super::config::INCLUDE_LINE;
use super::process::{is_alive, recorded_postmaster, stop_foreign};
use super::ClusterError;

/// Every scratch directory is named `sp-pg-<owner pid>-<random>` so the sweep can tell whose
/// it is.
const PREFIX: &str = "sp-pg-";

/// Unix socket paths are limited to ~107 bytes; stay well below (see [`scratch_root`]).
const MAX_SOCKET_PATH: usize = 100;

/// Worst-case length of what follows the scratch root in a socket path:
/// `/sp-pg-4194304-XXXXXX/.s.PGSQL.65535`.
const SOCKET_SUFFIX_LEN: usize = 36;

/// What every server of this process needs; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Toolkit {
    pub(crate) bins: PgBinaries,
    pub(crate) run_as: RunAs,
    /// A freshly initdb'ed data directory, never started, to be copied.
    pub(crate) template_data: PathBuf,
}

/// The process-wide toolkit, built on first use. A failure is not cached, so a later call
/// (after, say, installing PostgreSQL) can still succeed.
pub(crate) fn toolkit() -> Result<Toolkit, ClusterError> {
    static CACHE: Mutex<Option<Toolkit>> = Mutex::new(None);
    let mut cached = CACHE.lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(toolkit) = cached.as_ref() {
        return Ok(toolkit.clone());
    }
    let bins = PgBinaries::locate()?;
    let run_as = RunAs::detect()?;
    sweep_abandoned(&scratch_root(&run_as));
    let template_data = build_template(&bins, &run_as)?;
    let toolkit = Toolkit {
        bins,
        run_as,
        template_data,
    };
    *cached = Some(toolkit.clone());
    Ok(toolkit)
}

/// A new private directory for one server (data directory, socket and log), owned by the
/// server's account and deleted when dropped.
pub(crate) fn scratch_dir(run_as: &RunAs) -> Result<TempDir, ClusterError> {
    let root = scratch_root(run_as);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(&root)
        .map_err(|e| ClusterError::io(format!("create a directory in {}", root.display()), e))?;
    run_as.give(dir.path())?;
    Ok(dir)
}

/// `std::env::temp_dir()`, unless its path is too long for the server's Unix socket or the
/// server's account could not reach it; then `/tmp`, which always works on Linux.
fn scratch_root(run_as: &RunAs) -> PathBuf {
    let preferred = env::temp_dir();
    let fits = preferred.as_os_str().len() + SOCKET_SUFFIX_LEN < MAX_SOCKET_PATH;
    let reachable = matches!(run_as, RunAs::CurrentUser) || others_can_traverse(&preferred);
    if fits && reachable {
        preferred
    } else {
        PathBuf::from("/tmp")
    }
}

/// Whether a user other than the owner can walk down to `path` (e.g. not under `/root`).
fn others_can_traverse(path: &Path) -> bool {
    path.ancestors().all(|dir| {
        fs::metadata(dir)
            .map(|meta| meta.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// Runs `initdb` once into a directory that is kept (not deleted) for the process lifetime.
fn build_template(bins: &PgBinaries, run_as: &RunAs) -> Result<PathBuf, ClusterError> {
    let dir = scratch_dir(run_as)?.keep();
    let data = dir.join("data");
    let mut initdb = run_as.command(bins.tool("initdb"));
    initdb
        .args([
            "--no-sync",
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg("-D")
        .arg(&data)
        .current_dir(&dir);
    run(&mut initdb)?;
    append(&data.join("postgresql.conf"), INCLUDE_LINE)?;
    Ok(data)
}

fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| ClusterError::io(format!("append to {}", path.display()), e))
}

/// Deletes scratch directories whose owning process is gone, stopping any server still
/// running in them. Best effort: failures are logged, never fatal.
fn sweep_abandoned(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(owner) = owner_pid(&name.to_string_lossy()) else {
            continue;
        };
        if owner.as_raw() == std::process::id() as i32 || is_alive(owner) {
            continue;
        }
        remove_abandoned(&entry.path());
    }
}

/// Deletes the scratch directories of `owner` (which the caller knows to be gone, even if its pid still shows as
/// a zombie), stopping any server still running in them.
pub(crate) fn sweep_owner(owner: u32) -> Result<(), ClusterError> {
    let root = scratch_root(&RunAs::detect()?);
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        if owner_pid(&entry.file_name().to_string_lossy())
            .is_some_and(|p| p.as_raw() == owner as i32)
        {
            remove_abandoned(&entry.path());
        }
    }
    Ok(())
}

fn remove_abandoned(dir: &Path) {
    if let Some(postmaster) = recorded_postmaster(&dir.join("data")) {
        if is_alive(postmaster) {
            tracing::info!(%postmaster, dir = %dir.display(), "stopping abandoned server");
            stop_foreign(postmaster);
        }
    }
    if let Err(error) = fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), %error, "could not remove abandoned scratch dir");
    }
}

/// `sp-pg-1234-abcdef` → 1234.
fn owner_pid(dir_name: &str) -> Option<Pid> {
    let rest = dir_name.strip_prefix(PREFIX)?;
    let pid: i32 = rest.split('-').next()?.parse().ok()?;
    (pid > 0).then(|| Pid::from_raw(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_comes_from_the_directory_name() {
        assert_eq!(owner_pid("sp-pg-1234-abcdef"), Some(Pid::from_raw(1234)));
        assert_eq!(owner_pid("sp-pg-abcdef"), None);
        assert_eq!(owner_pid("tmp.1234"), None);
    }

    #[test]
    fn root_directories_are_traversable() {
        assert!(others_can_traverse(Path::new("/")));
    }
}
