//! [`PgServer`]: one running throwaway server and everything a test does with it.
//!
//! A server owns its scratch directory and its postmaster process, so the Rust ownership
//! rules double as cleanup rules: whatever path a test takes out of scope, panics included,
//! `Drop` stops the postmaster and deletes the files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::command::{client_command, run};
use super::config::{
    check_name, quote_ident, quote_literal, render_conf, render_hba, HbaRule, ReplicaSettings,
    ServerOptions, GENERATED_CONF,
};
use super::process::{self, Probe, StartFailure, SHUTDOWN_TIMEOUT};
use super::template::{scratch_dir, toolkit, Toolkit};
use super::{free_port, AuthMethod, ClusterError};

/// Servers only ever listen on loopback: they are for tests and demos, never for production.
const HOST: &str = "127.0.0.1";

/// Bound for a start, including crash recovery after `kill()`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound for a replica to reach streaming, or for a config reload to take effect.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// A free port is only free until someone binds it; this many tries make a collision
/// between parallel tests vanishingly unlikely to fail a run.
const PORT_ATTEMPTS: u32 = 5;

/// Name of the server log inside the data directory.
const LOG_FILE: &str = "server.log";

/// A running (or deliberately stopped) PostgreSQL server in a private temporary directory.
#[derive(Debug)]
pub struct PgServer {
    toolkit: Toolkit,
    opts: ServerOptions,
    /// `Some` for replicas: what their configuration adds on top of the primary's.
    standby: Option<Standby>,
    port: u16,
    data_dir: PathBuf,
    /// Per-user `pg_hba.conf` rules; behind a mutex because `create_user` takes `&self`.
    hba_rules: Mutex<Vec<HbaRule>>,
    /// `None` once stopped or killed.
    postmaster: Option<Child>,
    /// Deleted when dropped, which Rust does after `Drop::drop` has stopped the server.
    scratch: TempDir,
}

#[derive(Clone, Debug)]
struct Standby {
    apply_delay: Option<Duration>,
}

impl PgServer {
    /// initdb + start a primary on a free 127.0.0.1 port. Superuser is `postgres` (trust over
    /// TCP from 127.0.0.1 for the superuser only). Only the process's first call runs
    /// `initdb`; later ones copy its result, which is ten times cheaper.
    pub fn start_primary(opts: &ServerOptions) -> Result<PgServer, ClusterError> {
        let toolkit = toolkit()?;
        let scratch = scratch_dir(&toolkit.run_as)?;
        let data_dir = scratch.path().join("data");
        let mut copy = toolkit.run_as.command("cp");
        copy.arg("-a")
            .arg(&toolkit.template_data)
            .arg(&data_dir)
            .current_dir(scratch.path());
        run(&mut copy)?;
        let mut server = PgServer::new(toolkit, scratch, opts.clone(), None);
        server.start_on_free_port()?;
        Ok(server)
    }

    /// pg_basebackup -R from self, start it as a streaming replica on a new free port; wait
    /// until it is in recovery AND the primary's pg_stat_replication shows it streaming.
    /// `apply_delay` sets recovery_min_apply_delay, for testing reads that must not go to a
    /// lagging replica.
    pub fn start_replica(&self, apply_delay: Option<Duration>) -> Result<PgServer, ClusterError> {
        let scratch = scratch_dir(&self.toolkit.run_as)?;
        self.base_backup_into(&scratch.path().join("data"))?;
        let standby = Standby { apply_delay };
        let mut replica = PgServer::new(
            self.toolkit.clone(),
            scratch,
            self.opts.clone(),
            Some(standby),
        );
        // The backup copied the primary's pg_hba.conf; keep our record of it in step.
        *replica
            .hba_rules
            .get_mut()
            .unwrap_or_else(|p| p.into_inner()) = self.rules();
        replica.start_on_free_port()?;
        self.wait_for_streaming(&replica)?;
        Ok(replica)
    }

    /// Waits until `replica` is in recovery and streams from this server, e.g. after
    /// restarting either of them.
    pub fn wait_for_streaming(&self, replica: &PgServer) -> Result<(), ClusterError> {
        let name = replica
            .application_name()
            .ok_or(ClusterError::NotAReplica(replica.port))?;
        let streaming = format!(
            "SELECT count(*) FROM pg_stat_replication \
             WHERE application_name = {} AND state = 'streaming'",
            quote_literal(&name)
        );
        let what = format!("replica {name} to stream from port {}", self.port);
        process::wait_for(&what, SYNC_TIMEOUT, || {
            let in_recovery = replica.sql("postgres", "SELECT pg_is_in_recovery()");
            if !matches!(in_recovery.as_deref(), Ok("t")) {
                return Ok(Probe::Pending(format!(
                    "pg_is_in_recovery(): {in_recovery:?}"
                )));
            }
            Ok(match self.sql("postgres", &streaming) {
                Ok(count) if count.parse::<u64>().is_ok_and(|n| n > 0) => Probe::Ready(()),
                other => Probe::Pending(format!("streaming walsenders: {other:?}")),
            })
        })
    }

    pub fn host(&self) -> &str {
        HOST
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log, the first place to look when a test against it fails.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// Run SQL as the superuser through the `psql` binary, return trimmed stdout (unaligned,
    /// tuples only, so `select 1` gives "1"). Going through psql rather than a client library
    /// keeps this module synchronous and independent of the code under test.
    pub fn sql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let mut psql = self.psql(database);
        psql.arg("-c").arg(sql);
        Ok(run(&mut psql)?.trim().to_owned())
    }

    /// Creates a login role whose password is stored as SCRAM or md5 and adds a matching
    /// `pg_hba.conf` rule, so the proxy's handling of each auth method can be tested.
    /// `AuthMethod::Trust` creates the role without a password and a trust rule.
    pub fn create_user(
        &self,
        name: &str,
        password: &str,
        method: AuthMethod,
    ) -> Result<(), ClusterError> {
        check_name(name)?;
        let create = format!("CREATE ROLE {} LOGIN", quote_ident(name));
        let mut psql = self.psql("postgres");
        match password_encryption(method) {
            None => psql.arg("-c").arg(create),
            Some(encryption) => psql
                .arg("-c")
                .arg(format!("SET password_encryption = '{encryption}'"))
                .arg("-c")
                .arg(format!("{create} PASSWORD {}", quote_literal(password))),
        };
        run(&mut psql)?;
        self.set_hba_rule(HbaRule {
            user: name.to_owned(),
            method,
        })
    }

    pub fn create_database(&self, name: &str, owner: &str) -> Result<(), ClusterError> {
        check_name(name)?;
        check_name(owner)?;
        let sql = format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(name),
            quote_ident(owner)
        );
        self.sql("postgres", &sql).map(drop)
    }

    /// A libpq-style URL for tests: postgres://user:password@127.0.0.1:port/db
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{}:{}@{HOST}:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(database)
        )
    }

    /// Fast shutdown (clients are disconnected, a checkpoint is written), waiting for exit.
    /// Does nothing if the server is not running.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        match self.postmaster.take() {
            Some(child) => process::shutdown(child, Signal::SIGINT, SHUTDOWN_TIMEOUT),
            None => Ok(()),
        }
    }

    /// Simulates a crash for failure tests: SIGKILL for the postmaster and all its server
    /// processes. The data directory stays, so `restart()` goes through crash recovery.
    /// With the default `synchronous_commit=off`, commits from the last few hundred
    /// milliseconds are lost, just as in a real crash; tests that need committed data to
    /// survive should set `synchronous_commit=on` in their [`ServerOptions`].
    pub fn kill(&mut self) -> Result<(), ClusterError> {
        match self.postmaster.take() {
            Some(child) => process::crash(child),
            None => Ok(()),
        }
    }

    /// Starts again on the same port and data directory (stopping first if still running),
    /// so clients and the proxy can reconnect to the address they already know. A restarted
    /// replica accepts reads before it streams again; `primary.wait_for_streaming(&replica)`
    /// waits for the latter (it is not done here since the primary may be down on purpose).
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.stop()?;
        self.launch().map_err(|failure| self.abandon_start(failure))
    }

    fn new(
        toolkit: Toolkit,
        scratch: TempDir,
        opts: ServerOptions,
        standby: Option<Standby>,
    ) -> PgServer {
        PgServer {
            toolkit,
            opts,
            standby,
            port: 0,
            data_dir: scratch.path().join("data"),
            hba_rules: Mutex::new(Vec::new()),
            postmaster: None,
            scratch,
        }
    }

    /// Clones this server's data directory for a new replica; `-c fast` matters because the
    /// default spread checkpoint can take minutes.
    fn base_backup_into(&self, target: &Path) -> Result<(), ClusterError> {
        let port = self.port.to_string();
        let mut backup = self
            .toolkit
            .run_as
            .command(self.toolkit.bins.tool("pg_basebackup"));
        backup
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .args(["-h", HOST, "-p", &port, "-U", "postgres", "-D"])
            .arg(target);
        if let Some(parent) = target.parent() {
            backup.current_dir(parent);
        }
        run(&mut backup)?;
        // The primary's log came along; the replica starts its own.
        match fs::remove_file(target.join(LOG_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ClusterError::io(
                "remove the primary's log from the replica",
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Picks a port and starts, moving to another port when the chosen one was taken
    /// between `free_port()` and the server binding it.
    fn start_on_free_port(&mut self) -> Result<(), ClusterError> {
        let mut attempt = 1;
        loop {
            self.port = free_port();
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(StartFailure::Exited {
                    port_in_use: true,
                    error,
                }) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(port = self.port, %error, "port taken, retrying");
                    attempt += 1;
                }
                Err(failure) => return Err(self.abandon_start(failure)),
            }
        }
    }

    /// Writes the configuration for the current port and starts the postmaster.
    fn launch(&mut self) -> Result<(), StartFailure> {
        self.write_config().map_err(StartFailure::Other)?;
        let log = self.log_file();
        let log_offset = fs::metadata(&log).map(|meta| meta.len()).unwrap_or(0);
        let child = process::spawn(
            &self.toolkit.run_as,
            &self.toolkit.bins,
            &self.data_dir,
            &log,
        )
        .map_err(StartFailure::Other)?;
        let child = self.postmaster.insert(child);
        let started =
            process::wait_until_accepting(child, &self.data_dir, &log, log_offset, START_TIMEOUT);
        if let Err(StartFailure::Exited { .. }) = &started {
            // Already reaped by the wait; nothing left to stop.
            self.postmaster = None;
        }
        started?;
        self.check_ready().map_err(StartFailure::Other)
    }

    /// Makes sure a half-started server is not left running and returns the error to report.
    fn abandon_start(&mut self, failure: StartFailure) -> ClusterError {
        if let Some(child) = self.postmaster.take() {
            let _ = process::shutdown(child, Signal::SIGQUIT, SHUTDOWN_TIMEOUT);
        }
        match failure {
            StartFailure::Exited { error, .. } | StartFailure::Other(error) => error,
        }
    }

    /// A second opinion after `postmaster.pid` said "ready": a real client can get in.
    fn check_ready(&self) -> Result<(), ClusterError> {
        let mut isready = client_command(self.toolkit.bins.tool("pg_isready"));
        isready
            .args(["-h", HOST, "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "10"]);
        run(&mut isready).map(drop)
    }

    fn write_config(&self) -> Result<(), ClusterError> {
        let replica = self.standby.as_ref().map(|standby| ReplicaSettings {
            name: self.application_name().unwrap_or_default(),
            apply_delay: standby.apply_delay,
        });
        let conf = render_conf(&self.opts, self.port, self.scratch.path(), replica.as_ref());
        self.write_owned(&self.data_dir.join(GENERATED_CONF), &conf)?;
        self.write_hba()
    }

    fn write_hba(&self) -> Result<(), ClusterError> {
        let hba = render_hba(&self.rules());
        self.write_owned(&self.data_dir.join("pg_hba.conf"), &hba)
    }

    fn write_owned(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        fs::write(path, contents)
            .map_err(|e| ClusterError::io(format!("write {}", path.display()), e))?;
        self.toolkit.run_as.give(path)
    }

    fn rules(&self) -> Vec<HbaRule> {
        self.hba_rules
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Replaces any earlier rule for the same user, rewrites `pg_hba.conf` and reloads.
    fn set_hba_rule(&self, rule: HbaRule) -> Result<(), ClusterError> {
        {
            let mut rules = self
                .hba_rules
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            rules.retain(|existing| existing.user != rule.user);
            rules.push(rule);
        }
        self.write_hba()?;
        self.reload_config()
    }

    /// `pg_reload_conf()` only signals the postmaster; a new session's `pg_conf_load_time()`
    /// moving forward proves the postmaster (which owns pg_hba.conf) has re-read its files.
    fn reload_config(&self) -> Result<(), ClusterError> {
        let before = self.sql("postgres", "SELECT pg_conf_load_time()")?;
        self.sql("postgres", "SELECT pg_reload_conf()")?;
        let reloaded = format!(
            "SELECT pg_conf_load_time() > {}::timestamptz",
            quote_literal(&before)
        );
        process::wait_for("the configuration reload", SYNC_TIMEOUT, || {
            Ok(match self.sql("postgres", &reloaded) {
                Ok(answer) if answer == "t" => Probe::Ready(()),
                other => Probe::Pending(format!("reloaded: {other:?}")),
            })
        })
    }

    fn psql(&self, database: &str) -> Command {
        let mut psql = client_command(self.toolkit.bins.tool("psql"));
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", HOST, "-p", &self.port.to_string(), "-U", "postgres"])
            .arg("-d")
            .arg(database)
            .env("PGCONNECT_TIMEOUT", "10");
        psql
    }

    /// How the primary's `pg_stat_replication` names this replica (it is the replica's
    /// `cluster_name`, which the walreceiver uses as its application name).
    fn application_name(&self) -> Option<String> {
        self.standby
            .as_ref()
            .map(|_| format!("sp_replica_{}", self.port))
    }
}

impl Drop for PgServer {
    /// Immediate shutdown: the data is about to be deleted, so there is nothing to flush.
    /// The scratch directory is removed afterwards when the `TempDir` field drops.
    fn drop(&mut self) {
        if let Some(child) = self.postmaster.take() {
            if let Err(error) = process::shutdown(child, Signal::SIGQUIT, SHUTDOWN_TIMEOUT) {
                tracing::warn!(port = self.port, %error, "could not stop throwaway server");
            }
        }
    }
}

fn password_encryption(method: AuthMethod) -> Option<&'static str> {
    match method {
        AuthMethod::Trust => None,
        AuthMethod::Md5 => Some("md5"),
        AuthMethod::ScramSha256 => Some("scram-sha-256"),
    }
}

/// Escapes everything but RFC 3986 unreserved characters, so any password fits in a URL.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_components_are_percent_encoded() {
        assert_eq!(percent_encode("p@ss:w/rd é"), "p%40ss%3Aw%2Frd%20%C3%A9");
        assert_eq!(percent_encode("plain-name_1.x~"), "plain-name_1.x~");
    }
}
