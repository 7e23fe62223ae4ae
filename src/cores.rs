//! The thread-per-core runtime shape (`general.runtime = "thread_per_core"`): one single-threaded tokio runtime per
//! core, each accepting on a listener of its own (`SO_REUSEPORT`, so the kernel spreads new connections over them),
//! and every session staying on the core that accepted it. It exists because tokio's work-stealing scheduler was a
//! third of shardpool's user-space instructions per pooled transaction (worker parking, cross-thread wake-ups through
//! `futex` and eventfd, see docs/benchmarks.md, issue 15); a single-threaded runtime never parks a second worker.
//!
//! Pools stay shared between cores. A server's socket is registered with the I/O driver of the runtime that opened
//! it; used from a session on another core it would still work, but every read would wait for the other core's
//! driver to notice it and wake this one across threads. So a server is re-registered with the borrowing core's
//! runtime when it changes core ([`ServerConn::adopt`](crate::backend::ServerConn::adopt)), and a checkout prefers
//! an idle server already at home on the borrower's core.
//!
//! The runtime that calls [`crate::app::Proxy::start`] is core 0 (the binary's main thread); [`Cores`] starts the
//! others and stops them when dropped.

use std::cell::Cell;
use std::io;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static CORE: Cell<Option<u16>> = const { Cell::new(None) };
}

/// The core the calling thread serves in thread-per-core mode, `None` in a work-stealing runtime (or outside one).
pub fn current() -> Option<u16> {
    CORE.with(Cell::get)
}

/// Marks the calling thread as core `core`'s (its single-threaded runtime runs here).
pub fn mark_current(core: u16) {
    CORE.with(|c| c.set(Some(core)));
}

/// The cores after the first: one thread each, running a single-threaded runtime until this is dropped.
pub struct Cores {
    handles: Vec<Handle>,
    /// Dropping a sender ends its core's `block_on`, and with it the runtime and the tasks still on it.
    _stops: Vec<oneshot::Sender<()>>,
}

impl Cores {
    /// Starts cores `1..count` (core 0 is the caller's runtime).
    pub fn start(count: usize) -> io::Result<Cores> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for core in 1..count {
            let core = u16::try_from(core).map_err(|_| io::Error::other("too many cores"))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("shardpool-core-{core}"))
                .spawn(move || {
                    mark_current(core);
                    // Err when the sender is dropped: that is the stop signal.
                    let _ = runtime.block_on(stopped);
                })?;
        }
        Ok(Cores {
            handles,
            _stops: stops,
        })
    }

    /// The runtimes of cores 1, 2, ...
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

/// How many cores `workers` asks for: 0 means one per CPU.
pub fn count(workers: usize) -> usize {
    if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}
