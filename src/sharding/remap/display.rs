//! The remap's progress on a terminal: a block of lines redrawn in place (phase, a bar per table copied with rows,
//! bytes and an ETA, the catch-up's lag and when it should be small enough), with the remap's log lines printed
//! above it as they come. Plain ANSI cursor movement, nothing else: `shardctl` uses it only when its output is a
//! terminal, and prints one line per phase otherwise.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use super::replicate::TableCopy;
use super::run::Progress;
use super::state::Phase;

/// The block is redrawn at most this often (a phase change redraws at once).
const REDRAW: Duration = Duration::from_millis(100);
/// Width of a bar, in characters.
const BAR: usize = 24;

/// What the display knows so far.
#[derive(Debug)]
struct State {
    id: i64,
    phase: Option<Phase>,
    started: Instant,
    phase_started: Instant,
    /// The cutover's last step.
    step: Option<String>,
    tables: Vec<TableCopy>,
    expected: BTreeMap<String, u64>,
    synced: (i64, i64),
    copy_started: Option<Instant>,
    /// The first lag seen in this catch-up, and the latest.
    lag_first: Option<(Instant, i64)>,
    lag: Option<(Instant, i64)>,
}

/// A progress block on a terminal.
pub struct Display {
    out: Box<dyn Write + Send + Sync>,
    state: State,
    /// Lines of the block on screen now.
    drawn: usize,
    last_draw: Option<Instant>,
}

impl Display {
    pub fn new(out: Box<dyn Write + Send + Sync>) -> Display {
        let now = Instant::now();
        Display {
            out,
            state: State {
                id: 0,
                phase: None,
                started: now,
                phase_started: now,
                step: None,
                tables: Vec::new(),
                expected: BTreeMap::new(),
                synced: (0, 0),
                copy_started: None,
                lag_first: None,
                lag: None,
            },
            drawn: 0,
            last_draw: None,
        }
    }

    /// Takes in a progress event; redraws when something the operator must see changed, or every `REDRAW`.
    pub fn event(&mut self, event: &Progress<'_>) {
        let now = Instant::now();
        let s = &mut self.state;
        let urgent = match *event {
            Progress::Phase { id, phase } => {
                let changed = s.phase != Some(phase);
                s.id = id;
                if changed {
                    s.phase = Some(phase);
                    s.phase_started = now;
                    s.step = None;
                    if phase == Phase::CatchingUp {
                        s.lag_first = None;
                        s.lag = None;
                    }
                }
                changed
            }
            Progress::Copy {
                done,
                total,
                tables,
                expected,
            } => {
                s.copy_started.get_or_insert(now);
                s.synced = (done, total);
                s.tables = tables.to_vec();
                if s.expected.is_empty() {
                    s.expected = expected.clone();
                }
                false
            }
            Progress::Lag(bytes) => {
                s.lag_first.get_or_insert((now, bytes));
                s.lag = Some((now, bytes));
                false
            }
            Progress::Step(step) => {
                s.step = Some(step.to_owned());
                true
            }
        };
        if urgent
            || self
                .last_draw
                .is_none_or(|t| now.duration_since(t) >= REDRAW)
        {
            self.redraw(now);
        }
    }

    /// Prints a log line above the block.
    pub fn line(&mut self, text: &str) {
        let mut buf = self.clear();
        buf.push_str(text);
        buf.push('\n');
        self.drawn = 0;
        self.write(&buf);
        self.redraw(Instant::now());
    }

    /// Moves the cursor to the start of the block and clears from there down.
    fn clear(&self) -> String {
        if self.drawn == 0 {
            String::new()
        } else {
            format!("\x1b[{}F\x1b[J", self.drawn)
        }
    }

    fn redraw(&mut self, now: Instant) {
        // Nothing to show before the remap has an id and a phase (the plan and the preflight report come first).
        if self.state.phase.is_none() {
            return;
        }
        let lines = render(&self.state, now);
        let mut buf = self.clear();
        for l in &lines {
            buf.push_str("\x1b[2K");
            buf.push_str(l);
            buf.push('\n');
        }
        self.drawn = lines.len();
        self.last_draw = Some(now);
        self.write(&buf);
    }

    fn write(&mut self, text: &str) {
        // A terminal that went away is no reason to stop a remap.
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

/// `[#######.........]` for `done` of `total`.
fn bar(done: u64, total: u64) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as u128 * BAR as u128) / total as u128) as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled))
}

/// Bytes for people: `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration for people: `42s`, `3m05s`, `2h10m`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// Time left at the rate seen so far; `None` before there is a rate.
fn eta(done: u64, total: u64, elapsed: Duration) -> Option<Duration> {
    if done == 0 || total <= done || elapsed.is_zero() {
        return None;
    }
    let rate = done as f64 / elapsed.as_secs_f64();
    Some(Duration::from_secs_f64((total - done) as f64 / rate))
}

/// The block's lines.
fn render(s: &State, now: Instant) -> Vec<String> {
    let mut out = Vec::new();
    let phase = s.phase.map_or("starting", |p| p.as_str());
    let mut head = format!(
        "remap {} | phase {phase} ({}) | {} elapsed",
        s.id,
        human_duration(now.duration_since(s.phase_started)),
        human_duration(now.duration_since(s.started))
    );
    if let Some(step) = &s.step {
        head.push_str(&format!(" | {step}"));
    }
    out.push(head);
    if !s.tables.is_empty() {
        let width = s.tables.iter().map(|t| t.table.len()).max().unwrap_or(0);
        let elapsed = s
            .copy_started
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        let (mut all_done, mut all_expected) = (0u64, 0u64);
        for t in &s.tables {
            let expected = s.expected.get(&t.table).copied();
            let line = if t.done {
                format!(
                    "  {:width$}  {}  done, {} rows, {}",
                    t.table,
                    bar(1, 1),
                    t.rows,
                    human_bytes(t.bytes)
                )
            } else {
                let total = expected.unwrap_or(0).max(t.rows);
                let eta = eta(t.rows, total, elapsed)
                    .map(|d| format!(", ETA {}", human_duration(d)))
                    .unwrap_or_default();
                format!(
                    "  {:width$}  {}  {} of ~{} rows, {}{eta}",
                    t.table,
                    bar(t.rows, total),
                    t.rows,
                    expected.map_or("?".to_owned(), |e| e.to_string()),
                    human_bytes(t.bytes)
                )
            };
            all_done += t.rows;
            all_expected += expected.unwrap_or(t.rows).max(t.rows);
            out.push(line);
        }
        let bytes: u64 = s.tables.iter().map(|t| t.bytes).sum();
        let eta = eta(all_done, all_expected, elapsed)
            .filter(|_| s.phase == Some(Phase::Copying))
            .map(|d| format!(", ETA {}", human_duration(d)))
            .unwrap_or_default();
        out.push(format!(
            "  copy: {} of {} tables synchronised, {all_done} rows, {}{eta}",
            s.synced.0,
            s.synced.1,
            human_bytes(bytes)
        ));
    }
    if let Some((at, lag)) = s.lag {
        let mut line = format!(
            "  replication lag: {}",
            human_bytes(u64::try_from(lag).unwrap_or(0))
        );
        if let Some((first_at, first)) = s.lag_first {
            let gone = first.saturating_sub(lag);
            let took = at.duration_since(first_at);
            if gone > 0 && lag > 0 && !took.is_zero() {
                let rate = gone as f64 / took.as_secs_f64();
                line.push_str(&format!(
                    ", catching up {}/s, ETA {}",
                    human_bytes(rate as u64),
                    human_duration(Duration::from_secs_f64(lag as f64 / rate))
                ));
            }
        }
        out.push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Screen(Arc<Mutex<Vec<u8>>>);

    impl Write for Screen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn renders_bars_rows_bytes_and_eta() {
        let now = Instant::now();
        let expected = BTreeMap::from([("accounts".to_owned(), 1000), ("orders".to_owned(), 2000)]);
        let s = State {
            id: 7,
            phase: Some(Phase::Copying),
            started: now - Duration::from_secs(75),
            phase_started: now - Duration::from_secs(10),
            step: None,
            tables: vec![
                TableCopy {
                    table: "accounts".into(),
                    rows: 1000,
                    bytes: 3 * 1024 * 1024,
                    done: true,
                },
                TableCopy {
                    table: "orders".into(),
                    rows: 500,
                    bytes: 2048,
                    done: false,
                },
            ],
            expected,
            synced: (1, 3),
            copy_started: Some(now - Duration::from_secs(10)),
            lag_first: None,
            lag: None,
        };
        let lines = render(&s, now);
        assert_eq!(lines[0], "remap 7 | phase copying (10s) | 1m15s elapsed");
        assert_eq!(
            lines[1],
            format!(
                "  accounts  [{}]  done, 1000 rows, 3.0 MiB",
                "#".repeat(BAR)
            )
        );
        // 500 rows in 10 s: 1500 more take 30 s.
        assert_eq!(
            lines[2],
            format!(
                "  orders    [{}{}]  500 of ~2000 rows, 2.0 KiB, ETA 30s",
                "#".repeat(6),
                ".".repeat(18)
            )
        );
        // 1500 of 3000 rows in 10 s.
        assert_eq!(
            lines[3],
            "  copy: 1 of 3 tables synchronised, 1500 rows, 3.0 MiB, ETA 10s"
        );
    }

    #[test]
    fn lag_eta_from_how_fast_it_shrinks() {
        let now = Instant::now();
        let mut s = State {
            id: 1,
            phase: Some(Phase::CatchingUp),
            started: now,
            phase_started: now,
            step: Some("cutover: fence".into()),
            tables: Vec::new(),
            expected: BTreeMap::new(),
            synced: (0, 0),
            copy_started: None,
            lag_first: Some((now - Duration::from_secs(4), 10 * 1024 * 1024)),
            lag: Some((now, 2 * 1024 * 1024)),
        };
        let lines = render(&s, now);
        assert_eq!(
            lines[0],
            "remap 1 | phase catching_up (0s) | 0s elapsed | cutover: fence"
        );
        assert_eq!(
            lines[1],
            "  replication lag: 2.0 MiB, catching up 2.0 MiB/s, ETA 1s"
        );
        // Not shrinking: no ETA.
        s.lag_first = s.lag;
        assert_eq!(render(&s, now)[1], "  replication lag: 2.0 MiB");
    }

    #[test]
    fn redraws_in_place_and_prints_lines_above() {
        let screen = Screen::default();
        let mut d = Display::new(Box::new(screen.clone()));
        d.event(&Progress::Phase {
            id: 3,
            phase: Phase::Copying,
        });
        d.line("copy: 0 of 2 tables synchronised");
        let text = String::from_utf8(screen.0.lock().unwrap().clone()).unwrap();
        // The one-line block is drawn, then cleared (cursor up one line, clear down) for the log line, then drawn
        // again below it.
        let block = "\x1b[2Kremap 3 | phase copying (0s) | 0s elapsed\n";
        assert_eq!(
            text,
            format!("{block}\x1b[1F\x1b[Jcopy: 0 of 2 tables synchronised\n{block}")
        );
    }
}
