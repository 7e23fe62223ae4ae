//! Running PostgreSQL tools as the right OS user with a predictable environment.
//!
//! The server refuses to run as root, yet tests and containers often are root. Rather than
//! asking everyone to set up a user, we drop to the distribution's `postgres` account for the
//! server-side tools (using std's safe `uid`/`gid` hooks, no `unsafe`). We also strip inherited
//! `PG*` variables: a developer's `PGHOST` or `PGPASSWORD` must not redirect a test's `psql`
//! to their real database.

use std::env;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::unistd::{geteuid, User};

use super::ClusterError;

/// The account the cluster's files and processes belong to.
#[derive(Clone, Debug)]
pub(crate) enum RunAs {
    /// Not root: PostgreSQL is happy to run as whoever we are.
    CurrentUser,
    /// Root: switch to this unprivileged account for every server-side tool.
    Account { uid: u32, gid: u32, home: PathBuf },
}

impl RunAs {
    /// Root must delegate to `postgres`; anyone else runs the tools themselves.
    pub(crate) fn detect() -> Result<RunAs, ClusterError> {
        if !geteuid().is_root() {
            return Ok(RunAs::CurrentUser);
        }
        match User::from_name("postgres") {
            Ok(Some(user)) => Ok(RunAs::Account {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
            }),
            Ok(None) => Err(ClusterError::NoUnprivilegedUser(
                "no such user in the user database".into(),
            )),
            Err(errno) => Err(ClusterError::NoUnprivilegedUser(errno.to_string())),
        }
    }

    /// A command for a server-side tool, already switched to the cluster's account.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        scrub_libpq_env(&mut cmd);
        cmd.stdin(Stdio::null());
        if let RunAs::Account { uid, gid, home } = self {
            // HOME matters for libpq: pg_basebackup -R records a passfile path under it.
            cmd.uid(*uid).gid(*gid).env("HOME", home);
        }
        cmd
    }

    /// Hands a file or directory we created to the cluster's account so the server can use it.
    pub(crate) fn give(&self, path: &Path) -> Result<(), ClusterError> {
        match self {
            RunAs::CurrentUser => Ok(()),
            RunAs::Account { uid, gid, .. } => {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                    .map_err(|e| ClusterError::io(format!("chown {}", path.display()), e))
            }
        }
    }
}

/// A client-side command (psql, pg_isready) that runs as ourselves but ignores `PG*` settings.
pub(crate) fn client_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    scrub_libpq_env(&mut cmd);
    cmd.stdin(Stdio::null());
    cmd
}

fn scrub_libpq_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// Runs to completion and returns stdout; a non-zero exit becomes an error carrying stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, ClusterError> {
    tracing::debug!(command = %describe(cmd), "running");
    let output = cmd.output().map_err(|source| ClusterError::Spawn {
        command: describe(cmd),
        source,
    })?;
    check_success(cmd, output)
}

fn check_success(cmd: &Command, output: Output) -> Result<String, ClusterError> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Some tools report failures on stdout only; never return an empty diagnosis.
    let diagnosis = if stderr.trim().is_empty() {
        stdout.trim().to_owned()
    } else {
        stderr.trim().to_owned()
    };
    Err(ClusterError::CommandFailed {
        command: describe(cmd),
        status: output.status.to_string(),
        stderr: diagnosis,
    })
}

/// A copy-pasteable rendering of a command line for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let args = cmd.get_args().map(|arg| {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            format!("{arg:?}")
        } else {
            arg.into_owned()
        }
    });
    std::iter::once(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_arguments_with_spaces() {
        let mut cmd = Command::new("psql");
        cmd.args(["-c", "select 1", ""]);
        assert_eq!(describe(&cmd), r#"psql -c "select 1" """#);
    }

    #[test]
    fn failures_carry_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]))
            .expect_err("the command exits non-zero");
        let text = err.to_string();
        assert!(text.contains("oops"), "{text}");
        assert!(text.contains("sh -c"), "{text}");
    }
}
