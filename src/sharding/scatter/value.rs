//! How merged values compare and group, by the type OID a shard's RowDescription gives, so that a k-way merge, min,
//! max and ORDER BY after aggregation agree with the order Postgres itself produced on each shard.
//!
//! Types and the rules used (text output format):
//! - int2, int4, int8, oid: integers.
//! - numeric: exact comparison of the printed digits (sign, integer digits, fraction); -Infinity < finite <
//!   Infinity < NaN, as numeric_cmp orders them.
//! - float4, float8: IEEE order except that NaN equals NaN and sorts above everything including Infinity, and -0
//!   equals 0 (float8_cmp_internal).
//! - text, varchar, name, uuid: byte order of the UTF-8 text. For text and varchar that is the "C" collation. A
//!   column or database with another collation (en_US, ICU...) sorts differently on the shards; shardpool cannot see
//!   collations in a RowDescription. The k-way merge checks that every shard's rows arrive in byte order and fails
//!   with Unsupported when they do not, but a shard whose rows happen to agree with both orders (e.g. one row each)
//!   is merged bytewise, so ORDER BY, min and max on text under a non-C collation can be ordered differently from an
//!   unsharded server: use `COLLATE "C"` or a C database for scatter/gather. `name` always uses "C"; uuid prints
//!   lowercase hex, whose byte order is uuid_cmp's memcmp order.
//! - bpchar: byte order ignoring trailing spaces (bpcharcmp), under the same collation caveat.
//! - bool: false < true.
//! - date, timestamp, timestamptz, time: parsed from ISO DateStyle output (`YYYY-MM-DD HH:MM:SS.ffffff+hh:mm:ss
//!   BC`), so BC years, years past 9999, ±infinity and timestamptz offsets (an instant printed with +01 after one with
//!   +02 across a DST change) compare correctly. Other DateStyles are refused when a value does not parse.
//!
//! Grouping uses a canonical byte form: numeric without trailing fractional zeros (1.50 and 1.5 are one group),
//! float -0 as 0, bpchar without trailing spaces; other types by their text, which is canonical for them given
//! identical session settings on every shard. Nondeterministic (case-insensitive) collations are not supported.

use std::cmp::Ordering;

use bytes::Bytes;

use super::numeric::{compare_numeric_text, numeric_group_key, parse_float};

/// Type OIDs from src/include/catalog/pg_type.dat.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const MONEY: u32 = 790;
    pub const JSON: u32 = 114;
    pub const JSONB: u32 = 3802;
    pub const BYTEA: u32 = 17;
}

/// The comparison rule of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeClass {
    Bool,
    Int,
    Float,
    Numeric,
    /// Byte order of the text (text, varchar, name, uuid).
    Bytes,
    BpChar,
    /// date, timestamp, timestamptz, time: ISO text parsed to an instant.
    DateTime,
}

impl TypeClass {
    pub fn of(type_oid: u32) -> Option<TypeClass> {
        use oid::*;
        Some(match type_oid {
            BOOL => TypeClass::Bool,
            INT2 | INT4 | INT8 | OID => TypeClass::Int,
            FLOAT4 | FLOAT8 => TypeClass::Float,
            NUMERIC => TypeClass::Numeric,
            TEXT | VARCHAR | NAME | UUID => TypeClass::Bytes,
            BPCHAR => TypeClass::BpChar,
            DATE | TIMESTAMP | TIMESTAMPTZ | TIME => TypeClass::DateTime,
            _ => return None,
        })
    }
}

/// A readable name for messages ("type interval", "type oid 16385").
pub fn type_name(type_oid: u32) -> String {
    use oid::*;
    let known = match type_oid {
        BOOL => "boolean",
        NAME => "name",
        INT8 => "bigint",
        INT2 => "smallint",
        INT4 => "integer",
        TEXT => "text",
        OID => "oid",
        FLOAT4 => "real",
        FLOAT8 => "double precision",
        BPCHAR => "character",
        VARCHAR => "character varying",
        DATE => "date",
        TIME => "time",
        TIMESTAMP => "timestamp",
        TIMESTAMPTZ => "timestamptz",
        INTERVAL => "interval",
        NUMERIC => "numeric",
        UUID => "uuid",
        MONEY => "money",
        JSON => "json",
        JSONB => "jsonb",
        BYTEA => "bytea",
        _ => return format!("type oid {type_oid}"),
    };
    format!("type {known}")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot read {type_name} value {text:?}{hint}")]
pub struct ValueError {
    pub type_name: &'static str,
    pub text: String,
    pub hint: &'static str,
}

fn value_error(class: TypeClass, text: &[u8]) -> ValueError {
    let (type_name, hint) = match class {
        TypeClass::DateTime => (
            "date/time",
            " (shardpool merges dates and times printed in DateStyle ISO only)",
        ),
        TypeClass::Int => ("integer", ""),
        TypeClass::Float => ("floating-point", ""),
        TypeClass::Numeric => ("numeric", ""),
        TypeClass::Bool => ("boolean", ""),
        TypeClass::Bytes | TypeClass::BpChar => ("text", ""),
    };
    ValueError {
        type_name,
        text: String::from_utf8_lossy(text).into_owned(),
        hint,
    }
}

/// A column value decoded once for repeated comparisons.
#[derive(Clone, Debug)]
pub enum SortValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Numeric(Bytes),
    Bytes(Bytes),
    Instant(i128),
}

impl SortValue {
    pub fn decode(class: TypeClass, value: Option<&Bytes>) -> Result<SortValue, ValueError> {
        let Some(v) = value else {
            return Ok(SortValue::Null);
        };
        let err = || value_error(class, v);
        Ok(match class {
            TypeClass::Bool => match &v[..] {
                b"t" => SortValue::Bool(true),
                b"f" => SortValue::Bool(false),
                _ => return Err(err()),
            },
            TypeClass::Int => SortValue::Int(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(err)?,
            ),
            TypeClass::Float => SortValue::Float(parse_float(v).ok_or_else(err)?),
            TypeClass::Numeric => {
                compare_numeric_text(v, v).map_err(|_| err())?;
                SortValue::Numeric(v.clone())
            }
            TypeClass::Bytes => SortValue::Bytes(v.clone()),
            TypeClass::BpChar => {
                let trimmed = v.len() - v.iter().rev().take_while(|&&b| b == b' ').count();
                SortValue::Bytes(v.slice(..trimmed))
            }
            TypeClass::DateTime => SortValue::Instant(parse_datetime(v).ok_or_else(err)?),
        })
    }

    pub fn is_null(&self) -> bool {
        matches!(self, SortValue::Null)
    }

    /// Ascending order of two non-null values of one column; NULL placement is the caller's (it depends on
    /// NULLS FIRST/LAST).
    pub fn compare(&self, other: &SortValue) -> Ordering {
        use SortValue::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => compare_floats(*a, *b),
            // Both were validated by decode.
            (Numeric(a), Numeric(b)) => compare_numeric_text(a, b).unwrap_or(Ordering::Equal),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            (Instant(a), Instant(b)) => a.cmp(b),
            (Null, Null) => Ordering::Equal,
            (Null, _) => Ordering::Greater,
            (_, Null) => Ordering::Less,
            // Values of one column always share a class.
            _ => Ordering::Equal,
        }
    }
}

/// float8_cmp_internal: NaN equals NaN and is greater than every other value; -0 equals 0.
fn compare_floats(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Appends the canonical form of a grouping value (see the module doc).
pub fn group_key(class: TypeClass, text: &Bytes, out: &mut Vec<u8>) -> Result<(), ValueError> {
    match class {
        TypeClass::Numeric => numeric_group_key(text, out).map_err(|_| value_error(class, text)),
        TypeClass::Float => {
            let v = parse_float(text).ok_or_else(|| value_error(class, text))?;
            if v == 0.0 {
                out.push(b'0');
            } else {
                out.extend_from_slice(text);
            }
            Ok(())
        }
        TypeClass::BpChar => {
            let trimmed = text.len() - text.iter().rev().take_while(|&&b| b == b' ').count();
            out.extend_from_slice(&text[..trimmed]);
            Ok(())
        }
        _ => {
            out.extend_from_slice(text);
            Ok(())
        }
    }
}

const MICROS_PER_DAY: i128 = 86_400_000_000;

/// Parses ISO DateStyle output of date, timestamp, timestamptz and time into microseconds since 1970-01-01 (a time
/// of day alone: since midnight); timestamptz offsets are subtracted so instants compare.
pub fn parse_datetime(text: &[u8]) -> Option<i128> {
    match text {
        b"infinity" => return Some(i128::MAX),
        b"-infinity" => return Some(i128::MIN),
        _ => {}
    }
    let s = std::str::from_utf8(text).ok()?;
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    // time alone: HH:MM:SS[.f]
    if s.len() >= 8 && s.as_bytes()[2] == b':' {
        return parse_time_of_day(s).map(i128::from);
    }
    let (date, rest) = match s.split_once(' ') {
        Some((d, r)) => (d, Some(r)),
        None => (s, None),
    };
    let mut parts = date.splitn(3, '-');
    let year: i64 = digits(parts.next()?)?;
    let month: i64 = digits(parts.next()?)?;
    let day: i64 = digits(parts.next()?)?;
    // Postgres prints no year beyond date's 5874897 AD; larger ones would overflow the day count.
    if !(1..=MAX_YEAR).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Astronomical numbering: 1 BC is year 0.
    let year = if bc { 1 - year } else { year };
    let mut micros = i128::from(days_from_civil(year, month, day)) * MICROS_PER_DAY;
    if let Some(rest) = rest {
        let offset_at = rest.find(['+', '-']);
        let (time, offset) = match offset_at {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        micros += i128::from(parse_time_of_day(time)?);
        if let Some(offset) = offset {
            micros -= i128::from(parse_offset(offset)?) * 1_000_000;
        }
    }
    Some(micros)
}

/// The last year of Postgres' `date` range (4713 BC to 5874897 AD).
const MAX_YEAR: i64 = 5_874_897;

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// HH:MM:SS[.ffffff] -> microseconds.
fn parse_time_of_day(s: &str) -> Option<i64> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let mut parts = hms.splitn(3, ':');
    let h = digits(parts.next()?)?;
    let m = digits(parts.next()?)?;
    let sec = digits(parts.next()?)?;
    if frac.len() > 6 || (!frac.is_empty() && digits(frac).is_none()) {
        return None;
    }
    let mut f = frac.to_owned();
    f.extend(std::iter::repeat_n('0', 6 - frac.len()));
    // Checked: a server's text is not trusted to keep to 24 hours (found by fuzz/fuzz_targets/backend_messages.rs).
    let secs = h
        .checked_mul(60)?
        .checked_add(m)?
        .checked_mul(60)?
        .checked_add(sec)?;
    secs.checked_mul(1_000_000)?
        .checked_add(f.parse::<i64>().ok()?)
}

/// +HH[:MM[:SS]] -> seconds east of UTC.
fn parse_offset(s: &str) -> Option<i64> {
    let (sign, rest) = match s.split_at(1) {
        ("+", r) => (1, r),
        ("-", r) => (-1, r),
        _ => return None,
    };
    let mut secs = 0;
    let mut unit = 3600;
    for part in rest.split(':') {
        if unit == 0 {
            return None;
        }
        secs = digits(part)?.checked_mul(unit)?.checked_add(secs)?;
        unit /= 60;
    }
    Some(sign * secs)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil, written from its
/// published derivation).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_datetimes_are_refused_not_overflowed() {
        // Found by fuzz/fuzz_targets/backend_messages.rs: the year 202000000000000004 overflowed the day count
        // (a panic in debug builds, a wrong sort key in release builds).
        assert_eq!(parse_datetime(b"202000000000000004-02-29 23:59:590"), None);
        assert_eq!(parse_datetime(b"5874898-01-01"), None);
        assert_eq!(
            parse_datetime(b"2024-01-01 9223372036854775807:00:00"),
            None
        );
        assert_eq!(parse_datetime(b"99999999999:00:00"), None);
        assert_eq!(
            parse_datetime(b"2024-01-01 00:00:00+9223372036854775807"),
            None
        );
        assert!(parse_datetime(b"5874897-12-31").is_some());
        assert_eq!(
            parse_datetime(b"1970-01-02 00:00:01.5+01"),
            Some((86_400 + 1 - 3_600) * 1_000_000 + 500_000)
        );
    }

    fn sv(class: TypeClass, s: &str) -> SortValue {
        SortValue::decode(class, Some(&Bytes::copy_from_slice(s.as_bytes()))).unwrap()
    }

    fn assert_ascending(class: TypeClass, values: &[&str]) {
        for (i, a) in values.iter().enumerate() {
            for (j, b) in values.iter().enumerate() {
                assert_eq!(
                    sv(class, a).compare(&sv(class, b)),
                    i.cmp(&j),
                    "{class:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn ints_and_bools() {
        assert_ascending(
            TypeClass::Int,
            &[
                "-9223372036854775808",
                "-10",
                "-9",
                "0",
                "9",
                "10",
                "9223372036854775807",
            ],
        );
        assert_ascending(TypeClass::Bool, &["f", "t"]);
    }

    #[test]
    fn floats_put_nan_above_infinity_and_equate_zeros() {
        assert_ascending(
            TypeClass::Float,
            &[
                "-Infinity",
                "-1e+300",
                "-1.5",
                "0",
                "1e-05",
                "2",
                "1e+20",
                "Infinity",
                "NaN",
            ],
        );
        assert_eq!(
            sv(TypeClass::Float, "-0").compare(&sv(TypeClass::Float, "0")),
            Ordering::Equal
        );
        assert_eq!(
            sv(TypeClass::Float, "NaN").compare(&sv(TypeClass::Float, "NaN")),
            Ordering::Equal
        );
    }

    #[test]
    fn text_is_byte_order_and_bpchar_ignores_trailing_spaces() {
        assert_ascending(TypeClass::Bytes, &["", "B", "a", "a b", "ab", "é"]);
        assert_eq!(
            sv(TypeClass::BpChar, "ab  ").compare(&sv(TypeClass::BpChar, "ab")),
            Ordering::Equal
        );
    }

    #[test]
    fn dates_and_timestamps_compare_as_instants() {
        assert_ascending(
            TypeClass::DateTime,
            &[
                "-infinity",
                "0044-03-15 BC",
                "0001-12-31 BC",
                "0001-01-01",
                "1999-12-31",
                "2000-01-01",
                "9999-12-31",
                "10000-01-01",
                "infinity",
            ],
        );
        assert_ascending(
            TypeClass::DateTime,
            &[
                "2020-01-01 10:00:00.5+00:53:28 BC",
                "2024-10-27 02:30:00+02",
                "2024-10-27 02:30:00+01",
                "2024-10-27 02:30:00.000001+01",
                "2024-10-27 02:29:00-01",
            ],
        );
        assert_ascending(
            TypeClass::DateTime,
            &["00:00:00", "08:00:00.25", "23:59:59.999999", "24:00:00"],
        );
        assert!(SortValue::decode(
            TypeClass::DateTime,
            Some(&Bytes::from_static(b"01/02/2024"))
        )
        .is_err());
    }

    #[test]
    fn group_keys_canonicalise() {
        let key = |class, s: &'static str| {
            let mut out = Vec::new();
            group_key(class, &Bytes::from_static(s.as_bytes()), &mut out).unwrap();
            out
        };
        assert_eq!(
            key(TypeClass::Numeric, "2.50"),
            key(TypeClass::Numeric, "2.5")
        );
        assert_eq!(key(TypeClass::Float, "-0"), key(TypeClass::Float, "0"));
        assert_eq!(key(TypeClass::BpChar, "x  "), key(TypeClass::BpChar, "x"));
        assert_ne!(key(TypeClass::Bytes, "x  "), key(TypeClass::Bytes, "x"));
    }
}
