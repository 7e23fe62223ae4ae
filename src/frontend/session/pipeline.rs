//! Pipelines and read/write splitting: a transaction's server is chosen at its first message, but a client in
//! pipeline mode sends several extended-protocol statements (Parse/Bind/Execute ...) before its Sync, and a later one
//! may write. So before a batch that starts with a Parse or Bind is routed, the session waits until the client has
//! sent the batch's end (a Sync or Flush: a client can expect no reply before one, so the wait cannot deadlock), and
//! a batch with a write anywhere in what the client has sent goes to the primary as a whole.
//!
//! A pipeline may also hold several batches (`[read; Sync; write; Sync]` sent at once). Each batch after a Sync is a
//! transaction of its own and is routed on its own: while a replica serves a read, a later batch goes to it only if
//! it is whole and reads too; anything else waits in the client's buffer until the replica's ReadyForQuery releases
//! it, and is then routed afresh. In a sharded database the same holds for the shard: a batch for the shard attached
//! joins it, one for another shard (or whose shard is not known yet) waits and is routed afresh.

use tokio::io::AsyncReadExt;

use super::{Session, SessionError};
use crate::protocol::framing::{peek_header, HEADER_LEN};
use crate::protocol::frontend::{parse_bind, parse_parse, query_text};
use crate::protocol::{tag, Frame};
use crate::router::Route;

/// Bytes of a batch read ahead at most; a longer batch without its Sync is routed without seeing its end (to the
/// primary, as it may write).
const LOOKAHEAD_LIMIT: usize = 1024 * 1024;

/// What the client has sent after the message being routed.
#[derive(Debug, PartialEq, Eq)]
enum Ahead {
    /// Only reads (or nothing that runs SQL), through the batch's end.
    Reads,
    /// A statement that needs the primary.
    Write,
    /// The batch's end is not in (too long, or the client left): unknown.
    Unknown,
}

impl Session {
    /// Whether routing `first` must wait to see the rest of its batch: with replicas, whether a later statement
    /// writes; in a sharded database, the Bind whose parameters place a Parse (or a Describe of a named statement).
    pub(super) fn wants_lookahead(&self, first: &Frame) -> bool {
        if self.server.is_some() {
            return false;
        }
        if self.shard_router().is_some() {
            return matches!(first.tag, tag::PARSE | tag::DESCRIBE);
        }
        matches!(first.tag, tag::PARSE | tag::BIND)
            && self.pools.cluster.has_replicas()
            && self.mode == crate::config::PoolMode::Transaction
    }

    /// Reads from the client until the buffered messages include the end of the batch (Sync or Flush), the batch is
    /// longer than `LOOKAHEAD_LIMIT`, or the client closes (which the session notices at its next read).
    /// In a sharded database only up to the first Bind is needed (a COPY's data may follow its Execute without a
    /// Sync, the client waiting for CopyInResponse).
    pub(super) async fn read_rest_of_batch(&mut self) -> Result<(), SessionError> {
        let upto: &[u8] = if self.shard_router().is_some() {
            &[tag::SYNC, tag::FLUSH, tag::BIND]
        } else {
            &[tag::SYNC, tag::FLUSH]
        };
        while !buffered_through(&self.cin, upto) && self.cin.len() < LOOKAHEAD_LIMIT {
            self.cin.reserve(8 * 1024);
            let n = self
                .client
                .read_buf(&mut self.cin)
                .await
                .map_err(SessionError::ClientIo)?;
            if n == 0 {
                break;
            }
            self.tally.bytes_in += n as u64;
        }
        Ok(())
    }

    /// A read about to go to a replica: the primary instead if a later statement the client already sent needs it
    /// (or, for a batch that starts with Parse/Bind, if its end could not be seen).
    pub(super) fn route_with_what_follows(&mut self, first: &Frame, route: Route) -> Route {
        if !matches!(route, Route::Replica(_)) {
            return route;
        }
        match self.ahead() {
            Ahead::Write => self.write_route(false, "a later statement of the pipeline writes"),
            Ahead::Unknown if self.wants_lookahead(first) => {
                self.write_route(false, "the pipeline's end was not seen")
            }
            _ => route,
        }
    }

    /// Judges every whole message buffered after the one being routed: all of them go to the server it gets.
    fn ahead(&self) -> Ahead {
        let buffered = &self.cin[..];
        let mut at = 0;
        let mut end_seen = false;
        while let Ok(Some((t, total))) = peek_header(&buffered[at..]) {
            if buffered.len() < at + total {
                break;
            }
            let body = &buffered[at + HEADER_LEN..at + total];
            at += total;
            if matches!(t, tag::SYNC | tag::FLUSH) {
                end_seen = true;
            } else if let Some(sql) = self.sql_of(t, body) {
                if !sql.is_some_and(|sql| self.reads_only(sql)) {
                    return Ahead::Write;
                }
            }
        }
        if end_seen {
            Ahead::Reads
        } else {
            Ahead::Unknown
        }
    }

    /// Whether the client's next batch must wait for the server attached now to come to rest (and be routed
    /// afresh): the last batch sent to it is complete, the server's status is not known to be inside a transaction,
    /// and the next batch may not join it: in a sharded database, it starts on another shard (or its shard is not
    /// sure); on a replica, it is not a whole read that the same replica may serve.
    pub(super) fn holds_next_batch(&self) -> bool {
        if !self.sent_batch_end
            || self.cin.is_empty()
            || self.mode != crate::config::PoolMode::Transaction
            || self.pinned.is_some()
        {
            return false;
        }
        let in_transaction = self.relay.is_empty()
            && self
                .server
                .as_ref()
                .is_some_and(|s| s.status != crate::protocol::TxStatus::Idle);
        if in_transaction {
            return false;
        }
        if let Some(router) = self.shard_router() {
            if !self.next_batch_stays_on_shard(&router) {
                return true;
            }
        }
        matches!(
            self.routing.as_ref().and_then(|r| r.route.as_ref()),
            Some(Route::Replica(_))
        ) && !self.next_batch_reads()
    }

    /// In a sharded database: whether the batch at the front of the client's input would start its transaction on
    /// the shard attached now if it were routed afresh. Messages that are no batch's start (COPY data, a Sync or
    /// Flush) always go on: the server may be waiting for them.
    fn next_batch_stays_on_shard(&self, router: &crate::sharding::router::ShardRouter) -> bool {
        let Ok(Some((t, total))) = peek_header(&self.cin) else {
            return true;
        };
        if self.relay.in_copy_in
            || matches!(
                t,
                tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL | tag::SYNC | tag::FLUSH
            )
        {
            return true;
        }
        let Some(body) = self.cin.get(HEADER_LEN..total) else {
            // Not whole yet: where it goes is not known.
            return false;
        };
        if matches!(t, tag::PARSE | tag::DESCRIBE)
            && !buffered_through(&self.cin, &[tag::SYNC, tag::FLUSH, tag::BIND])
        {
            // Its Bind, whose parameters may place it elsewhere, is still to come.
            return false;
        }
        if t == tag::QUERY {
            let Some(sql) = query_text(body).and_then(|q| std::str::from_utf8(q).ok()) else {
                return false;
            };
            // `SET shardpool.*` and its kind are the proxy's to answer, between transactions; a BEGIN routed
            // afresh waits for the statement after it to choose the shard, where joining would bind it to this one.
            if !matches!(crate::router::proxy_commands::parse(sql), Ok(None))
                || self.ctx.analysis(sql, &self.pools.cluster).tx
                    != crate::router::classify::TxControl::None
            {
                return false;
            }
        }
        let here = self.current_shard();
        matches!(
            self.decide(router, t, body, super::sharded::Placing::Peek),
            Ok(super::sharded::Decision::Shard(s)) if Some(s) == here
        )
    }

    /// Whether the buffered input starts with a whole batch (through its Sync, or one Query) of plain reads, none of
    /// them transaction control.
    fn next_batch_reads(&self) -> bool {
        let buffered = &self.cin[..];
        let mut at = 0;
        while let Ok(Some((t, total))) = peek_header(&buffered[at..]) {
            if buffered.len() < at + total {
                return false;
            }
            let body = &buffered[at + HEADER_LEN..at + total];
            at += total;
            let reads = |sql: Option<&str>| sql.is_some_and(|sql| self.plain_read(sql));
            match t {
                tag::SYNC => return true,
                // A Query is a batch of its own, so only one that comes first.
                tag::QUERY => return at == total && self.sql_of(t, body).is_some_and(reads),
                tag::PARSE | tag::BIND => {
                    if self.sql_of(t, body).is_some_and(|sql| !reads(sql)) {
                        return false;
                    }
                }
                tag::EXECUTE | tag::DESCRIBE | tag::CLOSE | tag::FLUSH => {}
                _ => return false,
            }
        }
        false
    }

    /// The SQL a client message asks to run, as routing judges it: `None` for a message that runs nothing new
    /// (Execute, Describe, Close; a Bind of a statement parsed earlier in the same batch, whose Parse is judged), and
    /// `Some(None)` for one whose text cannot be read (judged a write).
    fn sql_of<'a>(&'a self, t: u8, body: &'a [u8]) -> Option<Option<&'a str>> {
        let text = match t {
            tag::QUERY => query_text(body),
            tag::PARSE => parse_parse(body).map(|p| p.query),
            tag::BIND => match parse_bind(body).map(|b| self.statements.get(b.statement)) {
                Some(Some(def)) => Some(&def.query[..]),
                Some(None) => return None,
                None => None,
            },
            _ => return None,
        };
        Some(text.and_then(|t| std::str::from_utf8(t).ok()))
    }

    fn plain_read(&self, sql: &str) -> bool {
        let analysis = self.ctx.analysis(sql, &self.pools.cluster);
        analysis.tx == crate::router::classify::TxControl::None
            && matches!(self.route_analysis(&analysis, false), Route::Replica(_))
    }

    fn reads_only(&self, sql: &str) -> bool {
        let analysis = self.ctx.analysis(sql, &self.pools.cluster);
        matches!(self.route_analysis(&analysis, false), Route::Replica(_))
    }
}

/// Whether `buf` holds a whole message of one of the types `tags` after whole messages.
fn buffered_through(buf: &[u8], tags: &[u8]) -> bool {
    let mut at = 0;
    while let Ok(Some((t, total))) = peek_header(&buf[at..]) {
        if buf.len() < at + total {
            return false;
        }
        if tags.contains(&t) {
            return true;
        }
        at += total;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn finds_the_end_of_a_batch_only_when_whole() {
        let end = |b: &BytesMut| buffered_through(b, &[tag::SYNC, tag::FLUSH]);
        let mut b = BytesMut::new();
        crate::protocol::frontend::write_parse(&mut b, b"", b"SELECT 1", &[]);
        assert!(!end(&b));
        crate::protocol::frontend::write_sync(&mut b);
        assert!(end(&b));
        let cut = b.len() - 1;
        assert!(!end(&BytesMut::from(&b[..cut])));
        assert!(!end(&BytesMut::from(&b"garbage"[..])));
        // A sharded lookahead stops at the Bind: what follows a COPY's Execute may wait for CopyInResponse.
        let mut b = BytesMut::new();
        crate::protocol::frontend::write_parse(&mut b, b"", b"COPY t FROM STDIN", &[]);
        assert!(!buffered_through(&b, &[tag::SYNC, tag::FLUSH, tag::BIND]));
        crate::protocol::frontend::write_bind(&mut b, b"", b"", &[0, 0, 0, 0, 0, 0]);
        assert!(buffered_through(&b, &[tag::SYNC, tag::FLUSH, tag::BIND]));
    }
}
