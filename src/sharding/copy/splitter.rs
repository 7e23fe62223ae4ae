//! Turning the payloads of successive CopyData messages into rows, each with its shard key. Rows may span
//! CopyData messages and one message may hold many rows (psql sends 8 KiB chunks, pgx a message per row), so input
//! is buffered until the line scanner (`lines.rs`) finds a row's end; rows are then cut off the buffer without copying.
//!
//! The header line (HEADER, HEADER MATCH) is consumed here and never forwarded: the shards' statement has no HEADER
//! (see [`super::CopyFrom::shard_sql`]), so a shard that receives no rows has nothing to check, and MATCH is checked
//! once, against the column names, before the first row leaves. Everything after the end marker, up to CopyDone, is
//! dropped, as the server drops it. A last row without a terminator stays a row; it is the last row of whichever
//! shard gets it, so it stays last there too.

use bytes::{Bytes, BytesMut};

use super::fields::{Field, FieldError, FieldReader};
use super::lines::{Found, LineScanner};
use super::options::{Columns, CopyFormat, HeaderLine};
use super::{CopyError, CopyFrom};
use crate::protocol::MAX_MESSAGE_LEN;
use crate::sharding::key::{KeyType, KeyValue};

/// Largest row accepted by default: it must fit in one CopyData message to a shard (4 bytes of length included).
const MAX_ROW_LEN: usize = MAX_MESSAGE_LEN - 4;

/// One row of the input exactly as the client sent it (terminator included, except for a last row sent without
/// one), with its shard key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyRow {
    pub data: Bytes,
    pub key: KeyValue,
    /// 1-based line number in the client's data (the header, when there is one, is line 1).
    pub line: u64,
}

/// Splits a COPY FROM STDIN stream into rows. Feed it every CopyData payload with [`push`](Self::push) and take
/// rows with [`next_row`](Self::next_row) until it returns `None`; at CopyDone call [`finish`](Self::finish) and take
/// the remaining rows the same way. After an error the stream is unusable: the session sends CopyFail to the shards
/// and the error to the client.
pub struct RowSplitter {
    lines: LineScanner,
    reader: FieldReader,
    key_index: usize,
    key_type: KeyType,
    key_name: String,
    force_null: bool,
    force_not_null: bool,
    null: Vec<u8>,
    header: HeaderLine,
    /// The names HEADER MATCH compares with.
    columns: Option<Vec<String>>,
    /// Unconsumed input; always starts at the beginning of a line.
    buf: BytesMut,
    /// CopyDone seen: no more input will come.
    input_done: bool,
    /// The end marker or the end of the input was reached: no more rows.
    ended: bool,
    line_count: u64,
    rows: u64,
    max_row: usize,
}

impl RowSplitter {
    /// A splitter for `copy` whose key is field number `key_column_index` (0-based) of each row.
    ///
    /// The key's name (for FORCE_NULL/FORCE_NOT_NULL lists and messages) and the names HEADER MATCH compares with
    /// come from the statement's column list; a COPY without one that needs them is refused here: use
    /// [`for_table`](Self::for_table), which is given the table's columns.
    pub fn new(
        copy: &CopyFrom,
        key_column_index: usize,
        key_type: KeyType,
    ) -> Result<RowSplitter, CopyError> {
        match &copy.columns {
            Some(cols) => match cols.get(key_column_index) {
                Some(name) => Ok(Self::build(
                    copy,
                    key_column_index,
                    key_type,
                    name.clone(),
                    Some(cols.clone()),
                )),
                None => Err(missing_key_column(copy, None)),
            },
            None => {
                let o = &copy.options;
                let named = |c: &Option<Columns>| matches!(c, Some(Columns::Named(_)));
                if o.header == HeaderLine::Match || named(&o.force_null) || named(&o.force_not_null)
                {
                    return Err(CopyError::Unsupported(
                        "HEADER MATCH and FORCE_NULL/FORCE_NOT_NULL column lists need the table's column names \
                         (RowSplitter::for_table)"
                            .to_string(),
                    ));
                }
                let name = format!("field {}", key_column_index + 1);
                Ok(Self::build(copy, key_column_index, key_type, name, None))
            }
        }
    }

    /// A splitter for `copy` into a table whose columns are `table_columns`, in table order and as `COPY` without a
    /// column list fills them (no dropped or generated columns), sharded by `key_column`.
    pub fn for_table(
        copy: &CopyFrom,
        table_columns: &[String],
        key_column: &str,
        key_type: KeyType,
    ) -> Result<RowSplitter, CopyError> {
        let fields = copy
            .columns
            .clone()
            .unwrap_or_else(|| table_columns.to_vec());
        match fields.iter().position(|c| c == key_column) {
            Some(index) => Ok(Self::build(
                copy,
                index,
                key_type,
                key_column.to_string(),
                Some(fields),
            )),
            None => Err(missing_key_column(copy, Some(key_column))),
        }
    }

    fn build(
        copy: &CopyFrom,
        key_index: usize,
        key_type: KeyType,
        key_name: String,
        columns: Option<Vec<String>>,
    ) -> RowSplitter {
        let o = &copy.options;
        let csv = o.format == CopyFormat::Csv;
        let lists = |c: &Option<Columns>| csv && c.as_ref().is_some_and(|c| c.contains(&key_name));
        RowSplitter {
            lines: LineScanner::new(csv, o.quote, o.escape),
            reader: FieldReader::new(o),
            key_index,
            key_type,
            force_null: lists(&o.force_null),
            force_not_null: lists(&o.force_not_null),
            key_name,
            null: o.null.as_bytes().to_vec(),
            header: o.header,
            columns,
            buf: BytesMut::new(),
            input_done: false,
            ended: false,
            line_count: 0,
            rows: 0,
            max_row: MAX_ROW_LEN,
        }
    }

    /// Caps the size of one row, and so the memory a row spread over many CopyData messages can hold.
    pub fn with_max_row_len(mut self, limit: usize) -> RowSplitter {
        self.max_row = limit.min(MAX_ROW_LEN);
        self
    }

    /// Appends the payload of one CopyData message. Data after the end marker is dropped, as the server drops it.
    pub fn push(&mut self, payload: &[u8]) {
        if !self.ended && !self.input_done {
            self.buf.extend_from_slice(payload);
        }
    }

    /// CopyDone: the input is complete. The following calls to [`next_row`](Self::next_row) return the last rows,
    /// or the error for input that stops inside a quoted field or an end marker.
    pub fn finish(&mut self) {
        self.input_done = true;
    }

    /// Rows returned so far (a header is not a row).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// True once no more rows can come: the end marker was read, or the input is finished and every row taken.
    pub fn is_done(&self) -> bool {
        self.ended
    }

    /// The next complete row, or `None` until more input is pushed (after [`finish`](Self::finish): when every row
    /// has been returned).
    pub fn next_row(&mut self) -> Result<Option<CopyRow>, CopyError> {
        while !self.ended {
            let line_no = self.line_count + 1;
            let (content, data) = match self.lines.scan(&self.buf, self.input_done, line_no)? {
                Found::NeedMore => {
                    if self.buf.len() > self.max_row {
                        return Err(CopyError::RowTooLong {
                            line: line_no,
                            limit: self.max_row,
                        });
                    }
                    return Ok(None);
                }
                Found::Line { content_end, end } => {
                    let data = self.buf.split_to(end).freeze();
                    (data.slice(..content_end), data)
                }
                Found::EndMarker { content_end } => {
                    self.ended = true;
                    let data = self.buf.split_to(content_end).freeze();
                    self.buf = BytesMut::new();
                    (data.clone(), data)
                }
                Found::Eof { in_quote } => {
                    self.ended = true;
                    if in_quote {
                        return Err(CopyError::BadFormat {
                            line: line_no,
                            message: "unterminated CSV quoted field".to_string(),
                        });
                    }
                    let data = self.buf.split().freeze();
                    (data.clone(), data)
                }
            };
            if self.ended && data.is_empty() {
                // The end marker alone on its line, or nothing after the last terminator: no row.
                return Ok(None);
            }
            if data.len() > self.max_row {
                return Err(CopyError::RowTooLong {
                    line: line_no,
                    limit: self.max_row,
                });
            }
            self.line_count = line_no;
            if line_no == 1 && self.header != HeaderLine::Absent {
                self.check_header(&content)?;
                continue;
            }
            let key = self.key(&content)?;
            self.rows += 1;
            return Ok(Some(CopyRow {
                data,
                key,
                line: line_no,
            }));
        }
        Ok(None)
    }

    /// The key of one line, as `NextCopyFrom` would hand it to the key column's input function.
    fn key(&self, line: &[u8]) -> Result<KeyValue, CopyError> {
        let at = self.line_count;
        let column = || self.key_name.clone();
        let field = match self.reader.field(line, self.key_index) {
            Ok((field, _)) => field,
            Err(FieldError::Missing) => {
                return Err(CopyError::MissingKey {
                    line: at,
                    column: column(),
                })
            }
            Err(FieldError::UnterminatedQuote) => {
                return Err(CopyError::BadFormat {
                    line: at,
                    message: "unterminated CSV quoted field".to_string(),
                })
            }
        };
        // FORCE_NOT_NULL reads an unquoted NULL marker as the marker's text; FORCE_NULL reads a quoted one as NULL.
        let bytes = match field {
            Field::Null if self.force_not_null => self.null.clone(),
            Field::Null => {
                return Err(CopyError::NullKey {
                    line: at,
                    column: column(),
                })
            }
            Field::Value(v) if self.force_null && v == self.null => {
                return Err(CopyError::NullKey {
                    line: at,
                    column: column(),
                })
            }
            Field::Value(v) => v,
            Field::Default => {
                return Err(CopyError::DefaultKey {
                    line: at,
                    column: column(),
                })
            }
        };
        // The server rejects NUL and invalid UTF-8 in any field; for the key it matters before routing.
        let text = match String::from_utf8(bytes) {
            Ok(t) if !t.contains('\0') => t,
            _ => {
                return Err(CopyError::BadEncoding {
                    line: at,
                    column: column(),
                })
            }
        };
        self.key_type
            .parse_text(&text)
            .map_err(|source| CopyError::BadKey {
                line: at,
                column: column(),
                source,
            })
    }

    /// HEADER MATCH (`NextCopyFromRawFields`): as many fields as columns, each equal to its column's name.
    fn check_header(&self, line: &[u8]) -> Result<(), CopyError> {
        if self.header != HeaderLine::Match {
            return Ok(());
        }
        let bad = |message: String| CopyError::BadFormat { line: 1, message };
        let columns = self.columns.as_deref().unwrap_or_default();
        let fields = self
            .reader
            .all_fields(line)
            .map_err(|_| bad("unterminated CSV quoted field".to_string()))?;
        if fields.len() != columns.len() {
            return Err(bad(format!(
                "wrong number of fields in header line: got {}, expected {}",
                fields.len(),
                columns.len()
            )));
        }
        for (i, (field, name)) in fields.iter().zip(columns).enumerate() {
            let got = match field {
                Field::Value(v) if v == name.as_bytes() => continue,
                Field::Value(v) => format!("\"{}\"", String::from_utf8_lossy(v)),
                Field::Null | Field::Default => {
                    format!("null value (\"{}\")", String::from_utf8_lossy(&self.null))
                }
            };
            return Err(bad(format!(
                "column name mismatch in header line field {}: got {got}, expected \"{name}\"",
                i + 1
            )));
        }
        Ok(())
    }
}

fn missing_key_column(copy: &CopyFrom, key: Option<&str>) -> CopyError {
    let key = key.map(|k| format!(" \"{k}\"")).unwrap_or_default();
    CopyError::Unsupported(format!(
        "COPY into sharded table \"{}\" must include its shard key column{key}: rows without it would take the \
         column default, which only a shard can compute",
        copy.table.name
    ))
}
