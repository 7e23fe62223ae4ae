//! The two result messages the merge must look inside: RowDescription (column names and type OIDs, to choose
//! comparisons and to describe merged columns) and DataRow (column values as zero-copy slices of the frame). Rows
//! that pass through unchanged are forwarded as their original bytes; rows that lose hidden columns are re-framed
//! by copying the kept prefix.
//!
//! Reference: PostgreSQL docs 55.7, "RowDescription (B)" and "DataRow (B)".

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::backend::{put_cstr, put_message};
use crate::protocol::{read_cstr, tag, Frame};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {0}")]
pub struct WireError(pub &'static str);

/// One column of a RowDescription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Bytes,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(WireError(self.what))?;
        self.pos += n;
        Ok(s)
    }
    fn i16(&mut self) -> Result<i16, WireError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

pub fn parse_row_description(frame: &Frame) -> Result<Vec<Field>, WireError> {
    const WHAT: &str = "RowDescription";
    let body = frame.body();
    let mut r = Reader {
        buf: body,
        pos: 0,
        what: WHAT,
    };
    // A negative count is malformed, not "no columns" (Postgres never sends one).
    let n = usize::try_from(r.i16()?).map_err(|_| WireError(WHAT))?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let (name, next) = read_cstr(body, r.pos).ok_or(WireError(WHAT))?;
        let start = r.pos;
        r.pos = next;
        let name = frame.raw.slice(5 + start..5 + start + name.len());
        fields.push(Field {
            name,
            table_oid: r.i32()? as u32,
            column: r.i16()?,
            type_oid: r.i32()? as u32,
            type_len: r.i16()?,
            type_mod: r.i32()?,
            format: r.i16()?,
        });
    }
    Ok(fields)
}

pub fn write_row_description(out: &mut BytesMut, fields: &[Field]) {
    put_message(out, tag::ROW_DESCRIPTION, |b| {
        b.put_i16(fields.len() as i16);
        for f in fields {
            put_cstr(b, &f.name);
            b.put_u32(f.table_oid);
            b.put_i16(f.column);
            b.put_u32(f.type_oid);
            b.put_i16(f.type_len);
            b.put_i32(f.type_mod);
            b.put_i16(f.format);
        }
    });
}

/// The values of a DataRow as slices of the frame; `None` is NULL.
pub fn data_row_values(frame: &Frame) -> Result<Vec<Option<Bytes>>, WireError> {
    let mut values = Vec::new();
    for_each_value(frame.body(), |start, len| {
        values.push(len.map(|len| frame.raw.slice(5 + start..5 + start + len)));
    })?;
    Ok(values)
}

/// Walks the column boundaries of a DataRow body: `f(value_start, Some(len) | None)`.
fn for_each_value(body: &[u8], mut f: impl FnMut(usize, Option<usize>)) -> Result<(), WireError> {
    const WHAT: &str = "DataRow";
    let mut r = Reader {
        buf: body,
        pos: 0,
        what: WHAT,
    };
    let n = usize::try_from(r.i16()?).map_err(|_| WireError(WHAT))?;
    for _ in 0..n {
        let len = r.i32()?;
        if len == -1 {
            f(r.pos, None);
        } else {
            let len = usize::try_from(len).map_err(|_| WireError(WHAT))?;
            let start = r.pos;
            r.take(len)?;
            f(start, Some(len));
        }
    }
    if r.pos != body.len() {
        return Err(WireError(WHAT));
    }
    Ok(())
}

/// Writes a DataRow keeping only its first `keep` columns (dropping the hidden ones shards returned for sorting).
pub fn write_data_row_prefix(
    out: &mut BytesMut,
    frame: &Frame,
    keep: usize,
) -> Result<(), WireError> {
    let body = frame.body();
    let mut end = 2;
    let mut seen = 0;
    for_each_value(body, |start, len| {
        if seen < keep {
            end = start + len.unwrap_or(0);
        }
        seen += 1;
    })?;
    if seen < keep {
        return Err(WireError("DataRow"));
    }
    put_message(out, tag::DATA_ROW, |b| {
        b.put_i16(keep as i16);
        b.put_slice(&body[2..end]);
    });
    Ok(())
}

pub fn write_data_row(out: &mut BytesMut, values: &[Option<Bytes>]) {
    put_message(out, tag::DATA_ROW, |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::{data_row, row_description_text};
    use crate::protocol::framing::split_frame;

    fn frame(buf: &mut BytesMut) -> Frame {
        split_frame(buf).unwrap().unwrap()
    }

    #[test]
    fn negative_column_counts_are_malformed() {
        // Found by fuzz/fuzz_targets/backend_messages.rs: a count of -14592 was read as no columns.
        for tag in [tag::ROW_DESCRIPTION, tag::DATA_ROW] {
            let mut buf = BytesMut::new();
            put_message(&mut buf, tag, |b| b.put_i16(-1));
            let f = frame(&mut buf);
            assert!(parse_row_description(&f).is_err());
            assert!(data_row_values(&f).is_err());
            assert_eq!(crate::protocol::backend::parse_data_row(f.body()), None);
        }
        // And a value length below -1 is not NULL.
        let mut buf = BytesMut::new();
        put_message(&mut buf, tag::DATA_ROW, |b| {
            b.put_i16(1);
            b.put_i32(-2);
        });
        let f = frame(&mut buf);
        assert!(data_row_values(&f).is_err());
        assert_eq!(crate::protocol::backend::parse_data_row(f.body()), None);
    }

    #[test]
    fn row_descriptions_round_trip() {
        let mut buf = BytesMut::new();
        row_description_text(&mut buf, &["a", "bb"]);
        let original = buf.clone();
        let fields = parse_row_description(&frame(&mut buf)).unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(&fields[1].name[..], b"bb");
        assert_eq!(fields[0].type_oid, 25);
        let mut again = BytesMut::new();
        write_row_description(&mut again, &fields);
        assert_eq!(again, original);
    }

    #[test]
    fn data_rows_split_and_lose_trailing_columns() {
        let mut buf = BytesMut::new();
        data_row(&mut buf, &[Some("x"), None, Some("hidden")]);
        let f = frame(&mut buf);
        let values = data_row_values(&f).unwrap();
        assert_eq!(
            values,
            vec![
                Some(Bytes::from_static(b"x")),
                None,
                Some(Bytes::from_static(b"hidden"))
            ]
        );
        let mut out = BytesMut::new();
        write_data_row_prefix(&mut out, &f, 2).unwrap();
        let mut expected = BytesMut::new();
        data_row(&mut expected, &[Some("x"), None]);
        assert_eq!(out, expected);
        out.clear();
        write_data_row_prefix(&mut out, &f, 0).unwrap();
        assert_eq!(&out[..], b"D\x00\x00\x00\x06\x00\x00");
    }

    #[test]
    fn truncated_rows_are_errors() {
        let f = Frame {
            tag: b'D',
            raw: Bytes::from_static(b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x05ab"),
        };
        assert!(data_row_values(&f).is_err());
    }
}
