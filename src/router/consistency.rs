//! The consistency a client asks of its reads, the knob of read/write splitting: where a read may run is decided by
//! it and the replicas' replay positions. The same text form is used in config files, in
//! `SET shardpool.consistency = ...` and in per-query hints, so it is parsed in one place.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How stale a read may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Every read on the primary.
    Strong,
    /// Reads see the client's own committed writes (replicas whose replay passed the client's last commit).
    ReadYourWrites,
    /// Reads see every write that committed through this shardpool instance before they started, from any
    /// connection: what a web application needs when request 1 writes on one pooled connection and request 2 reads
    /// on another.
    ReadProxyWrites,
    /// Reads see every write that committed anywhere before they started (through other shardpool instances, or
    /// straight on the primary): the primary's position is asked before the read, one question shared by all
    /// concurrent reads.
    ReadAllWrites,
    /// Reads from replicas lagging less than this; otherwise the primary. Whole milliseconds.
    BoundedStaleness(Duration),
    /// Any healthy replica.
    Eventual,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConsistencyError {
    #[error(
        "unknown consistency \"{0}\" (expected strong, read_all_writes, read_proxy_writes, read_your_writes, bounded_staleness(<duration>) or eventual)"
    )]
    Unknown(String),
    #[error("invalid duration \"{0}\" (expected a whole number of ms, s or min, e.g. 500ms)")]
    Duration(String),
}

impl FromStr for Consistency {
    type Err = ConsistencyError;

    fn from_str(s: &str) -> Result<Consistency, ConsistencyError> {
        let t = s.trim();
        let word_is = |w: &str| t.eq_ignore_ascii_case(w);
        if word_is("strong") {
            return Ok(Consistency::Strong);
        }
        if word_is("read_your_writes") {
            return Ok(Consistency::ReadYourWrites);
        }
        if word_is("read_proxy_writes") {
            return Ok(Consistency::ReadProxyWrites);
        }
        if word_is("read_all_writes") {
            return Ok(Consistency::ReadAllWrites);
        }
        if word_is("eventual") {
            return Ok(Consistency::Eventual);
        }
        let prefix = "bounded_staleness";
        let args = t
            .get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .map(|_| t[prefix.len()..].trim_start())
            .and_then(|rest| rest.strip_prefix('('))
            .and_then(|rest| rest.strip_suffix(')'))
            .ok_or_else(|| ConsistencyError::Unknown(t.to_owned()))?;
        parse_duration(args).map(Consistency::BoundedStaleness)
    }
}

/// `500ms`, `2s`, `1min`, a bare number of milliseconds, optionally in single quotes (`'2s'`), as Postgres accepts
/// for GUCs of time type.
pub fn parse_duration(text: &str) -> Result<Duration, ConsistencyError> {
    let bad = || ConsistencyError::Duration(text.trim().to_owned());
    let mut t = text.trim();
    if let Some(inner) = t.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        t = inner.trim();
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit = t[digits..].trim();
    let ms_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

/// The shortest exact text for a duration: `2min`, `3s`, or `1500ms`.
fn fmt_duration(d: Duration, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let ms = d.as_millis();
    if ms != 0 && ms % 60_000 == 0 {
        write!(f, "{}min", ms / 60_000)
    } else if ms != 0 && ms % 1_000 == 0 {
        write!(f, "{}s", ms / 1_000)
    } else {
        write!(f, "{ms}ms")
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consistency::Strong => f.write_str("strong"),
            Consistency::ReadYourWrites => f.write_str("read_your_writes"),
            Consistency::ReadProxyWrites => f.write_str("read_proxy_writes"),
            Consistency::ReadAllWrites => f.write_str("read_all_writes"),
            Consistency::Eventual => f.write_str("eventual"),
            Consistency::BoundedStaleness(d) => {
                f.write_str("bounded_staleness(")?;
                fmt_duration(*d, f)?;
                f.write_str(")")
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Consistency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Consistency, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Consistency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Consistency {
        Consistency::BoundedStaleness(Duration::from_millis(n))
    }

    #[test]
    fn parses_every_spelling() {
        let cases = [
            ("strong", Consistency::Strong),
            (" STRONG ", Consistency::Strong),
            ("Read_Your_Writes", Consistency::ReadYourWrites),
            ("eventual", Consistency::Eventual),
            ("bounded_staleness(500ms)", ms(500)),
            ("bounded_staleness('2s')", ms(2_000)),
            ("bounded_staleness(500)", ms(500)),
            ("BOUNDED_STALENESS ( 3 MIN )", ms(180_000)),
            ("bounded_staleness( ' 250 ms ' )", ms(250)),
            ("bounded_staleness(0)", ms(0)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Consistency>(), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_text() {
        for text in [
            "",
            "strongest",
            "bounded_staleness",
            "bounded_staleness()",
            "bounded_staleness(5h)",
            "bounded_staleness(-5ms)",
            "bounded_staleness(1.5s)",
            "bounded_staleness(500ms",
            "bounded_staleness(99999999999999999999)",
            "bounded_staleness(18446744073709551615min)",
        ] {
            assert!(text.parse::<Consistency>().is_err(), "{text:?}");
        }
        assert_eq!(
            "bounded_staleness(1.5s)".parse::<Consistency>(),
            Err(ConsistencyError::Duration("1.5s".into()))
        );
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (c, text) in [
            (Consistency::Strong, "strong"),
            (Consistency::ReadYourWrites, "read_your_writes"),
            (Consistency::ReadProxyWrites, "read_proxy_writes"),
            (Consistency::ReadAllWrites, "read_all_writes"),
            (Consistency::Eventual, "eventual"),
            (ms(500), "bounded_staleness(500ms)"),
            (ms(2_000), "bounded_staleness(2s)"),
            (ms(120_000), "bounded_staleness(2min)"),
            (ms(90_000), "bounded_staleness(90s)"),
            (ms(0), "bounded_staleness(0ms)"),
        ] {
            assert_eq!(c.to_string(), text);
            assert_eq!(text.parse::<Consistency>(), Ok(c));
        }
    }

    #[test]
    fn deserializes_from_config_text() {
        #[derive(serde::Deserialize)]
        struct Cfg {
            consistency: Consistency,
        }
        let cfg: Cfg = toml::from_str(r#"consistency = "bounded_staleness(500ms)""#).unwrap();
        assert_eq!(cfg.consistency, ms(500));
        let err = toml::from_str::<Cfg>(r#"consistency = "sometimes""#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("unknown consistency"), "{err}");
    }
}
