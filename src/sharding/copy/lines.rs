//! Where rows end in a COPY FROM STDIN stream: a resumable port of `CopyReadLineText`
//! (`src/backend/commands/copyfromparse.c`), corners included, because a shard re-reads each forwarded row on its
//! own and must find the same boundaries the splitter found:
//! - the terminator is `\n`, `\r` or `\r\n`, fixed by the first line; another one later is an error;
//! - text format: a backslash makes the next byte data (so `\` + newline continues the row); `\.` ends the data and
//!   whatever precedes it on its line is the last row;
//! - CSV: terminators inside quotes are data; `\.` alone at the start of a row ends the data (the server's rule up to
//!   PostgreSQL 17; 18 reads such a line as data), and `\.` followed by anything else is data, read again from the
//!   `.` on (the server's `NO_END_OF_COPY_GOTO` undoes its look-ahead);
//! - a missing byte after CopyDone reads as NUL, as in the server's padded buffer.

use super::CopyError;

/// The stream's line terminator (`EolType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Eol {
    Unknown,
    Nl,
    Cr,
    CrNl,
}

/// What the scan of the buffered input found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// A terminated line: content `buf[..content_end]`, whole row `buf[..end]`.
    Line { content_end: usize, end: usize },
    /// The end-of-data marker; `buf[..content_end]` precedes it on its line.
    EndMarker { content_end: usize },
    /// The input is complete and the whole buffer is its last, unterminated line (possibly empty).
    Eof { in_quote: bool },
    /// More input is needed to decide.
    NeedMore,
}

enum Marker {
    NeedMore,
    End,
    /// Not the marker (CSV only): scanning resumes right after the backslash.
    Data,
}

/// Line-finding state that outlives one scan: the terminator style, and how far into the current (incomplete) line
/// the last scan got, so a row split over many CopyData messages is scanned once.
pub(super) struct LineScanner {
    csv: bool,
    quote: u8,
    /// The CSV escape byte when it differs from the quote (the server ignores it otherwise).
    escape: Option<u8>,
    eol: Eol,
    pos: usize,
    in_quote: bool,
    last_was_esc: bool,
}

impl LineScanner {
    pub fn new(csv: bool, quote: u8, escape: u8) -> LineScanner {
        LineScanner {
            csv,
            quote,
            escape: (csv && escape != quote).then_some(escape),
            eol: Eol::Unknown,
            pos: 0,
            in_quote: false,
            last_was_esc: false,
        }
    }

    /// Scans `buf`, which starts at the beginning of a line; `done` means no more input will follow. After a
    /// `Line`, the caller removes `buf[..end]` before the next call. `line` numbers error messages.
    pub fn scan(&mut self, buf: &[u8], done: bool, line: u64) -> Result<Found, CopyError> {
        let bad = |message: &str| CopyError::BadFormat {
            line,
            message: message.to_string(),
        };
        let len = buf.len();
        let mut pos = self.pos;
        loop {
            // State before this byte, restored whenever the byte cannot be decided yet.
            let start = pos;
            let (saved_quote, saved_esc) = (self.in_quote, self.last_was_esc);
            let need_more = |s: &mut LineScanner| {
                s.pos = start;
                s.in_quote = saved_quote;
                s.last_was_esc = saved_esc;
                Ok(Found::NeedMore)
            };
            let Some(&c) = buf.get(pos) else {
                self.pos = pos;
                return Ok(if done {
                    Found::Eof {
                        in_quote: self.csv && self.in_quote,
                    }
                } else {
                    Found::NeedMore
                });
            };
            pos += 1;
            if self.csv {
                // Decide on lookahead before touching the quote state, in case `\` or `\r` is the quote or escape.
                if (c == b'\\' || c == b'\r') && pos >= len && !done {
                    return need_more(self);
                }
                if self.in_quote && Some(c) == self.escape {
                    self.last_was_esc = !self.last_was_esc;
                }
                if c == self.quote && !self.last_was_esc {
                    self.in_quote = !self.in_quote;
                }
                if Some(c) != self.escape {
                    self.last_was_esc = false;
                }
            }
            let outside = !self.csv || !self.in_quote;
            if c == b'\r' && outside {
                match self.eol {
                    Eol::Unknown | Eol::CrNl => {
                        if pos >= len && !done {
                            return need_more(self);
                        }
                        if buf.get(pos) == Some(&b'\n') {
                            pos += 1;
                            self.eol = Eol::CrNl;
                        } else if self.eol == Eol::CrNl {
                            return Err(bad(self.cr_message()));
                        } else {
                            self.eol = Eol::Cr;
                        }
                    }
                    Eol::Nl => return Err(bad(self.cr_message())),
                    Eol::Cr => {}
                }
                return Ok(self.line_end(start, pos));
            }
            if c == b'\n' && outside {
                if matches!(self.eol, Eol::Cr | Eol::CrNl) {
                    return Err(bad(if self.csv {
                        "unquoted newline found in data"
                    } else {
                        "literal newline found in data"
                    }));
                }
                self.eol = Eol::Nl;
                return Ok(self.line_end(start, pos));
            }
            if c == b'\\' && (!self.csv || start == 0) {
                if pos >= len {
                    if !done {
                        return need_more(self);
                    }
                    // A backslash ending the input ends the last line.
                    self.pos = pos;
                    return Ok(Found::Eof {
                        in_quote: self.csv && self.in_quote,
                    });
                }
                if buf[pos] == b'.' {
                    match self.end_marker(buf, pos + 1, done, &bad)? {
                        Marker::NeedMore => return need_more(self),
                        Marker::End => {
                            self.reset();
                            return Ok(Found::EndMarker { content_end: start });
                        }
                        Marker::Data => {}
                    }
                } else if !self.csv {
                    pos += 1;
                }
            }
        }
    }

    fn line_end(&mut self, content_end: usize, end: usize) -> Found {
        self.reset();
        Found::Line { content_end, end }
    }

    fn reset(&mut self) {
        self.pos = 0;
        self.in_quote = false;
        self.last_was_esc = false;
    }

    fn cr_message(&self) -> &'static str {
        if self.csv {
            "unquoted carriage return found in data"
        } else {
            "literal carriage return found in data"
        }
    }

    /// After `\.` (the `.` is just before `pos`): is this the end marker?
    fn end_marker(
        &self,
        buf: &[u8],
        mut pos: usize,
        done: bool,
        bad: &dyn Fn(&str) -> CopyError,
    ) -> Result<Marker, CopyError> {
        let next = |pos: &mut usize| -> Option<u8> {
            if *pos >= buf.len() && !done {
                return None;
            }
            let b = buf.get(*pos).copied().unwrap_or(0);
            *pos += 1;
            Some(b)
        };
        let not_marker = |message: &str| {
            if self.csv {
                Ok(Marker::Data)
            } else {
                Err(bad(message))
            }
        };
        if self.eol == Eol::CrNl {
            match next(&mut pos) {
                None => return Ok(Marker::NeedMore),
                Some(b'\r') => {}
                Some(b'\n') => {
                    return not_marker("end-of-copy marker does not match previous newline style")
                }
                Some(_) => return not_marker("end-of-copy marker corrupt"),
            }
        }
        let Some(c2) = next(&mut pos) else {
            return Ok(Marker::NeedMore);
        };
        if c2 != b'\r' && c2 != b'\n' {
            return not_marker("end-of-copy marker corrupt");
        }
        let same_style = match self.eol {
            Eol::Unknown => true,
            Eol::Nl | Eol::CrNl => c2 == b'\n',
            Eol::Cr => c2 == b'\r',
        };
        if !same_style {
            return Err(bad(
                "end-of-copy marker does not match previous newline style",
            ));
        }
        Ok(Marker::End)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of `input` fed at once, as (content, row) pairs, ending with the final unterminated line or the
    /// end marker, or the first error.
    fn lines(csv: bool, input: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut s = LineScanner::new(csv, b'"', b'"');
        let mut buf = input;
        let mut out = Vec::new();
        loop {
            match s.scan(buf, true, 1).map_err(|e| e.to_string())? {
                Found::Line { content_end, end } => {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    out.push((text(&buf[..content_end]), text(&buf[..end])));
                    buf = &buf[end..];
                }
                Found::EndMarker { content_end } => {
                    out.push((
                        String::from_utf8_lossy(&buf[..content_end]).into(),
                        "<end>".into(),
                    ));
                    return Ok(out);
                }
                Found::Eof { in_quote } => {
                    out.push((
                        String::from_utf8_lossy(buf).into(),
                        format!("<eof quote={in_quote}>"),
                    ));
                    return Ok(out);
                }
                Found::NeedMore => unreachable!("done is set"),
            }
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn terminators_are_fixed_by_the_first_line() {
        assert_eq!(
            lines(false, b"a\r\nb\r\n").unwrap(),
            pairs(&[("a", "a\r\n"), ("b", "b\r\n"), ("", "<eof quote=false>")])
        );
        assert_eq!(
            lines(false, b"a\rb\r").unwrap(),
            pairs(&[("a", "a\r"), ("b", "b\r"), ("", "<eof quote=false>")])
        );
        assert_eq!(
            lines(false, b"a\r\nb\n").unwrap_err(),
            "literal newline found in data"
        );
        assert_eq!(
            lines(false, b"a\nb\r\n").unwrap_err(),
            "literal carriage return found in data"
        );
        assert_eq!(
            lines(true, b"a\rb\n").unwrap_err(),
            "unquoted newline found in data"
        );
        assert_eq!(
            lines(false, b"a\r\nb\rc").unwrap_err(),
            "literal carriage return found in data"
        );
    }

    #[test]
    fn text_backslash_escapes_the_next_byte_and_dot_ends_the_data() {
        assert_eq!(
            lines(false, b"a\\\nb\n").unwrap(),
            pairs(&[("a\\\nb", "a\\\nb\n"), ("", "<eof quote=false>")])
        );
        assert_eq!(
            lines(false, b"x\\.\nrest\n").unwrap(),
            pairs(&[("x", "<end>")])
        );
        assert_eq!(
            lines(false, b"x\n\\\\.\n").unwrap()[1].0,
            "\\\\.",
            "an escaped backslash before a dot is data"
        );
        assert_eq!(
            lines(false, b"x\n\\.").unwrap_err(),
            "end-of-copy marker corrupt"
        );
        assert_eq!(
            lines(false, b"x\n\\.y\n").unwrap_err(),
            "end-of-copy marker corrupt"
        );
        assert_eq!(
            lines(false, b"x\r\n\\.\n").unwrap_err(),
            "end-of-copy marker does not match previous newline style"
        );
        assert_eq!(
            lines(false, b"x\r\n\\.\r\n").unwrap(),
            pairs(&[("x", "x\r\n"), ("", "<end>")])
        );
        assert_eq!(
            lines(false, b"x\t\\").unwrap(),
            pairs(&[("x\t\\", "<eof quote=false>")])
        );
    }

    #[test]
    fn csv_quotes_hide_terminators_and_markers() {
        assert_eq!(
            lines(true, b"1,\"a\nb\r\n\\.\n\"\n2\n").unwrap(),
            pairs(&[
                ("1,\"a\nb\r\n\\.\n\"", "1,\"a\nb\r\n\\.\n\"\n"),
                ("2", "2\n"),
                ("", "<eof quote=false>")
            ])
        );
        assert_eq!(
            lines(true, b"1\n\\.\nignored").unwrap(),
            pairs(&[("1", "1\n"), ("", "<end>")])
        );
        assert_eq!(
            lines(true, b"\\.,x\n").unwrap()[0].0,
            "\\.,x",
            "\\. followed by data is data"
        );
        assert_eq!(
            lines(true, b"1,\\.\n").unwrap()[0].0,
            "1,\\.",
            "\\. is a marker only at a row's start"
        );
        assert_eq!(
            lines(true, b"1,\"open\n").unwrap(),
            pairs(&[("1,\"open\n", "<eof quote=true>")])
        );
        // After a `\.` that is not the marker, the bytes looked at count again: this quote opens a section.
        assert_eq!(
            lines(true, b"\\.\"a\nb\n").unwrap(),
            pairs(&[("\\.\"a\nb\n", "<eof quote=true>")])
        );
        assert_eq!(
            lines(true, b"a\r\n\\.\nc\r\n").unwrap_err(),
            "unquoted newline found in data",
            "nor is the newline after it skipped"
        );
    }

    #[test]
    fn csv_escape_differs_from_quote() {
        let mut s = LineScanner::new(true, b'"', b'\\');
        let buf = b"\"a\\\"\nb\"\nnext\n";
        assert_eq!(
            s.scan(buf, true, 1).unwrap(),
            Found::Line {
                content_end: 7,
                end: 8
            }
        );
    }
}
