//! Prometheus' text exposition format (version 0.0.4): `# HELP` and `# TYPE` once per family, then its samples,
//! label values escaped. Written by hand: the format is a few lines of rules, and a client library would bring its
//! own registry, a second bookkeeping next to the counters the admin console already reads.

use std::fmt::Write as _;

/// The content type a scrape is answered with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value: integers print exactly, floats in Rust's shortest round-trip form (which Prometheus parses).
pub trait Value {
    fn write_to(&self, out: &mut String);
}

impl Value for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for i64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for usize {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

impl Value for bool {
    fn write_to(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

/// The page being written.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn with_capacity(bytes: usize) -> Exposition {
        Exposition {
            out: String::with_capacity(bytes),
        }
    }

    /// Starts a family. Every sample of it must follow before the next family starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram series. `cumulative` holds one count per bound
    /// and a last one for `+Inf`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds_seconds: &[f64],
        cumulative: &[u64],
        sum_seconds: f64,
    ) {
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        for (i, count) in cumulative.iter().enumerate() {
            le.clear();
            match bounds_seconds.get(i) {
                Some(b) => b.write_to(&mut le),
                None => le.push_str("+Inf"),
            }
            self.out.push_str(&bucket);
            write_labels(&mut self.out, labels, Some(&le));
            self.out.push(' ');
            count.write_to(&mut self.out);
            self.out.push('\n');
        }
        let total = cumulative.last().copied().unwrap_or(0);
        self.out.push_str(name);
        self.out.push_str("_sum");
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        sum_seconds.write_to(&mut self.out);
        self.out.push('\n');
        self.out.push_str(name);
        self.out.push_str("_count");
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        total.write_to(&mut self.out);
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::default();
        e.family("x_total", Kind::Counter, "a \\ b\nc");
        e.sample("x_total", &[("name", "q\"\\\n")], 3u64);
        assert_eq!(
            e.finish(),
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{name=\"q\\\"\\\\\\n\"} 3\n"
        );
    }

    #[test]
    fn histograms_end_with_inf_sum_and_count() {
        let mut e = Exposition::default();
        e.histogram("w_seconds", &[("p", "a")], &[0.5, 1.0], &[1, 2, 4], 2.25);
        assert_eq!(
            e.finish(),
            "w_seconds_bucket{p=\"a\",le=\"0.5\"} 1\nw_seconds_bucket{p=\"a\",le=\"1\"} 2\n\
             w_seconds_bucket{p=\"a\",le=\"+Inf\"} 4\nw_seconds_sum{p=\"a\"} 2.25\nw_seconds_count{p=\"a\"} 4\n"
        );
    }

    #[test]
    fn floats_are_plain_decimals() {
        let mut s = String::new();
        0.0005f64.write_to(&mut s);
        s.push(' ');
        f64::INFINITY.write_to(&mut s);
        assert_eq!(s, "0.0005 +Inf");
    }
}
