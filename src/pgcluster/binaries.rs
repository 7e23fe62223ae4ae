//! Finding the PostgreSQL server binaries.
//!
//! Distributions scatter them: Debian keeps them in `/usr/lib/postgresql/<major>/bin` (only
//! client wrappers are on `PATH`), source builds and Homebrew put them on `PATH`, and CI
//! images may carry several majors side by side. Tests must find them without configuration,
//! while still letting a developer pin a version through `SHARDPOOL_PG_BINDIR`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::command::{describe, run};
use super::ClusterError;

/// Overrides discovery, e.g. to test against a different major than the newest installed.
const BINDIR_ENV: &str = "SHARDPOOL_PG_BINDIR";

/// Tools this module runs; a directory lacking any of them cannot host a throwaway cluster.
const REQUIRED_TOOLS: [&str; 5] = ["initdb", "postgres", "pg_basebackup", "pg_isready", "psql"];

/// The directory holding one PostgreSQL installation's executables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Finds an installation: `SHARDPOOL_PG_BINDIR`, then `pg_config --bindir`, then `initdb`
    /// on `PATH`, then the highest `/usr/lib/postgresql/*/bin`.
    pub fn locate() -> Result<PgBinaries, ClusterError> {
        if let Some(dir) = env::var_os(BINDIR_ENV) {
            let dir = PathBuf::from(dir);
            return PgBinaries::validated(&dir).ok_or_else(|| {
                ClusterError::BinariesNotFound(format!(
                    "{BINDIR_ENV}={} does not contain all of {REQUIRED_TOOLS:?}",
                    dir.display()
                ))
            });
        }
        let probes: [fn() -> Option<PathBuf>; 3] = [
            bindir_from_pg_config,
            bindir_from_path,
            newest_debian_bindir,
        ];
        probes
            .iter()
            .filter_map(|probe| probe())
            .find_map(|dir| PgBinaries::validated(&dir))
            .ok_or_else(|| {
                ClusterError::BinariesNotFound(format!(
                    "tried pg_config --bindir, initdb on PATH and /usr/lib/postgresql/*/bin; \
                     set {BINDIR_ENV} to a directory containing {REQUIRED_TOOLS:?}"
                ))
            })
    }

    /// The server's major version, so callers can skip features an old server lacks.
    pub fn version_major(&self) -> Result<u32, ClusterError> {
        let mut cmd = Command::new(self.tool("postgres"));
        cmd.arg("--version");
        let output = run(&mut cmd)?;
        parse_major_version(&output).ok_or_else(|| ClusterError::UnexpectedOutput {
            command: describe(&cmd),
            output,
        })
    }

    /// Path of one executable of this installation (also handy for `pgbench` in benchmarks).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    fn validated(dir: &Path) -> Option<PgBinaries> {
        let complete = REQUIRED_TOOLS.iter().all(|tool| dir.join(tool).is_file());
        complete.then(|| PgBinaries {
            bindir: dir.to_path_buf(),
        })
    }
}

fn bindir_from_pg_config() -> Option<PathBuf> {
    let output = run(Command::new("pg_config").arg("--bindir")).ok()?;
    Some(PathBuf::from(output.trim()))
}

/// `initdb` on `PATH` may be a symlink into the real installation, so resolve it first.
fn bindir_from_path() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    let initdb = env::split_paths(&path)
        .map(|dir| dir.join("initdb"))
        .find(|candidate| candidate.is_file())?;
    let resolved = initdb.canonicalize().ok()?;
    resolved.parent().map(Path::to_path_buf)
}

fn newest_debian_bindir() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = parse_dotted_version(&entry.file_name().to_string_lossy())?;
            Some((version, entry.path().join("bin")))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bindir)| bindir)
}

/// "9.6" → [9, 6], "15" → [15]; anything else is not a version directory.
fn parse_dotted_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Reads the major from e.g. "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" or
/// "postgres (PostgreSQL) 17beta1".
fn parse_major_version(version_output: &str) -> Option<u32> {
    let after_name = version_output.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = after_name
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_prerelease_versions() {
        let debian = "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n";
        assert_eq!(parse_major_version(debian), Some(15));
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 17beta1"),
            Some(17)
        );
        assert_eq!(parse_major_version("something else"), None);
    }

    #[test]
    fn orders_versioned_directories_numerically() {
        let mut versions: Vec<Vec<u32>> = ["9.6", "15", "10"]
            .iter()
            .filter_map(|name| parse_dotted_version(name))
            .collect();
        versions.sort();
        assert_eq!(versions.last(), Some(&vec![15]));
        assert_eq!(parse_dotted_version("common"), None);
    }
}
