//! A watchdog that stops a process's throwaway servers the moment that process dies, however it dies.
//!
//! `shardpool demo` stops its servers on Ctrl-C, and every later start sweeps directories whose owner died; but a
//! demo killed with SIGKILL (or aborted by a crash) runs no code at all, and its postmasters, now orphans, would
//! keep running with their data until someone starts another demo. The guard is a second process holding the read
//! end of a pipe whose only write end the owner holds: when the owner exits for any reason, the kernel closes that
//! end, the guard reads EOF, and sweeps the owner's scratch directories (stopping the servers found in them). No
//! signal handler and no `prctl` (which would need `unsafe` in a `pre_exec` hook) is involved.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use super::ClusterError;

/// The owner's side: keeps the pipe open for as long as it lives. Dropping it (or the owner dying) lets the guard
/// sweep; by then a clean shutdown has already removed everything, so the sweep finds nothing.
#[derive(Debug)]
pub struct Guard {
    _pipe: ChildStdin,
    _child: Child,
}

/// Starts `exe args…` as the guard of this process: the command must end up calling [`run_guard`] with this
/// process's id. It runs in a process group of its own, so a Ctrl-C meant for the owner does not stop it before it
/// has done its work, and with stdout closed, so whoever reads the owner's output sees it end with the owner.
pub fn spawn_guard(exe: &Path, args: &[&str]) -> Result<Guard, ClusterError> {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| ClusterError::Spawn {
        command: format!("{} {}", exe.display(), args.join(" ")),
        source,
    })?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| ClusterError::io("guard pipe", std::io::ErrorKind::BrokenPipe.into()))?;
    Ok(Guard {
        _pipe: pipe,
        _child: child,
    })
}

/// The guard's side: waits until standard input ends (the owner is gone), then stops the servers in the owner's
/// scratch directories and deletes them.
pub fn run_guard(owner: u32) -> Result<(), ClusterError> {
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A broken pipe means the same as EOF here: the owner is gone.
            Err(_) => break,
        }
    }
    super::template::sweep_owner(owner)
}
