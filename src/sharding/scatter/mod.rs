//! Scatter/gather reads: a SELECT without a shard key runs on every shard and the replies are merged into what one
//! Postgres holding all rows would have returned. The data path is
//!
//! ```text
//! client SQL --plan--> Plan { shard SQL, how to merge } --run--> Query to every shard
//!   shard replies (RowDescription, DataRow..., CommandComplete) --merge--> one RowDescription, DataRows, SELECT n
//! ```
//!
//! - [`plan`] reads the statement (sqlparser, Postgres dialect) and decides the merge: concatenation, a k-way merge
//!   for ORDER BY (LIMIT n OFFSET m becomes LIMIT n+m on each shard), or combining partial aggregates per group
//!   (avg becomes sum and count). Anything it cannot merge exactly is refused with [`ScatterError::Unsupported`]
//!   naming the feature, never answered approximately.
//! - [`merge`] works on wire messages in text format: comparisons follow Postgres' ordering per type OID
//!   ([`value`]); [`combine`] merges partial aggregates, with sums and averages in exact decimal arithmetic on
//!   numeric text ([`numeric`]).
//! - [`run`] drives the shards' connections and always leaves each one at ReadyForQuery.
//!
//! What the plan assumes and cannot check: each shard's rows for the statement's FROM/WHERE are exactly its share
//! of the rows (tables co-located on the key, or reference tables), which is the router's decision; the shards'
//! sessions agree on settings that shape text output (DateStyle ISO, TimeZone, extra_float_digits >= 1); text sorts
//! under the "C" collation (see [`value`]); user-defined aggregates are unknown to the planner (it knows Postgres'
//! built-in ones by name).
//!
//! Reference: PostgreSQL docs 55.7 "Message Formats"; src/backend/utils/adt/numeric.c, float.c (ports cited where
//! used).

pub mod binary;
pub mod combine;
pub mod merge;
pub mod numeric;
pub mod plan;
pub mod run;
pub mod value;
pub mod wire;

mod aggregate;
mod items;
mod scan;

pub use plan::{ColumnRef, MergedColumn, Plan, PlanKind, SortKey, Window};
pub use run::{
    scatter_query, scatter_query_into, scatter_request, MergeSink, ScatterOutcome, SINK_CHUNK,
};

use crate::backend::server::ServerIoError;
use crate::protocol::backend::{error_response, put_cstr, put_message, Severity};
use crate::protocol::tag;

/// SQLSTATE program_limit_exceeded.
const PROGRAM_LIMIT_EXCEEDED: &str = "54000";

/// Bounds on the state a merge may hold (only aggregation holds any; 0 or `usize::MAX`: no bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Groups at most (`general.scatter_max_groups`).
    pub max_groups: usize,
    /// Estimated bytes of merged state at most (`general.scatter_max_buffer_bytes`).
    pub max_buffer_bytes: usize,
}

impl Limits {
    pub const UNLIMITED: Limits = Limits {
        max_groups: usize::MAX,
        max_buffer_bytes: usize::MAX,
    };

    /// The configured limits, with 0 meaning none.
    pub fn from_config(general: &crate::config::General) -> Limits {
        let or_max = |n: usize| if n == 0 { usize::MAX } else { n };
        Limits {
            max_groups: or_max(general.scatter_max_groups),
            max_buffer_bytes: or_max(general.scatter_max_buffer_bytes),
        }
    }
}

/// SQLSTATE feature_not_supported.
const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE numeric_value_out_of_range.
pub(crate) const NUMERIC_OUT_OF_RANGE: &str = "22003";

#[derive(Debug, thiserror::Error)]
pub enum ScatterError {
    /// The statement (or a column type in its result) needs a merge shardpool does not do exactly; the string names
    /// the feature.
    #[error("scatter/gather does not support {0} across shards")]
    Unsupported(String),
    #[error("cannot parse statement: {0}")]
    Parse(String),
    /// A shard answered with an ErrorResponse; the fields are the server's (position fields dropped, since they
    /// point into the rewritten shard query).
    #[error("shard {shard} ({addr}): {} {}", .fields.code(), .fields.message())]
    Shard {
        shard: usize,
        addr: crate::backend::ServerAddr,
        fields: ShardErrorFields,
    },
    #[error("shard {shard}: {source}")]
    Io {
        shard: usize,
        #[source]
        source: ServerIoError,
    },
    /// Shards disagree on the result's shape, or a reply is not what the simple query protocol promises.
    #[error("shard {shard}: {message}")]
    Protocol { shard: usize, message: String },
    /// A value could not be merged the way Postgres would (overflow, unreadable text); `code` is the SQLSTATE
    /// Postgres would have raised.
    #[error("{message}")]
    Data { code: &'static str, message: String },
    /// The merge needed more state than a configured limit allows (`setting` names it).
    #[error("a multi-shard {what} needs more than {setting} ({limit}) allows")]
    LimitExceeded {
        what: &'static str,
        setting: &'static str,
        limit: usize,
    },
    /// The client could not take the merged result (gone, or stalled past client_stall_timeout); the caller holds
    /// the reason.
    #[error("the client stopped taking the result: {0}")]
    Client(String),
}

impl ScatterError {
    pub(crate) fn unsupported(feature: impl Into<String>) -> ScatterError {
        ScatterError::Unsupported(feature.into())
    }

    pub(crate) fn protocol(shard: usize, message: impl Into<String>) -> ScatterError {
        ScatterError::Protocol {
            shard,
            message: message.into(),
        }
    }

    /// Whether the servers may still be usable (every error but I/O leaves them drained to ReadyForQuery).
    pub fn servers_reusable(&self) -> bool {
        !matches!(self, ScatterError::Io { .. } | ScatterError::Client(_))
    }

    /// The SQLSTATE of the ErrorResponse [`Self::write_error_response`] writes.
    pub fn sqlstate(&self) -> &str {
        match self {
            ScatterError::Shard { fields, .. } => fields.code(),
            ScatterError::Unsupported(_) => FEATURE_NOT_SUPPORTED,
            ScatterError::Parse(_) => "42601",
            ScatterError::Data { code, .. } => code,
            ScatterError::LimitExceeded { .. } => PROGRAM_LIMIT_EXCEEDED,
            ScatterError::Client(_) | ScatterError::Io { .. } => "08006",
            ScatterError::Protocol { .. } => "XX000",
        }
    }

    /// The ErrorResponse a client sees: a shard's own error keeps its SQLSTATE and message, with the shard named in
    /// the detail; shardpool's refusals get feature_not_supported; I/O and protocol failures say only that a shard
    /// failed, since addresses and internals are for the log.
    pub fn write_error_response(&self, buf: &mut bytes::BytesMut) {
        let code = self.sqlstate();
        match self {
            ScatterError::Shard { shard, fields, .. } => fields.write(buf, *shard),
            ScatterError::Unsupported(_) | ScatterError::Parse(_) => {
                error_response(buf, Severity::Error, code, &self.to_string(), None)
            }
            ScatterError::Data { message, .. } => {
                error_response(buf, Severity::Error, code, message, None)
            }
            ScatterError::LimitExceeded { setting, .. } => error_response(
                buf,
                Severity::Error,
                code,
                &self.to_string(),
                Some(&format!(
                    "shardpool merges the shards' partial results in memory, bounded by general.{setting}"
                )),
            ),
            ScatterError::Client(_) => error_response(
                buf,
                Severity::Error,
                code,
                "the client stopped reading the result",
                None,
            ),
            ScatterError::Io { shard, .. } => error_response(
                buf,
                Severity::Error,
                code,
                &format!("lost the connection to shard {shard} during a scatter/gather query"),
                None,
            ),
            ScatterError::Protocol { shard, .. } => error_response(
                buf,
                Severity::Error,
                code,
                &format!("shard {shard} sent a reply scatter/gather could not merge"),
                None,
            ),
        }
    }
}

/// All fields of a shard's ErrorResponse, in order, except the ones that point into the query text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardErrorFields {
    pub fields: Vec<(u8, String)>,
}

impl ShardErrorFields {
    pub fn parse(body: &[u8]) -> ShardErrorFields {
        let mut fields = Vec::new();
        let mut pos = 0;
        while let Some(&field) = body.get(pos) {
            if field == 0 {
                break;
            }
            let Some((value, next)) = crate::protocol::read_cstr(body, pos + 1) else {
                break;
            };
            // 'P' and 'p'/'q' locate the error in the statement the shard ran, which the client never sent.
            if !matches!(field, b'P' | b'p' | b'q') {
                fields.push((field, String::from_utf8_lossy(value).into_owned()));
            }
            pos = next;
        }
        ShardErrorFields { fields }
    }

    fn get(&self, field: u8) -> &str {
        self.fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    pub fn code(&self) -> &str {
        self.get(b'C')
    }

    pub fn message(&self) -> &str {
        self.get(b'M')
    }

    pub fn detail(&self) -> &str {
        self.get(b'D')
    }

    /// Re-emits the error with the shard named in its detail (prepended to the server's own detail, if any).
    fn write(&self, buf: &mut bytes::BytesMut, shard: usize) {
        let named = match self.detail() {
            "" => format!("on shard {shard}"),
            d => format!("on shard {shard}: {d}"),
        };
        put_message(buf, tag::ERROR_RESPONSE, |b| {
            let mut wrote_detail = false;
            for (field, value) in &self.fields {
                if *field == b'D' {
                    b.extend_from_slice(b"D");
                    put_cstr(b, named.as_bytes());
                    wrote_detail = true;
                } else {
                    b.extend_from_slice(&[*field]);
                    put_cstr(b, value.as_bytes());
                }
            }
            if !wrote_detail {
                b.extend_from_slice(b"D");
                put_cstr(b, named.as_bytes());
            }
            b.extend_from_slice(&[0]);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::split_frame;

    #[test]
    fn shard_errors_keep_their_fields_drop_positions_and_name_the_shard() {
        let body = b"SERROR\0C42P01\0Mrelation \"x\" does not exist\0P15\0\0";
        let fields = ShardErrorFields::parse(body);
        assert_eq!(fields.code(), "42P01");
        assert!(fields.fields.iter().all(|(f, _)| *f != b'P'));
        let mut buf = bytes::BytesMut::new();
        fields.write(&mut buf, 2);
        let frame = split_frame(&mut buf).unwrap().unwrap();
        let again = ShardErrorFields::parse(frame.body());
        assert_eq!(again.message(), "relation \"x\" does not exist");
        assert_eq!(again.detail(), "on shard 2");
    }

    /// The code an error is counted under (`sqlstate`) is the one its client reads.
    #[test]
    fn the_counted_sqlstate_is_the_one_written() {
        let errors = [
            ScatterError::Shard {
                shard: 1,
                addr: crate::backend::ServerAddr::Unix {
                    dir: "/tmp".into(),
                    port: 5432,
                },
                fields: ShardErrorFields::parse(b"SERROR\0C22012\0Mdivision by zero\0\0"),
            },
            ScatterError::unsupported("x"),
            ScatterError::Parse("x".into()),
            ScatterError::Data {
                code: "22003",
                message: "out of range".into(),
            },
            ScatterError::LimitExceeded {
                what: "sort",
                setting: "scatter_max_rows",
                limit: 1,
            },
            ScatterError::Client("gone".into()),
            ScatterError::protocol(0, "odd"),
        ];
        for e in errors {
            let mut buf = bytes::BytesMut::new();
            e.write_error_response(&mut buf);
            let frame = split_frame(&mut buf).unwrap().unwrap();
            let written = crate::protocol::backend::ErrorFields::parse(frame.body());
            assert_eq!(written.code, e.sqlstate(), "{e}");
        }
    }
}
