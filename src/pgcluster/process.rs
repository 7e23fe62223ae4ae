//! Owning and stopping postmaster processes.
//!
//! We spawn `postgres` as our own child instead of letting `pg_ctl` daemonize it. `pg_ctl`
//! orphans the postmaster to PID 1, and in minimal containers and microVMs (including our CI
//! machines) PID 1 never reaps orphans: a postmaster killed with SIGKILL then lingers as a
//! zombie whose PID still answers `kill(pid, 0)`, so PostgreSQL refuses to restart on that
//! data directory ("lock file postmaster.pid already exists"). As the parent we reap the
//! postmaster ourselves, and readiness is read from `postmaster.pid` exactly as `pg_ctl -w`
//! does. Waiting is always for an observable condition, polled with a deadline.

use std::fs;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::binaries::PgBinaries;
use super::command::{describe, RunAs};
use super::ClusterError;

/// How often conditions are re-checked: short, because each test waits on many of them.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Bound for a clean shutdown, generous because a fast shutdown writes a checkpoint.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// One observation of a condition being waited for.
pub(crate) enum Probe<T> {
    Ready(T),
    /// Not yet; the text explains the current state if the wait ends up timing out.
    Pending(String),
}

/// Polls `probe` until it is ready, it fails, or `timeout` passes.
pub(crate) fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Probe<T>, ClusterError>,
) -> Result<T, ClusterError> {
    let started = Instant::now();
    loop {
        let detail = match probe()? {
            Probe::Ready(value) => return Ok(value),
            Probe::Pending(detail) => detail,
        };
        if started.elapsed() >= timeout {
            return Err(ClusterError::Timeout {
                what: what.to_owned(),
                waited: started.elapsed(),
                detail,
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Starts a postmaster on `data_dir`, appending its output to `log_path`.
pub(crate) fn spawn(
    run_as: &RunAs,
    bins: &PgBinaries,
    data_dir: &Path,
    log_path: &Path,
) -> Result<Child, ClusterError> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| ClusterError::io(format!("open {}", log_path.display()), e))?;
    run_as.give(log_path)?;
    let log_for_stderr = log
        .try_clone()
        .map_err(|e| ClusterError::io("duplicate server log handle", e))?;
    let mut cmd = run_as.command(bins.tool("postgres"));
    cmd.arg("-D").arg(data_dir);
    if let Some(parent) = data_dir.parent() {
        // The server must be able to stat its working directory; ours may be /root.
        cmd.current_dir(parent);
    }
    cmd.stdout(Stdio::from(log))
        .stderr(Stdio::from(log_for_stderr));
    tracing::debug!(command = %describe(&cmd), "starting postmaster");
    cmd.spawn().map_err(|source| ClusterError::Spawn {
        command: describe(&cmd),
        source,
    })
}

/// Why a start attempt did not produce a running server.
pub(crate) enum StartFailure {
    /// The postmaster exited (and was reaped); `port_in_use` says whether retrying on another
    /// port can help.
    Exited {
        port_in_use: bool,
        error: ClusterError,
    },
    /// Anything else; the postmaster may still be running and must be stopped by the caller.
    Other(ClusterError),
}

/// Waits until the postmaster reports "ready" (primary) or "standby" (hot standby) in
/// `postmaster.pid`, the same signal `pg_ctl -w` uses.
pub(crate) fn wait_until_accepting(
    child: &mut Child,
    data_dir: &Path,
    log_path: &Path,
    log_offset: u64,
    timeout: Duration,
) -> Result<(), StartFailure> {
    let pid = child.id();
    let exit_status = wait_for("the server to accept connections", timeout, || {
        let exited = child
            .try_wait()
            .map_err(|e| ClusterError::io("wait for postmaster", e))?;
        if exited.is_some() {
            return Ok(Probe::Ready(exited));
        }
        Ok(match postmaster_status(data_dir, pid) {
            Some(status) if status == "ready" || status == "standby" => Probe::Ready(None),
            Some(status) => Probe::Pending(format!("postmaster.pid status is {status:?}")),
            None => Probe::Pending("postmaster.pid not written yet".to_owned()),
        })
    })
    .map_err(|error| StartFailure::Other(with_log(error, log_path, log_offset)))?;
    match exit_status {
        None => Ok(()),
        Some(status) => Err(exit_failure(
            data_dir,
            status,
            log_tail(log_path, log_offset),
        )),
    }
}

/// Explains an early postmaster exit; the log says whether another port could help.
fn exit_failure(data_dir: &Path, status: ExitStatus, log: String) -> StartFailure {
    let port_in_use =
        log.contains("already in use") || log.contains("could not create any TCP/IP sockets");
    let error = ClusterError::CommandFailed {
        command: format!("postgres -D {}", data_dir.display()),
        status: status.to_string(),
        stderr: log,
    };
    StartFailure::Exited { port_in_use, error }
}

/// The status line of `postmaster.pid`, if the file belongs to the process `pid`.
fn postmaster_status(data_dir: &Path, pid: u32) -> Option<String> {
    let contents = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = contents.lines().collect();
    let owner: u32 = lines.first()?.trim().parse().ok()?;
    // Line 8 holds the status; it is padded with spaces while being rewritten in place.
    let status = lines.get(7)?.trim();
    (owner == pid && !status.is_empty()).then(|| status.to_owned())
}

/// The PID recorded in a data directory's lock file, used to find servers left running.
pub(crate) fn recorded_postmaster(data_dir: &Path) -> Option<Pid> {
    let contents = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = contents.lines().next()?.trim().parse().ok()?;
    Some(Pid::from_raw(pid))
}

/// Appends the tail of the server log to a timeout, where the real reason usually is.
fn with_log(error: ClusterError, log_path: &Path, log_offset: u64) -> ClusterError {
    match error {
        ClusterError::Timeout {
            what,
            waited,
            detail,
        } => ClusterError::Timeout {
            what,
            waited,
            detail: format!("{detail}; server log: {}", log_tail(log_path, log_offset)),
        },
        other => other,
    }
}

/// The last lines the server wrote since `offset` (earlier runs share the same log file).
pub(crate) fn log_tail(log_path: &Path, offset: u64) -> String {
    const LINES: usize = 20;
    let Ok(bytes) = fs::read(log_path) else {
        return format!("(no log at {})", log_path.display());
    };
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

/// Asks the postmaster to shut down with `signal` (SIGINT = fast, SIGQUIT = immediate) and
/// reaps it; if it does not exit in time it is killed and the timeout is reported.
pub(crate) fn shutdown(
    mut child: Child,
    signal: Signal,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let pid = pid_of(&child);
    match signal::kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(source) => return Err(signal_error(signal, pid, source)),
    }
    let exited = wait_for("the server to shut down", timeout, || {
        match child.try_wait() {
            Ok(Some(_)) => Ok(Probe::Ready(())),
            Ok(None) => Ok(Probe::Pending(format!("postmaster {pid} still running"))),
            Err(e) => Err(ClusterError::io("wait for postmaster", e)),
        }
    });
    if exited.is_err() {
        // Never leave a server behind: the caller is done with it either way.
        let _ = child.kill();
        let _ = child.wait();
    }
    exited
}

/// Simulates a crash: SIGKILL for the postmaster and every process it started.
///
/// The postmaster is frozen first so it cannot fork while its children are collected, and
/// the children are killed too because PostgreSQL will not reuse a data directory whose
/// shared memory is still attached by a surviving backend.
pub(crate) fn crash(mut child: Child) -> Result<(), ClusterError> {
    let pid = pid_of(&child);
    match signal::kill(pid, Signal::SIGSTOP) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(source) => return Err(signal_error(Signal::SIGSTOP, pid, source)),
    }
    let children = children_of(pid);
    for &kid in &children {
        let _ = signal::kill(kid, Signal::SIGKILL);
    }
    // SIGKILL also ends a stopped process; an error here only means it already exited.
    let _ = child.kill();
    child
        .wait()
        .map_err(|e| ClusterError::io("reap killed postmaster", e))?;
    wait_for("killed server processes to exit", SHUTDOWN_TIMEOUT, || {
        Ok(match children.iter().find(|kid| is_alive(**kid)) {
            Some(kid) => Probe::Pending(format!("process {kid} still alive")),
            None => Probe::Ready(()),
        })
    })
}

/// Stops a postmaster we did not start (left behind by a process that died) and waits for it.
pub(crate) fn stop_foreign(pid: Pid) {
    if signal::kill(pid, Signal::SIGQUIT).is_err() {
        return;
    }
    let gone = wait_for(
        "an abandoned server to exit",
        Duration::from_secs(10),
        || {
            Ok(if is_alive(pid) {
                Probe::Pending(format!("process {pid} still alive"))
            } else {
                Probe::Ready(())
            })
        },
    );
    if gone.is_err() {
        let _ = signal::kill(pid, Signal::SIGKILL);
    }
}

/// Whether `pid` is running. Zombies count as dead: they hold no resources and, where PID 1
/// does not reap, they may never disappear.
pub(crate) fn is_alive(pid: Pid) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Direct children of `parent`, found through /proc (Linux only, like the rest of shardpool).
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .filter(|&pid| matches!(proc_stat(pid), Some((_, ppid)) if ppid == parent))
        .collect()
}

/// State letter and parent PID from /proc/PID/stat.
fn proc_stat(pid: Pid) -> Option<(char, Pid)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The command name may contain spaces and parentheses, so parse from the last ')'.
fn parse_stat(stat: &str) -> Option<(char, Pid)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, Pid::from_raw(ppid)))
}

fn pid_of(child: &Child) -> Pid {
    // Linux PIDs are at most 2^22, so the conversion cannot truncate.
    Pid::from_raw(child.id() as i32)
}

fn signal_error(signal: Signal, pid: Pid, source: Errno) -> ClusterError {
    ClusterError::Signal {
        signal: signal.to_string(),
        pid: pid.as_raw(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let stat = "8704 (postgres: a) b) Z 1 8704 8704 0 -1 4227084";
        assert_eq!(parse_stat(stat), Some(('Z', Pid::from_raw(1))));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn port_conflicts_are_recognised_in_the_log() {
        use std::os::unix::process::ExitStatusExt;
        let log = "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
                   FATAL:  could not create any TCP/IP sockets";
        let failure = exit_failure(Path::new("/d"), ExitStatus::from_raw(256), log.to_owned());
        assert!(matches!(
            failure,
            StartFailure::Exited {
                port_in_use: true,
                ..
            }
        ));
        let other = exit_failure(
            Path::new("/d"),
            ExitStatus::from_raw(256),
            "FATAL: bad".into(),
        );
        assert!(matches!(
            other,
            StartFailure::Exited {
                port_in_use: false,
                ..
            }
        ));
    }

    #[test]
    fn the_current_process_is_alive() {
        assert!(is_alive(Pid::this()));
    }
}
