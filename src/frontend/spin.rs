//! Busy-polling a socket instead of sleeping on it, for a client that is alone with the proxy.
//!
//! Going through a pooler costs a lone client two extra sleep/wake-up cycles per round trip: the proxy sleeps
//! until the server answers, and again until the client's next message. On virtual machines and idle CPUs a
//! wake-up costs tens of microseconds (an inter-processor interrupt, a VM exit, a CPU leaving its idle state),
//! which is most of the latency a pooler adds. When no other session has work, a session that expects an answer
//! soon polls its socket with non-blocking reads for up to `spin_wait`, so its thread never sleeps and nobody has
//! to wake it.
//!
//! The session yields to the runtime between tries, and a yielding task makes the worker poll the I/O driver
//! (without blocking) before it runs again: other sessions' messages are noticed while one spins, the worker
//! runs them, and the spin stops because it is no longer alone. A spin that held its thread instead would leave
//! everybody else's readiness unread until it ended.
//!
//! Spinning is only worth its CPU when the proxy has nothing else to do and the answer does come within the
//! budget, so:
//! - only a session whose last transactions came one after another, with no other session's in between, spins:
//!   at ten busy clients the moments when one of them happens to be alone are frequent but too short to pay;
//! - it stops as soon as another session starts a transaction;
//! - a spin that comes back empty makes the next ones of its kind skip, exponentially longer for each failure in
//!   a row: slow queries and clients that think between queries stop costing CPU after a few tries;
//! - it never happens on a machine with one CPU (it would take the CPU from the server it waits for), nor on a
//!   current-thread runtime (an embedding application's, whose other work the spin would slow).

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// At most this much is read by a spin: the rest of a large reply is read the usual way.
const SPIN_READ_MAX: usize = 4 * 1024;

/// Transactions a session must have started in a row, nobody else's in between, before it may spin.
const LONE_STREAK: u32 = 2;

/// The most spin chances skipped after failures in a row.
const MAX_SKIP: u32 = 4096;

/// What the spinning session waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaiting {
    /// The reply to what it just sent its server (its own transaction is in flight).
    Server,
    /// Its client's next message (it has no transaction in flight).
    Client,
}

impl Awaiting {
    pub fn as_str(self) -> &'static str {
        match self {
            Awaiting::Server => "server",
            Awaiting::Client => "client",
        }
    }

    /// Transactions in flight that are the spinning session's own.
    fn own(self) -> usize {
        match self {
            Awaiting::Server => 1,
            Awaiting::Client => 0,
        }
    }
}

/// Counts the sessions with a transaction in flight, so a session can tell whether it is alone.
#[derive(Debug, Default)]
pub struct SpinGate {
    in_flight: AtomicUsize,
    /// The session that started the latest transaction, and how many it started in a row before that one.
    last_starter: AtomicU64,
    streak: AtomicU32,
    /// Set once at start: the runtime and the machine have room for a spinning thread.
    allowed: AtomicBool,
    /// Backoff for spins awaiting a server, and for those awaiting a client: their successes differ (fast queries
    /// from a client that thinks between them).
    backoff: [Backoff; 2],
}

#[derive(Debug, Default)]
struct Backoff {
    /// Spins done, and those that found data (SHOW SPIN): whether spinning pays on this machine.
    spins: AtomicU64,
    found: AtomicU64,
    /// Spin chances still to skip.
    skip: AtomicU32,
    /// What the next failure sets `skip` to (doubling per failure in a row; 0 after a success).
    penalty: AtomicU32,
}

impl Backoff {
    /// Whether this chance is to be skipped (and counts it).
    fn skipping(&self) -> bool {
        let left = self.skip.load(Ordering::Relaxed);
        if left == 0 {
            return false;
        }
        // Racing sessions may skip one chance too few or too many; the count is a heuristic.
        self.skip.store(left - 1, Ordering::Relaxed);
        true
    }

    fn record(&self, found: bool) {
        self.spins.fetch_add(1, Ordering::Relaxed);
        if found {
            self.found.fetch_add(1, Ordering::Relaxed);
            self.penalty.store(0, Ordering::Relaxed);
            return;
        }
        let next = (self.penalty.load(Ordering::Relaxed) * 2).clamp(1, MAX_SKIP);
        self.penalty.store(next, Ordering::Relaxed);
        self.skip.store(next, Ordering::Relaxed);
    }
}

impl SpinGate {
    /// Decides, from inside the runtime that will run the sessions, whether spinning can ever pay off: only with a
    /// second thread (a multi-thread runtime, or thread-per-core's other cores) to serve everyone else while one
    /// session spins, and a second CPU to run it.
    pub fn configure_for_current_runtime(&self, thread_per_core: bool) {
        let multi_thread = thread_per_core
            || tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.allowed
            .store(multi_thread && cpus >= 2, Ordering::Relaxed);
    }

    /// Session `id` starts a transaction.
    pub fn enter(&self, id: u64) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if self.last_starter.load(Ordering::Relaxed) == id {
            let n = self.streak.load(Ordering::Relaxed);
            self.streak.store(n.saturating_add(1), Ordering::Relaxed);
        } else {
            self.last_starter.store(id, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether session `id`, awaiting `what`, is the only one with work, and has been for its last transactions.
    pub fn alone(&self, id: u64, what: Awaiting) -> bool {
        self.allowed.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) <= what.own()
            && self.streak.load(Ordering::Relaxed) >= LONE_STREAK
            && self.last_starter.load(Ordering::Relaxed) == id
    }

    /// Whether anybody else started a transaction or has one in flight (checked while spinning).
    fn still_alone(&self, id: u64, what: Awaiting) -> bool {
        self.in_flight.load(Ordering::Relaxed) <= what.own()
            && self.last_starter.load(Ordering::Relaxed) == id
    }

    fn backoff(&self, what: Awaiting) -> &Backoff {
        &self.backoff[what as usize]
    }

    /// Spins done for `what`, those that found data, and the chances still to be skipped after failures.
    pub fn counters(&self, what: Awaiting) -> (u64, u64, u32) {
        let b = self.backoff(what);
        (
            b.spins.load(Ordering::Relaxed),
            b.found.load(Ordering::Relaxed),
            b.skip.load(Ordering::Relaxed),
        )
    }
}

/// What one try of a spin found.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This many bytes were appended to the buffer (0: the peer closed its end).
    Read(usize),
    /// Nothing yet: yield to the runtime and try again.
    Again,
    /// The budget is spent or another session got busy: wait the usual way.
    GaveUp,
}

/// A spin in progress: started by `SpinGate::begin`, then tried (yielding in between) until it reads or gives up.
#[derive(Debug)]
pub struct Spin {
    id: u64,
    what: Awaiting,
    until: Instant,
}

impl SpinGate {
    /// Starts a spin for session `id` awaiting `what`, which `alone` has just said may spin, unless its kind is
    /// backing off. (Callers check `alone` before reading their budget from the configuration.)
    pub fn begin(&self, id: u64, what: Awaiting, budget: Duration) -> Option<Spin> {
        if self.backoff(what).skipping() {
            return None;
        }
        Some(Spin {
            id,
            what,
            until: Instant::now() + budget,
        })
    }
}

impl Spin {
    /// One non-blocking read of `stream` into `buf` (at most `SPIN_READ_MAX`, and only into spare capacity). The
    /// socket is read directly, so it must carry the protocol's bytes as they are (TCP or a Unix socket, not TLS).
    pub fn attempt<S: std::os::fd::AsFd>(
        &self,
        gate: &SpinGate,
        stream: &S,
        buf: &mut BytesMut,
    ) -> io::Result<Attempt> {
        let start = buf.len();
        let room = (buf.capacity() - start).min(SPIN_READ_MAX);
        if room == 0 {
            return Ok(self.end(gate, Attempt::GaveUp));
        }
        // Zeroed so the read has initialised bytes to write over (no unsafe); small, so cheap next to the syscall.
        buf.resize(start + room, 0);
        let read = loop {
            match (&*socket2::SockRef::from(stream)).read(&mut buf[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(n) => {
                buf.truncate(start + n);
                Ok(self.end(gate, Attempt::Read(n)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf.truncate(start);
                if Instant::now() >= self.until || !gate.still_alone(self.id, self.what) {
                    return Ok(self.end(gate, Attempt::GaveUp));
                }
                Ok(Attempt::Again)
            }
            Err(e) => {
                buf.truncate(start);
                Err(e)
            }
        }
    }

    /// Tries until a read or giving up, yielding to the runtime in between. `None`: it gave up.
    pub async fn run(
        self,
        gate: &SpinGate,
        stream: &TcpStream,
        buf: &mut BytesMut,
    ) -> io::Result<Option<usize>> {
        loop {
            match self.attempt(gate, stream, buf)? {
                Attempt::Read(n) => return Ok(Some(n)),
                Attempt::GaveUp => return Ok(None),
                Attempt::Again => tokio::task::yield_now().await,
            }
        }
    }

    fn end(&self, gate: &SpinGate, a: Attempt) -> Attempt {
        gate.backoff(self.what)
            .record(matches!(a, Attempt::Read(_)));
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const ME: u64 = 7;
    const OTHER: u64 = 8;
    const LONG: Duration = Duration::from_secs(3600);

    /// A whole spin as a session runs it: `None` if it was not begun or gave up.
    async fn spin_read(
        gate: &SpinGate,
        id: u64,
        what: Awaiting,
        budget: Duration,
        stream: &TcpStream,
        buf: &mut BytesMut,
    ) -> io::Result<Option<usize>> {
        match gate.begin(id, what, budget) {
            Some(spin) => spin.run(gate, stream, buf).await,
            None => Ok(None),
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// A gate on which session `ME` has been alone for a while.
    fn open_gate() -> SpinGate {
        let g = SpinGate::default();
        g.allowed.store(true, Ordering::Relaxed);
        for _ in 0..=LONE_STREAK {
            g.enter(ME);
            g.leave();
        }
        assert!(g.alone(ME, Awaiting::Client));
        g
    }

    #[tokio::test]
    async fn reads_what_arrives_while_spinning_and_appends_it() {
        let (mut a, b) = pair().await;
        let gate = open_gate();
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b">");
        // The writer runs between the spinner's tries: the spin yields, so one thread is enough for both.
        let writer = tokio::spawn(async move {
            a.write_all(b"hello").await.unwrap();
            a
        });
        let got = spin_read(&gate, ME, Awaiting::Client, LONG, &b, &mut buf)
            .await
            .unwrap();
        assert_eq!(got, Some(5));
        assert_eq!(&buf[..], b">hello");
        drop(writer.await.unwrap());
        let got = spin_read(&gate, ME, Awaiting::Client, LONG, &b, &mut buf)
            .await
            .unwrap();
        assert_eq!(got, Some(0), "a closed peer reads as zero bytes");
        assert_eq!(gate.counters(Awaiting::Client), (2, 2, 0));
    }

    #[tokio::test]
    async fn gives_up_when_another_session_gets_busy() {
        let (_a, b) = pair().await;
        let gate = std::sync::Arc::new(open_gate());
        let busy = std::sync::Arc::clone(&gate);
        // Another session's transaction starts while this one spins (with a budget that would outlast the test).
        tokio::spawn(async move { busy.enter(OTHER) });
        let mut buf = BytesMut::with_capacity(64);
        let got = spin_read(&gate, ME, Awaiting::Client, LONG, &b, &mut buf)
            .await
            .unwrap();
        assert_eq!(got, None);
        assert!(buf.is_empty());
        assert_eq!(gate.counters(Awaiting::Client), (1, 0, 1));
    }

    #[tokio::test]
    async fn a_reset_connection_is_an_error_and_leaves_the_buffer_as_it_was() {
        let (a, b) = pair().await;
        // Closing with a zero linger sends RST instead of FIN: the next read fails instead of returning 0.
        socket2::SockRef::from(&a)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(a);
        let gate = open_gate();
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"kept");
        let err = spin_read(&gate, ME, Awaiting::Server, LONG, &b, &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(&buf[..], b"kept");
    }

    #[tokio::test]
    async fn gives_up_when_the_budget_runs_out() {
        let (_a, b) = pair().await;
        let gate = open_gate();
        let mut buf = BytesMut::with_capacity(64);
        let got = spin_read(
            &gate,
            ME,
            Awaiting::Client,
            Duration::from_micros(50),
            &b,
            &mut buf,
        )
        .await
        .unwrap();
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn failures_in_a_row_skip_ever_more_chances_and_a_success_resets_them() {
        let (mut a, b) = pair().await;
        let gate = open_gate();
        let mut buf = BytesMut::with_capacity(64);
        let short = Duration::from_micros(1);
        let mut skipped_after = Vec::new();
        for _ in 0..3 {
            let got = spin_read(&gate, ME, Awaiting::Server, short, &b, &mut buf)
                .await
                .unwrap();
            assert_eq!(got, None);
            skipped_after.push(gate.counters(Awaiting::Server).2);
            gate.backoff(Awaiting::Server)
                .skip
                .store(0, Ordering::Relaxed);
        }
        assert_eq!(skipped_after, [1, 2, 4]);
        // The other kind of spin is not held back by these failures.
        assert_eq!(gate.counters(Awaiting::Client).2, 0);
        a.write_all(b"x").await.unwrap();
        let got = spin_read(&gate, ME, Awaiting::Server, LONG, &b, &mut buf)
            .await
            .unwrap();
        assert_eq!(got, Some(1));
        assert_eq!(
            gate.backoff(Awaiting::Server)
                .penalty
                .load(Ordering::Relaxed),
            0
        );
        // Skipped chances are counted down without reading.
        gate.backoff(Awaiting::Server)
            .skip
            .store(2, Ordering::Relaxed);
        a.write_all(b"y").await.unwrap();
        for _ in 0..2 {
            assert!(gate.begin(ME, Awaiting::Server, LONG).is_none());
        }
        let got = spin_read(&gate, ME, Awaiting::Server, LONG, &b, &mut buf)
            .await
            .unwrap();
        assert_eq!(got, Some(1));
        assert_eq!(&buf[..], b"xy");
    }

    #[test]
    fn a_current_thread_runtime_never_spins() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let gate = open_gate();
        rt.block_on(async { gate.configure_for_current_runtime(false) });
        assert!(!gate.alone(ME, Awaiting::Client));
    }

    #[test]
    fn alone_needs_a_streak_and_nobody_else_in_flight() {
        let gate = SpinGate::default();
        gate.allowed.store(true, Ordering::Relaxed);
        gate.enter(ME);
        gate.leave();
        assert!(
            !gate.alone(ME, Awaiting::Client),
            "one transaction is no streak"
        );
        for _ in 0..LONE_STREAK {
            gate.enter(ME);
            gate.leave();
        }
        assert!(gate.alone(ME, Awaiting::Client));
        gate.enter(ME);
        assert!(gate.alone(ME, Awaiting::Server));
        assert!(
            !gate.alone(ME, Awaiting::Client),
            "its own transaction is still in flight"
        );
        gate.leave();
        gate.enter(OTHER);
        assert!(!gate.alone(ME, Awaiting::Client));
        gate.leave();
        assert!(
            !gate.alone(ME, Awaiting::Client),
            "somebody else came in between"
        );
        assert!(
            !gate.alone(OTHER, Awaiting::Client),
            "and has no streak yet"
        );
    }
}
