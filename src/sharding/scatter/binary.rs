//! Text to binary format for merged scatter/gather results. The merge reads values in text format, so a sorted or
//! aggregated scatter asks the shards for text; a client that asked for binary columns (tokio-postgres always does)
//! gets its values converted here, for the types whose binary form follows exactly from their text: integers, oid,
//! bool, floats (Postgres prints them round-trip exact), text-like types, numeric and uuid. Any other type in binary
//! is refused by the caller, never approximated.
//!
//! Reference: PostgreSQL src/backend/utils/adt/{int.c, int8.c, float.c, bool.c, varlena.c, numeric.c
//! (numeric_send), uuid.c} — the `*send` functions.

use super::value::oid;

/// Types converted by [`text_to_binary`].
pub fn convertible(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::BOOL
            | oid::INT2
            | oid::INT4
            | oid::INT8
            | oid::OID
            | oid::FLOAT4
            | oid::FLOAT8
            | oid::TEXT
            | oid::VARCHAR
            | oid::BPCHAR
            | oid::NAME
            | oid::NUMERIC
            | oid::UUID
    )
}

/// The binary send format of a text value of `type_oid`; `None` when the type is not convertible or the text is not
/// what Postgres prints for it.
pub fn text_to_binary(type_oid: u32, text: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(text).ok()?;
    Some(match type_oid {
        oid::BOOL => match s {
            "t" => vec![1],
            "f" => vec![0],
            _ => return None,
        },
        oid::INT2 => s.parse::<i16>().ok()?.to_be_bytes().to_vec(),
        oid::INT4 => s.parse::<i32>().ok()?.to_be_bytes().to_vec(),
        oid::INT8 => s.parse::<i64>().ok()?.to_be_bytes().to_vec(),
        oid::OID => s.parse::<u32>().ok()?.to_be_bytes().to_vec(),
        oid::FLOAT4 => match float(s)? {
            f if f.is_finite() => s.parse::<f32>().ok()?.to_be_bytes().to_vec(),
            f => (f as f32).to_be_bytes().to_vec(),
        },
        oid::FLOAT8 => float(s)?.to_be_bytes().to_vec(),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => text.to_vec(),
        oid::NUMERIC => numeric(s)?,
        oid::UUID => uuid(s)?,
        _ => return None,
    })
}

fn float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// numeric_send: ndigits, weight, sign, dscale (int16 each), then base-10000 digits, most significant first,
/// without leading or trailing zero digits.
fn numeric(s: &str) -> Option<Vec<u8>> {
    const POS: u16 = 0x0000;
    const NEG: u16 = 0x4000;
    const NAN: u16 = 0xC000;
    const PINF: u16 = 0xD000;
    const NINF: u16 = 0xF000;
    let special = |sign: u16| {
        let mut v = vec![0, 0, 0, 0];
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v
    };
    match s {
        "NaN" => return Some(special(NAN)),
        "Infinity" => return Some(special(PINF)),
        "-Infinity" => return Some(special(NINF)),
        _ => {}
    }
    let (sign, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (NEG, rest),
        None => (POS, s),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let dscale = u16::try_from(frac_part.len()).ok()?;
    // Align on the decimal point: integer digits padded on the left, fraction digits on the right, to groups of 4.
    let int_pad = (4 - int_part.len() % 4) % 4;
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let int_digits: String = "0".repeat(int_pad) + int_part;
    let frac_digits: String = frac_part.to_owned() + &"0".repeat(frac_pad);
    let group = |chunk: &[u8]| -> u16 {
        chunk
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'))
    };
    let int_groups: Vec<u16> = int_digits.as_bytes().chunks(4).map(group).collect();
    let frac_groups: Vec<u16> = frac_digits.as_bytes().chunks(4).map(group).collect();
    let mut weight = int_groups.len() as i32 - 1;
    let mut digits: Vec<u16> = int_groups.into_iter().chain(frac_groups).collect();
    let leading = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading);
    weight -= leading as i32;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let (weight, sign) = if digits.is_empty() {
        (0, POS)
    } else {
        (weight, sign)
    };
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&u16::try_from(digits.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&i16::try_from(weight).ok()?.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Some(out)
}

fn uuid(s: &str) -> Option<Vec<u8>> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    hex.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> (u16, i16, u16, u16, Vec<u16>) {
        let b = numeric(s).unwrap();
        let at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let n = at(0);
        let digits = (0..n as usize).map(|k| at(8 + 2 * k)).collect();
        (n, at(2) as i16, at(4), at(6), digits)
    }

    #[test]
    fn numerics_encode_as_numeric_send_does() {
        // The integration tests compare whole results byte for byte with Postgres; these pin the layout.
        assert_eq!(num("0"), (0, 0, 0, 0, vec![]));
        assert_eq!(num("0.00"), (0, 0, 0, 2, vec![]));
        assert_eq!(num("1"), (1, 0, 0, 0, vec![1]));
        assert_eq!(num("12345.678"), (3, 1, 0, 3, vec![1, 2345, 6780]));
        assert_eq!(num("-0.0001"), (1, -1, 0x4000, 4, vec![1]));
        assert_eq!(num("10000"), (1, 1, 0, 0, vec![1]));
        assert_eq!(num("2.5000000000000000"), (2, 0, 0, 16, vec![2, 5000]));
        assert_eq!(num("NaN").2, 0xC000);
        assert!(numeric("1e5").is_none());
        assert!(numeric("").is_none());
    }

    #[test]
    fn scalars_encode_big_endian() {
        assert_eq!(
            text_to_binary(oid::INT4, b"-2"),
            Some(vec![255, 255, 255, 254])
        );
        assert_eq!(text_to_binary(oid::INT8, b"1").unwrap().len(), 8);
        assert_eq!(text_to_binary(oid::BOOL, b"t"), Some(vec![1]));
        assert_eq!(
            text_to_binary(oid::FLOAT8, b"0.1"),
            Some(0.1f64.to_be_bytes().to_vec())
        );
        assert_eq!(text_to_binary(oid::TEXT, b"abc"), Some(b"abc".to_vec()));
        assert_eq!(
            text_to_binary(oid::UUID, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
                .unwrap()
                .len(),
            16
        );
        assert!(text_to_binary(oid::INT2, b"70000").is_none());
        assert!(!convertible(1082)); // date
    }
}
