//! Exact arithmetic on the text Postgres prints for numeric, int8 and float values, for merging partial aggregates:
//! adding shard sums (numeric/int8: exact decimal addition, never f64), dividing a sum by a count the way
//! `numeric_div` does (result scale from `select_div_scale`, rounded half away from zero), comparing numerics
//! without converting them, and printing floats the way `float8out`/`float4out` do with the default
//! extra_float_digits (shortest exact representation).
//!
//! Ports (written from reading the source, not copied): `select_div_scale` and `div_var` rounding from
//! src/backend/utils/adt/numeric.c (PostgreSQL 15); the fixed/exponential threshold of `to_chars` in src/common/d2s.c
//! and f2s.c.

use std::cmp::Ordering;

/// NUMERIC_MIN_SIG_DIGITS: a quotient keeps at least this many significant digits.
const MIN_SIG_DIGITS: i64 = 16;
/// DEC_DIGITS: decimal digits per base-10000 digit of Postgres' numeric representation.
const DEC_DIGITS: i64 = 4;
/// NUMERIC_MAX_DISPLAY_SCALE.
const MAX_DISPLAY_SCALE: i64 = 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid numeric text {0:?}")]
pub struct NumericTextError(pub String);

/// A numeric value as Postgres prints it (numeric has NaN and, since PostgreSQL 14, infinities).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Numeric {
    NaN,
    PosInf,
    NegInf,
    Finite(Decimal),
}

/// A finite decimal: `digits / 10^scale`, with the display scale kept (Postgres prints `1.50` as `1.50`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    /// Magnitude digits (0..=9), most significant first, no leading zeros; empty means zero.
    digits: Vec<u8>,
    scale: usize,
}

impl Numeric {
    pub fn parse(text: &[u8]) -> Result<Numeric, NumericTextError> {
        match text {
            b"NaN" => return Ok(Numeric::NaN),
            b"Infinity" => return Ok(Numeric::PosInf),
            b"-Infinity" => return Ok(Numeric::NegInf),
            _ => {}
        }
        let bad = || NumericTextError(String::from_utf8_lossy(text).into_owned());
        let (negative, rest) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, text),
        };
        let (int, frac) = match rest.iter().position(|&b| b == b'.') {
            Some(dot) => (&rest[..dot], &rest[dot + 1..]),
            None => (rest, &rest[..0]),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let digits: Vec<u8> = int.iter().chain(frac).map(|b| b - b'0').collect();
        Ok(Numeric::Finite(Decimal::new(negative, digits, frac.len())))
    }

    /// Addition as numeric_add does it: NaN absorbs, opposite infinities give NaN, the display scale is the larger.
    pub fn add(&self, other: &Numeric) -> Numeric {
        use Numeric::*;
        match (self, other) {
            (NaN, _) | (_, NaN) | (PosInf, NegInf) | (NegInf, PosInf) => NaN,
            (PosInf, _) | (_, PosInf) => PosInf,
            (NegInf, _) | (_, NegInf) => NegInf,
            (Finite(a), Finite(b)) => Finite(a.add(b)),
        }
    }

    /// `numeric_div(self, count)` for a positive count: what avg() returns for integer and numeric inputs.
    pub fn div_count(&self, count: u64) -> Numeric {
        match self {
            Numeric::Finite(d) => Numeric::Finite(d.div_count(count)),
            other => other.clone(),
        }
    }

    pub fn to_text(&self) -> String {
        match self {
            Numeric::NaN => "NaN".into(),
            Numeric::PosInf => "Infinity".into(),
            Numeric::NegInf => "-Infinity".into(),
            Numeric::Finite(d) => d.to_text(),
        }
    }
}

impl Decimal {
    fn new(negative: bool, mut digits: Vec<u8>, scale: usize) -> Decimal {
        let leading = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        Decimal {
            negative: negative && !digits.is_empty(),
            digits,
            scale,
        }
    }

    /// The magnitude's digits padded with trailing zeros to `scale` fractional digits.
    fn scaled(&self, scale: usize) -> Vec<u8> {
        let mut d = self.digits.clone();
        d.resize(d.len() + (scale - self.scale), 0);
        d
    }

    fn add(&self, other: &Decimal) -> Decimal {
        let scale = self.scale.max(other.scale);
        let (a, b) = (self.scaled(scale), other.scaled(scale));
        if self.negative == other.negative {
            return Decimal::new(self.negative, add_magnitudes(&a, &b), scale);
        }
        match compare_magnitudes(&a, &b) {
            Ordering::Less => Decimal::new(other.negative, sub_magnitudes(&b, &a), scale),
            _ => Decimal::new(self.negative, sub_magnitudes(&a, &b), scale),
        }
    }

    /// Weight and first digit in Postgres' base-10000 representation (digit groups aligned on the decimal point),
    /// as `select_div_scale` reads them; zero is (0, 0).
    fn nbase_lead(&self) -> (i64, u32) {
        let int_len = self.digits.len().saturating_sub(self.scale);
        if int_len > 0 {
            let weight = (int_len - 1) / 4;
            let first = int_len - 4 * weight;
            return (weight as i64, group_value(&self.digits[..first]));
        }
        let zeros = self.scale - self.digits.len();
        let mut frac = vec![0u8; zeros];
        frac.extend_from_slice(&self.digits);
        for (k, group) in frac.chunks(4).enumerate() {
            let mut g = group.to_vec();
            g.resize(4, 0);
            let v = group_value(&g);
            if v != 0 {
                return (-(k as i64) - 1, v);
            }
        }
        (0, 0)
    }

    /// Division by a positive count with numeric_div's result scale and rounding.
    fn div_count(&self, count: u64) -> Decimal {
        let count_dec = Decimal::new(
            false,
            count.to_string().bytes().map(|b| b - b'0').collect(),
            0,
        );
        let (w1, d1) = self.nbase_lead();
        let (w2, d2) = count_dec.nbase_lead();
        let mut qweight = w1 - w2;
        if d1 <= d2 {
            qweight -= 1;
        }
        let rscale = (MIN_SIG_DIGITS - qweight * DEC_DIGITS)
            .max(self.scale as i64)
            .clamp(0, MAX_DISPLAY_SCALE) as usize;
        // Truncated long division to one digit past rscale, then round on that digit: the digits are exact, so
        // "next digit >= 5" is "the rest is at least half" (round half away from zero, as round_var does).
        let work = rscale + 1;
        let numerator: Vec<u8> = if work >= self.scale {
            let mut n = self.digits.clone();
            n.resize(n.len() + (work - self.scale), 0);
            n
        } else {
            let keep = self.digits.len().saturating_sub(self.scale - work);
            self.digits[..keep].to_vec()
        };
        let divisor = u128::from(count);
        let mut quotient = Vec::with_capacity(numerator.len());
        let mut rem: u128 = 0;
        for d in numerator {
            rem = rem * 10 + u128::from(d);
            quotient.push((rem / divisor) as u8);
            rem %= divisor;
        }
        let round_digit = quotient.pop().unwrap_or(0);
        if round_digit >= 5 {
            quotient = add_magnitudes(&quotient, &[1]);
        }
        Decimal::new(self.negative, quotient, rscale)
    }

    fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.digits.len() + self.scale + 3);
        if self.negative {
            s.push('-');
        }
        let mut digits = vec![0u8; (self.scale + 1).saturating_sub(self.digits.len())];
        digits.extend_from_slice(&self.digits);
        let int_len = digits.len() - self.scale;
        s.extend(digits[..int_len].iter().map(|d| char::from(b'0' + d)));
        if self.scale > 0 {
            s.push('.');
            s.extend(digits[int_len..].iter().map(|d| char::from(b'0' + d)));
        }
        s
    }
}

fn group_value(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |acc, &d| acc * 10 + u32::from(d))
}

fn compare_magnitudes(a: &[u8], b: &[u8]) -> Ordering {
    let a = &a[a.iter().take_while(|&&d| d == 0).count()..];
    let b = &b[b.iter().take_while(|&&d| d == 0).count()..];
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn add_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n + 1);
    let mut carry = 0;
    for i in 0..n {
        let x = if i < a.len() { a[a.len() - 1 - i] } else { 0 };
        let y = if i < b.len() { b[b.len() - 1 - i] } else { 0 };
        let s = x + y + carry;
        out.push(s % 10);
        carry = s / 10;
    }
    if carry > 0 {
        out.push(carry);
    }
    out.reverse();
    out
}

/// a - b for magnitudes with a >= b.
fn sub_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let mut borrow = 0i8;
    for i in 0..a.len() {
        let x = a[a.len() - 1 - i] as i8;
        let y = if i < b.len() {
            b[b.len() - 1 - i] as i8
        } else {
            0
        };
        let mut d = x - y - borrow;
        borrow = 0;
        if d < 0 {
            d += 10;
            borrow = 1;
        }
        out.push(d as u8);
    }
    out.reverse();
    out
}

/// A numeric's text split for comparison without allocating: sign, integer digits without leading zeros, fraction
/// without trailing zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumericView<'a> {
    NegInf,
    Finite {
        negative: bool,
        int: &'a [u8],
        frac: &'a [u8],
    },
    PosInf,
    NaN,
}

fn view(text: &[u8]) -> Result<NumericView<'_>, NumericTextError> {
    match text {
        b"NaN" => return Ok(NumericView::NaN),
        b"Infinity" => return Ok(NumericView::PosInf),
        b"-Infinity" => return Ok(NumericView::NegInf),
        _ => {}
    }
    let bad = || NumericTextError(String::from_utf8_lossy(text).into_owned());
    let (negative, rest) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (int, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &rest[..0]),
    };
    if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let int = &int[int.iter().take_while(|&&b| b == b'0').count()..];
    let frac = &frac[..frac.len() - frac.iter().rev().take_while(|&&b| b == b'0').count()];
    let negative = negative && !(int.is_empty() && frac.is_empty());
    Ok(NumericView::Finite {
        negative,
        int,
        frac,
    })
}

/// Postgres' numeric ordering on printed values: -Infinity < finite < Infinity < NaN, and NaN equals NaN.
pub fn compare_numeric_text(a: &[u8], b: &[u8]) -> Result<Ordering, NumericTextError> {
    use NumericView::*;
    let rank = |v: &NumericView| match v {
        NegInf => 0,
        Finite { .. } => 1,
        PosInf => 2,
        NaN => 3,
    };
    let (va, vb) = (view(a)?, view(b)?);
    let (
        Finite {
            negative: na,
            int: ia,
            frac: fa,
        },
        Finite {
            negative: nb,
            int: ib,
            frac: fb,
        },
    ) = (va, vb)
    else {
        return Ok(rank(&va).cmp(&rank(&vb)));
    };
    if na != nb {
        return Ok(if na {
            Ordering::Less
        } else {
            Ordering::Greater
        });
    }
    // Fractions have no trailing zeros, so plain lexicographic order is numeric order.
    let magnitude = ia.len().cmp(&ib.len()).then(ia.cmp(ib)).then(fa.cmp(fb));
    Ok(if na { magnitude.reverse() } else { magnitude })
}

/// The canonical text of a numeric for grouping: `1.50` and `1.5` are one group in Postgres.
pub fn numeric_group_key(text: &[u8], out: &mut Vec<u8>) -> Result<(), NumericTextError> {
    match view(text)? {
        NumericView::Finite {
            negative,
            int,
            frac,
        } => {
            if negative {
                out.push(b'-');
            }
            out.extend_from_slice(if int.is_empty() { b"0" } else { int });
            if !frac.is_empty() {
                out.push(b'.');
                out.extend_from_slice(frac);
            }
        }
        _ => out.extend_from_slice(text),
    }
    Ok(())
}

/// Parses float4/float8 output ("NaN", "Infinity", "-Infinity" or a decimal with optional exponent).
pub fn parse_float(text: &[u8]) -> Option<f64> {
    match text {
        b"NaN" => Some(f64::NAN),
        b"Infinity" => Some(f64::INFINITY),
        b"-Infinity" => Some(f64::NEG_INFINITY),
        _ => std::str::from_utf8(text)
            .ok()
            .filter(|s| {
                s.bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
            })
            .and_then(|s| s.parse().ok()),
    }
}

/// float8out with extra_float_digits >= 1: shortest exact digits, fixed notation for decimal exponents in
/// [-4, 15), otherwise `d.ddde+XX`.
pub fn format_float8(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    shortest_to_postgres(&format!("{v:e}"), 15)
}

/// float4out likewise, with the fixed-notation range [-4, 6).
pub fn format_float4(v: f32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    shortest_to_postgres(&format!("{v:e}"), 6)
}

/// Rewrites Rust's shortest `{:e}` form (`-1.2345e-5`) in Postgres' layout.
fn shortest_to_postgres(sci: &str, fixed_below: i32) -> String {
    let (negative, sci) = match sci.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, sci),
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if digits == "0" {
        out.push('0');
        return out;
    }
    if (-4..fixed_below).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Numeric {
        Numeric::parse(s.as_bytes()).unwrap()
    }

    fn sum(values: &[&str]) -> String {
        values
            .iter()
            .map(|v| num(v))
            .reduce(|a, b| a.add(&b))
            .unwrap()
            .to_text()
    }

    #[test]
    fn addition_is_exact_and_keeps_the_larger_display_scale() {
        assert_eq!(sum(&["1.50", "2.5"]), "4.00");
        assert_eq!(sum(&["-1.25", "1.25"]), "0.00");
        assert_eq!(sum(&["-3", "1.5"]), "-1.5");
        assert_eq!(sum(&["0.1", "0.2"]), "0.3");
        assert_eq!(
            sum(&["99999999999999999999999999999999.999", "0.001"]),
            "100000000000000000000000000000000.000"
        );
        assert_eq!(
            sum(&["9223372036854775807", "9223372036854775807"]),
            "18446744073709551614"
        );
        assert_eq!(sum(&["NaN", "1"]), "NaN");
        assert_eq!(sum(&["Infinity", "-Infinity"]), "NaN");
        assert_eq!(sum(&["Infinity", "5"]), "Infinity");
        assert_eq!(sum(&["-0.001", "0.001"]), "0.000");
    }

    #[test]
    fn division_by_a_count_matches_postgres_avg() {
        // Expected values printed by PostgreSQL 15 for avg() over the same inputs.
        let cases = [
            ("10", 4, "2.5000000000000000"),
            ("1", 3, "0.33333333333333333333"),
            ("-1", 3, "-0.33333333333333333333"),
            ("3.75", 2, "1.8750000000000000"),
            ("10000000003", 2, "5000000001.50000000"),
            ("0.00001", 2, "0.000005000000000000000000"),
            ("0", 5, "0.00000000000000000000"),
            ("2", 3, "0.66666666666666666667"),
            ("12345678901234567890", 7, "1763668414462081127"),
        ];
        for (s, n, want) in cases {
            assert_eq!(num(s).div_count(n).to_text(), want, "{s} / {n}");
        }
        // The scale is capped at 1000 digits even when the sum has more (checked against PostgreSQL 15).
        let tiny = format!("0.{}15", "0".repeat(998));
        assert_eq!(
            num(&tiny).div_count(2).to_text(),
            format!("0.{}8", "0".repeat(999))
        );
        let long = format!("3.{}7", "0".repeat(1004));
        assert_eq!(
            num(&long).div_count(2).to_text(),
            format!("1.5{}", "0".repeat(999))
        );
        assert_eq!(num("NaN").div_count(3).to_text(), "NaN");
        assert_eq!(num("-Infinity").div_count(3).to_text(), "-Infinity");
    }

    #[test]
    fn numeric_text_compares_by_value() {
        let ordered = [
            "-Infinity",
            "-100",
            "-99.5",
            "-1",
            "-0.001",
            "0",
            "0.0001",
            "0.1",
            "1",
            "1.05",
            "1.5",
            "9",
            "10",
            "100",
            "Infinity",
            "NaN",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                let got = compare_numeric_text(a.as_bytes(), b.as_bytes()).unwrap();
                assert_eq!(got, i.cmp(&j), "{a} vs {b}");
            }
        }
        let eq = |a: &str, b: &str| compare_numeric_text(a.as_bytes(), b.as_bytes()).unwrap();
        assert_eq!(eq("1.50", "1.5"), Ordering::Equal);
        assert_eq!(eq("0.000", "-0"), Ordering::Equal);
        assert_eq!(eq("NaN", "NaN"), Ordering::Equal);
        assert!(compare_numeric_text(b"1e5", b"1").is_err());
    }

    #[test]
    fn group_keys_are_canonical() {
        let key = |s: &str| {
            let mut out = Vec::new();
            numeric_group_key(s.as_bytes(), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(key("1.500"), key("1.5"));
        assert_eq!(key("-0.00"), "0");
        assert_eq!(key("0.50"), "0.5");
        assert_eq!(key("10"), "10");
    }

    #[test]
    fn floats_print_like_postgres() {
        // Expected strings are PostgreSQL 15's output (extra_float_digits = 1).
        let f8 = [
            (1e15, "1e+15"),
            (1e14, "100000000000000"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (1e20, "1e+20"),
            (-0.0, "-0"),
            (0.0, "0"),
            (1.2345678901234567e300, "1.2345678901234567e+300"),
            (1e-300, "1e-300"),
            (123.456, "123.456"),
            (-2.5, "-2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (v, want) in f8 {
            assert_eq!(format_float8(v), want, "{v:e}");
        }
        assert_eq!(format_float8(f64::NAN), "NaN");
        assert_eq!(format_float8(f64::NEG_INFINITY), "-Infinity");
        let f4 = [
            (123456.7f32, "123456.7"),
            (1234567.0, "1.234567e+06"),
            (0.1, "0.1"),
            (1e-10, "1e-10"),
        ];
        for (v, want) in f4 {
            assert_eq!(format_float4(v), want, "{v:e}");
        }
    }

    #[test]
    fn float_text_parses() {
        assert_eq!(parse_float(b"1.5e-05"), Some(1.5e-5));
        assert!(parse_float(b"NaN").unwrap().is_nan());
        assert_eq!(parse_float(b"-Infinity"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_float(b"inf"), None);
    }
}
