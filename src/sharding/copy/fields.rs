//! Reading fields out of one COPY line (its terminator already removed), as `CopyReadAttributesText` and
//! `CopyReadAttributesCSV` in `src/backend/commands/copyfromparse.c` read them. Only the fields up to the key are
//! scanned, and only the key is de-escaped; earlier fields are skipped with the same rules, because an escape can
//! swallow what would otherwise be a delimiter (with `DELIMITER 'A'`, `\x4A` is one byte, not a field break).

use super::options::{CopyFormat, CopyOptions};

/// One field's value, before type input.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Field {
    /// The raw field equals the NULL marker (and, in CSV, was not quoted).
    Null,
    /// The raw field equals the DEFAULT marker.
    Default,
    /// The de-escaped (text) or de-quoted (CSV) bytes.
    Value(Vec<u8>),
}

/// Why a field could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FieldError {
    /// The line has fewer fields than asked for.
    Missing,
    /// A CSV quoted field runs past the end of the line.
    UnterminatedQuote,
}

/// The bytes that decide how fields read, copied out of [`CopyOptions`] so the hot loop touches no strings.
pub(super) struct FieldReader {
    csv: bool,
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: Vec<u8>,
    default: Option<Vec<u8>>,
}

/// One scanned field: where its raw bytes end, whether a delimiter followed, whether any part was quoted.
struct Span {
    raw_end: usize,
    next: Option<usize>,
    quoted: bool,
}

impl FieldReader {
    pub fn new(options: &CopyOptions) -> FieldReader {
        FieldReader {
            csv: options.format == CopyFormat::Csv,
            delimiter: options.delimiter,
            quote: options.quote,
            escape: options.escape,
            null: options.null.as_bytes().to_vec(),
            default: options.default.as_ref().map(|d| d.as_bytes().to_vec()),
        }
    }

    /// The field at `index` (0-based), with its `quoted` flag (CSV: some part was inside quotes).
    pub fn field(&self, line: &[u8], index: usize) -> Result<(Field, bool), FieldError> {
        let mut start = 0;
        for _ in 0..index {
            start = self
                .scan(line, start, None)?
                .next
                .ok_or(FieldError::Missing)?;
        }
        let mut value = Vec::new();
        let span = self.scan(line, start, Some(&mut value))?;
        Ok((
            self.classify(&line[start..span.raw_end], span.quoted, value, true),
            span.quoted,
        ))
    }

    /// Every field of the line, for HEADER MATCH, which compares names with what the fields hold: only a NULL
    /// marker is set apart (a DEFAULT marker is just text there).
    pub fn all_fields(&self, line: &[u8]) -> Result<Vec<Field>, FieldError> {
        let mut fields = Vec::new();
        let mut start = 0;
        loop {
            let mut value = Vec::new();
            let span = self.scan(line, start, Some(&mut value))?;
            fields.push(self.classify(&line[start..span.raw_end], span.quoted, value, false));
            match span.next {
                Some(next) => start = next,
                None => return Ok(fields),
            }
        }
    }

    /// NULL and DEFAULT markers are compared with the raw input, and a CSV field with quotes never matches them:
    /// that is how `""` differs from an empty NULL.
    fn classify(&self, raw: &[u8], quoted: bool, value: Vec<u8>, with_default: bool) -> Field {
        if quoted {
            Field::Value(value)
        } else if raw == self.null.as_slice() {
            Field::Null
        } else if with_default && self.default.as_deref() == Some(raw) {
            Field::Default
        } else {
            Field::Value(value)
        }
    }

    fn scan(
        &self,
        line: &[u8],
        start: usize,
        out: Option<&mut Vec<u8>>,
    ) -> Result<Span, FieldError> {
        if self.csv {
            self.scan_csv(line, start, out)
        } else {
            Ok(self.scan_text(line, start, out))
        }
    }

    /// Text format: backslash escapes (`\b \f \n \r \t \v`, up to three octal digits, `\x` with one or two hex
    /// digits, any other character stands for itself); a backslash ending the line is dropped.
    fn scan_text(&self, line: &[u8], start: usize, mut out: Option<&mut Vec<u8>>) -> Span {
        let mut p = start;
        loop {
            let Some(&c) = line.get(p) else {
                return Span {
                    raw_end: p,
                    next: None,
                    quoted: false,
                };
            };
            if c == self.delimiter {
                return Span {
                    raw_end: p,
                    next: Some(p + 1),
                    quoted: false,
                };
            }
            p += 1;
            let byte = if c == b'\\' {
                let Some(&e) = line.get(p) else {
                    return Span {
                        raw_end: p,
                        next: None,
                        quoted: false,
                    };
                };
                p += 1;
                match e {
                    b'0'..=b'7' => {
                        let mut v = u32::from(e - b'0');
                        for _ in 0..2 {
                            match line.get(p) {
                                Some(&d @ b'0'..=b'7') => {
                                    v = (v << 3) + u32::from(d - b'0');
                                    p += 1;
                                }
                                _ => break,
                            }
                        }
                        (v & 0xff) as u8
                    }
                    b'x' => match line.get(p).and_then(|&h| hex(h)) {
                        Some(first) => {
                            p += 1;
                            match line.get(p).and_then(|&h| hex(h)) {
                                Some(second) => {
                                    p += 1;
                                    (first << 4) | second
                                }
                                None => first,
                            }
                        }
                        None => b'x',
                    },
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    other => other,
                }
            } else {
                c
            };
            if let Some(o) = out.as_deref_mut() {
                o.push(byte);
            }
        }
    }

    /// CSV: quotes may open and close anywhere in a field (`a"b,c"d` is `ab,cd`); inside quotes the escape byte
    /// escapes only a following quote or escape byte.
    fn scan_csv(
        &self,
        line: &[u8],
        start: usize,
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<Span, FieldError> {
        let mut p = start;
        let mut quoted = false;
        loop {
            // Outside quotes.
            loop {
                let Some(&c) = line.get(p) else {
                    return Ok(Span {
                        raw_end: p,
                        next: None,
                        quoted,
                    });
                };
                p += 1;
                if c == self.delimiter {
                    return Ok(Span {
                        raw_end: p - 1,
                        next: Some(p),
                        quoted,
                    });
                }
                if c == self.quote {
                    quoted = true;
                    break;
                }
                if let Some(o) = out.as_deref_mut() {
                    o.push(c);
                }
            }
            // Inside quotes.
            loop {
                let &c = line.get(p).ok_or(FieldError::UnterminatedQuote)?;
                p += 1;
                if c == self.escape {
                    if let Some(&n) = line.get(p) {
                        if n == self.escape || n == self.quote {
                            if let Some(o) = out.as_deref_mut() {
                                o.push(n);
                            }
                            p += 1;
                            continue;
                        }
                    }
                }
                if c == self.quote {
                    break;
                }
                if let Some(o) = out.as_deref_mut() {
                    o.push(c);
                }
            }
        }
    }
}

fn hex(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::super::options::{OptArg, RawOption};
    use super::*;

    fn reader(opts: &[(&str, &str)]) -> FieldReader {
        let list: Vec<RawOption> = opts
            .iter()
            .map(|(k, v)| RawOption::new(k, OptArg::Text(v.to_string())))
            .collect();
        FieldReader::new(&CopyOptions::from_list(&list, true).unwrap())
    }

    fn value(r: &FieldReader, line: &[u8], i: usize) -> Field {
        r.field(line, i).unwrap().0
    }

    fn v(s: &[u8]) -> Field {
        Field::Value(s.to_vec())
    }

    #[test]
    fn text_escapes_decode_as_the_server_decodes_them() {
        let r = reader(&[]);
        let line = b"a\\tb\t\\101\\x41\\x4g\\x\\7\\0101\t\\\\\\N\t\\N\t\\q\\\tlast\\";
        assert_eq!(value(&r, line, 0), v(b"a\tb"));
        assert_eq!(value(&r, line, 1), v(b"AA\x04gx\x07\x081"));
        assert_eq!(value(&r, line, 2), v(b"\\N"), "an escaped marker is data");
        assert_eq!(value(&r, line, 3), Field::Null);
        assert_eq!(
            value(&r, line, 4),
            v(b"q\tlast"),
            "an escaped delimiter is data; a trailing backslash drops"
        );
        assert_eq!(r.field(line, 5), Err(FieldError::Missing));
        assert_eq!(
            value(&r, b"", 0),
            v(b""),
            "an empty line is one empty field"
        );
        assert_eq!(
            value(&r, br"\377\400", 0),
            v(b"\xff\x00"),
            "octal wraps at 8 bits"
        );
    }

    #[test]
    fn an_escape_can_swallow_a_delimiter_that_is_a_hex_digit() {
        let r = reader(&[("delimiter", "A")]);
        assert_eq!(r.field(br"a\x4Ab", 1), Err(FieldError::Missing));
        assert_eq!(value(&r, br"a\x4Ab", 0), v(b"aJb"));
        assert_eq!(value(&r, b"aAb", 1), v(b"b"));
    }

    #[test]
    fn csv_quotes_open_anywhere_and_escape_only_quotes() {
        let r = reader(&[("format", "csv")]);
        assert_eq!(value(&r, br#"ab"c,d"e,f"#, 0), v(b"abc,de"));
        assert_eq!(value(&r, br#"ab"c,d"e,f"#, 1), v(b"f"));
        assert_eq!(value(&r, br#""say ""hi""",x"#, 0), v(br#"say "hi""#));
        assert_eq!(value(&r, b",x", 0), Field::Null);
        assert_eq!(
            r.field(br#""",x"#, 0),
            Ok((v(b""), true)),
            "quoted empty string is not NULL"
        );
        assert_eq!(value(&r, b"a,\"multi\nline\"", 1), v(b"multi\nline"));
        assert_eq!(r.field(b"a,\"open", 1), Err(FieldError::UnterminatedQuote));
        let e = reader(&[("format", "csv"), ("escape", "\\")]);
        assert_eq!(value(&e, br#""a\"b\\c\d",x"#, 0), v(br#"a"b\c\d"#));
        assert_eq!(
            value(&e, br#"a\b,c"#, 0),
            v(br#"a\b"#),
            "escape means nothing outside quotes"
        );
        assert_eq!(
            e.field(br#"a\"b,c"#, 0),
            Err(FieldError::UnterminatedQuote),
            "nor before a quote"
        );
    }

    #[test]
    fn markers_compare_raw_input() {
        let r = reader(&[("format", "csv"), ("null", "NA"), ("default", "DEF")]);
        assert_eq!(value(&r, b"DEF,x", 0), Field::Default);
        assert_eq!(value(&r, b"x,\"DEF\"", 1), v(b"DEF"));
        assert_eq!(value(&r, b"\"NA\",x", 0), v(b"NA"));
        assert_eq!(value(&r, b"x,NA", 1), Field::Null);
        assert_eq!(
            r.all_fields(b"NA,DEF,x").unwrap(),
            vec![Field::Null, v(b"DEF"), v(b"x")],
            "a header has no DEFAULT fields"
        );
        let t = reader(&[("null", "")]);
        assert_eq!(t.all_fields(b"\t\\N").unwrap(), vec![Field::Null, v(b"N")]);
    }
}
