//! Background tasks that must not die quietly.
//!
//! The replication monitor, the catalog follower, the column reader, the directory recorder and the pool janitors
//! all run for the life of the process. A detached task that panics or returns an error simply stops: routing
//! freezes on a stale catalog, a replica's lag is never measured again, a pool's idle servers are never retired, and
//! nothing says so. Each of them therefore runs under [`Tasks::spawn`]: every run is a task of its own (a panic
//! becomes a `JoinError`, not a dead process), a failure is logged and counted, and the task is started again after
//! an exponential backoff that resets once a run has stayed up for a while. `SHOW TASKS` lists them.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// How a run of a supervised task ended when it did not fail: it has nothing left to do (its cluster was retired,
/// its pool closed), so it is not restarted.
pub type RunResult = Result<(), String>;

/// Backoff between restarts, and how long a run must last for the next failure to start again from `min`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Running,
    /// Failed; waiting out the backoff before the next run.
    Restarting,
    /// Ended with nothing left to do (or the runtime ended): not restarted, no longer listed.
    Finished,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Restarting => "restarting",
            TaskState::Finished => "finished",
        }
    }
}

/// What `SHOW TASKS` shows of one task.
#[derive(Debug)]
pub struct TaskHealth {
    /// What kind of task: "replica monitor", "catalog follower", ...
    pub kind: &'static str,
    /// Which one: database, server, pool.
    pub name: String,
    runs: AtomicU64,
    failures: AtomicU64,
    state: AtomicU8,
    last_error: Mutex<Option<String>>,
}

impl TaskHealth {
    fn new(kind: &'static str, name: String) -> TaskHealth {
        TaskHealth {
            kind,
            name,
            runs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            state: AtomicU8::new(TaskState::Running as u8),
            last_error: Mutex::new(None),
        }
    }

    /// Runs started so far (1 + restarts).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> TaskState {
        match self.state.load(Ordering::Relaxed) {
            s if s == TaskState::Restarting as u8 => TaskState::Restarting,
            s if s == TaskState::Finished as u8 => TaskState::Finished,
            _ => TaskState::Running,
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_state(&self, state: TaskState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// The registry of supervised tasks of one proxy (one per `Context`).
#[derive(Debug, Default)]
pub struct Tasks {
    live: Mutex<Vec<Weak<TaskHealth>>>,
    backoff: Backoff,
}

impl Tasks {
    /// A registry whose tasks restart with `backoff` (tests use short ones).
    pub fn with_backoff(backoff: Backoff) -> Tasks {
        Tasks {
            live: Mutex::new(Vec::new()),
            backoff,
        }
    }

    /// Runs `make()` on the current runtime, again and again while runs fail (an `Err` or a panic), until a run
    /// ends with `Ok(())` or the runtime shuts down. Returns the task's health record, which lives as long as the
    /// task. Does nothing outside a runtime.
    pub fn spawn<F, Fut>(
        self: &Arc<Self>,
        kind: &'static str,
        name: impl Into<String>,
        mut make: F,
    ) -> Option<Arc<TaskHealth>>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = RunResult> + Send + 'static,
    {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let health = Arc::new(TaskHealth::new(kind, name.into()));
        {
            let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            live.retain(|t| t.strong_count() > 0);
            live.push(Arc::downgrade(&health));
        }
        let backoff = self.backoff;
        let record = Arc::clone(&health);
        rt.spawn(async move {
            let mut delay = backoff.min;
            loop {
                record.runs.fetch_add(1, Ordering::Relaxed);
                record.set_state(TaskState::Running);
                let started = Instant::now();
                let error = match tokio::spawn(make()).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => e,
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
                    // Cancelled: the runtime is shutting down.
                    Err(_) => break,
                };
                if started.elapsed() >= backoff.healthy_after {
                    delay = backoff.min;
                }
                record.failures.fetch_add(1, Ordering::Relaxed);
                *record
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
                record.set_state(TaskState::Restarting);
                tracing::error!(task = record.kind, name = %record.name, %error, retry_in = ?delay, "background task failed; restarting");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
            }
            record.set_state(TaskState::Finished);
        });
        Some(health)
    }

    /// The tasks still running (or restarting), in start order.
    pub fn snapshot(&self) -> Vec<Arc<TaskHealth>> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|t| {
            t.upgrade()
                .is_some_and(|t| t.state() != TaskState::Finished)
        });
        live.iter().filter_map(Weak::upgrade).collect()
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn quick() -> Arc<Tasks> {
        Arc::new(Tasks::with_backoff(Backoff {
            min: Duration::from_millis(1),
            max: Duration::from_millis(4),
            healthy_after: Duration::from_secs(60),
        }))
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn panics_and_errors_restart_the_task_until_it_finishes() {
        let tasks = quick();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let health = tasks
            .spawn("test", "flaky", move || {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => panic!("catalog row of an unexpected type"),
                        1 => Err("connection refused".to_owned()),
                        _ => Ok(()),
                    }
                }
            })
            .unwrap();
        until("third run", || calls.load(Ordering::SeqCst) == 3).await;
        until("finished", || health.state() == TaskState::Finished).await;
        assert_eq!(health.runs(), 3);
        assert_eq!(health.failures(), 2);
        assert_eq!(health.last_error().as_deref(), Some("connection refused"));
        // Finished tasks leave the registry.
        assert!(tasks.snapshot().is_empty());
    }

    #[tokio::test]
    async fn a_failing_task_is_visible_while_it_restarts() {
        let tasks = quick();
        let health = tasks
            .spawn("test", "always", || async {
                panic!("boom");
            })
            .unwrap();
        until("several failures", || health.failures() >= 3).await;
        let listed = tasks.snapshot();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "always");
        assert_eq!(listed[0].last_error().as_deref(), Some("panicked: boom"));
    }

    #[test]
    fn outside_a_runtime_nothing_is_spawned() {
        let tasks = quick();
        assert!(tasks.spawn("test", "none", || async { Ok(()) }).is_none());
    }
}
