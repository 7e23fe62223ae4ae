//! COPY on a sharded table: `COPY t FROM STDIN` rows are split by shard key and each shard receives its own rows in
//! its own `COPY ... FROM STDIN`; `COPY ... TO STDOUT` runs on every shard and the outputs are concatenated.
//!
//! The pieces, in the order the session uses them (the session does the I/O, nothing here does):
//! 1. [`CopyStatement::parse`] reads the statement (both the `WITH (option ...)` and the pre-9.0 syntax) and either
//!    declines it (not COPY, or a server-side file or program) or returns what to do with it;
//! 2. [`RowSplitter`] takes the payloads of successive CopyData messages, finds complete rows exactly where the
//!    server would (`src/backend/commands/copyfromparse.c`: `CopyReadLineText`, `CopyReadAttributesText`,
//!    `CopyReadAttributesCSV`) and reads each row's key field;
//! 3. [`ShardBatches`] groups the rows per shard into CopyData frames of bounded size.
//!
//! Rows travel unmodified: a shard re-parses exactly the bytes the client sent, so whatever Postgres makes of a row
//! (escapes, quoting, NULL markers, column defaults, type input) is what it would have made of it without the
//! proxy. The splitter's only job is to agree with the server on where rows begin and end and on the key's value.
//!
//! Reference: PostgreSQL documentation, "COPY" (SQL command reference) and 55.2.6 "COPY Operations".

mod batches;
mod fields;
mod lines;
mod options;
mod splitter;
mod statement;
#[cfg(test)]
mod tests;

pub use batches::{BatchError, ShardBatches, ShardFrame, DEFAULT_FLUSH_THRESHOLD};
pub use options::{Columns, CopyFormat, CopyOptions, HeaderLine};
pub use splitter::{CopyRow, RowSplitter};
pub use statement::{CopyFrom, CopySource, CopyStatement, CopyTo, TableName};

use super::key::KeyError;

/// Everything that can go wrong between a COPY statement and the rows it carries. Each variant maps to the
/// SQLSTATE the session sends in its ErrorResponse ([`CopyError::sqlstate`]); messages follow the server's wording
/// where there is one, so clients see what they would have seen without the proxy.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// The statement does not parse, or names an option Postgres does not know (42601).
    #[error("{0}")]
    Syntax(String),
    /// An option value Postgres itself refuses (22023).
    #[error("{0}")]
    InvalidOption(String),
    /// Valid COPY that cannot be split by key (0A000): binary format, foreign file encodings, rows that skip the key
    /// column, options whose effect depends on data the proxy does not see.
    #[error("{0}")]
    Unsupported(String),
    /// Input that is not well-formed COPY data (22P04), with the line it was found on (1-based, header included).
    #[error("{message}")]
    BadFormat { line: u64, message: String },
    /// A row too short to have the key field (22P04).
    #[error("missing data for column \"{column}\"")]
    MissingKey { line: u64, column: String },
    /// The key field is not a valid value of the key's type (22P02).
    #[error("{source}")]
    BadKey {
        line: u64,
        column: String,
        source: KeyError,
    },
    /// The key field is NULL: such a row belongs to no shard (23502).
    #[error("null value in column \"{column}\" violates not-null constraint")]
    NullKey { line: u64, column: String },
    /// The key field asks for the column default (`DEFAULT` option), which only the server can evaluate (0A000).
    #[error("the DEFAULT marker cannot be used for shard key column \"{column}\"")]
    DefaultKey { line: u64, column: String },
    /// The key field is not valid UTF-8, or contains a NUL byte (22021).
    #[error("invalid byte sequence for encoding \"UTF8\" in column \"{column}\"")]
    BadEncoding { line: u64, column: String },
    /// A single row larger than the splitter buffers (54000).
    #[error("COPY row is longer than {limit} bytes")]
    RowTooLong { line: u64, limit: usize },
}

impl CopyError {
    /// The SQLSTATE for the client's ErrorResponse.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CopyError::Syntax(_) => "42601",
            CopyError::InvalidOption(_) => "22023",
            CopyError::Unsupported(_) | CopyError::DefaultKey { .. } => "0A000",
            CopyError::BadFormat { .. } | CopyError::MissingKey { .. } => "22P04",
            CopyError::BadKey { .. } => "22P02",
            CopyError::NullKey { .. } => "23502",
            CopyError::BadEncoding { .. } => "22021",
            CopyError::RowTooLong { .. } => "54000",
        }
    }

    /// The input line an error about data was found on, for the ErrorResponse's context
    /// (`COPY t, line 3`, as the server writes it). `None` for errors about the statement.
    pub fn line(&self) -> Option<u64> {
        match self {
            CopyError::Syntax(_) | CopyError::InvalidOption(_) | CopyError::Unsupported(_) => None,
            CopyError::BadFormat { line, .. }
            | CopyError::MissingKey { line, .. }
            | CopyError::BadKey { line, .. }
            | CopyError::NullKey { line, .. }
            | CopyError::DefaultKey { line, .. }
            | CopyError::BadEncoding { line, .. }
            | CopyError::RowTooLong { line, .. } => Some(*line),
        }
    }
}
