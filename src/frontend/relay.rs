//! The queue of replies a server still owes for what has been sent to it. It is how the session knows, in the middle
//! of pipelined extended-protocol traffic, when a server is idle and can be released; and it lets shardpool inject
//! messages (a Parse for a statement the client prepared elsewhere, its own SET/RESET) and swallow their replies, or
//! fabricate replies for messages it answered itself (Parse of a statement the server already has, Close of a
//! renamed statement), each at exactly the position the client expects.
//!
//! Rules mirrored from Postgres (docs 55.2.3 "Extended Query"): after an error the server discards messages until
//! Sync, so queued entries up to the next Sync are dropped; a simple Query is answered up to ReadyForQuery however
//! many statements fail; Sync and Flush arriving during COPY FROM STDIN are ignored by the server.

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::protocol::backend::{close_complete, parse_complete, ready_for_query};
use crate::protocol::{tag, TxStatus};

/// What a fabricated reply is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fabricated {
    ParseComplete,
    CloseComplete,
    /// ReadyForQuery with the transaction status current when it is emitted.
    ReadyForQuery,
    /// An ErrorResponse shardpool produced itself (the next of `Relay::errors`).
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// ParseComplete. `statement` is the renamed statement's hash, confirmed in the server's cache on success.
    Parse {
        forward: bool,
        statement: Option<u64>,
    },
    /// BindComplete. `statement` is the renamed statement bound, if any (for re-preparing after DDL).
    Bind {
        statement: Option<u64>,
    },
    Close {
        forward: bool,
    },
    /// Describe: completes at RowDescription or NoData. `statement` as for Bind (Describe of a statement).
    Describe {
        statement: Option<u64>,
    },
    /// Execute: completes at CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// Sync: completes at ReadyForQuery.
    Sync,
    /// Simple Query or FunctionCall: completes at ReadyForQuery. `forward: false` for shardpool's own queries.
    Query {
        forward: bool,
    },
    /// A reply shardpool writes itself when this entry reaches the front of the queue.
    Fabricated(Fabricated),
    /// A Parse shardpool sends so that the server fails the batch of a message shardpool refused itself: it always
    /// fails, and its error is swallowed (the client gets shardpool's own error instead).
    Refused,
}

impl Expect {
    fn forwards(self) -> bool {
        match self {
            Expect::Parse { forward, .. }
            | Expect::Close { forward }
            | Expect::Query { forward } => forward,
            Expect::Refused => false,
            _ => true,
        }
    }

    /// Whether the server's error for this entry reaches the client: every error does, including those of the
    /// Parse/Close shardpool injects for the client's statements (the client must learn why its statement failed),
    /// except those of shardpool's own queries and of a refusal.
    fn forwards_error(self) -> bool {
        !matches!(self, Expect::Query { forward: false } | Expect::Refused)
    }
}

/// What the session must do after a server message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Forward the message to the client.
    pub forward: bool,
    /// A ReadyForQuery arrived (a client-visible one if `forward`).
    pub ready: Option<TxStatus>,
    /// The server entered COPY FROM STDIN: the client's CopyData must flow to it.
    pub copy_in: bool,
    /// Statements whose Parse failed or was skipped, to drop from the server's cache.
    pub failed_statements: Vec<u64>,
    /// A statement confirmed prepared.
    pub prepared: Option<u64>,
    /// For an ErrorResponse: the entry it answered.
    pub failed: Option<Expect>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("server sent {got:?} while expecting {expected:?}")]
pub struct Desync {
    pub got: char,
    pub expected: Option<Expect>,
}

#[derive(Debug, Default)]
pub struct Relay {
    queue: VecDeque<Expect>,
    /// Transaction status as last reported to (or fabricated for) the client.
    pub status: Option<TxStatus>,
    pub in_copy_in: bool,
    /// The client sent a message shardpool rejected itself; discard until Sync as the server would.
    pub skip_until_sync: bool,
    errors: VecDeque<BytesMut>,
    /// Replies completed since the last ReadyForQuery: how far the current batch got.
    pub binds_done: usize,
    pub describes_done: usize,
    pub executes_done: usize,
    /// The server failed an extended-protocol message before the batch's Sync was even queued, so it is discarding
    /// everything up to that Sync: messages sent meanwhile get no reply and must not be waited for.
    server_skipping: bool,
    /// Injected Parses the server discarded that way, to drop from its statement cache.
    discarded_statements: Vec<u64>,
    /// The server has been sent something since its last ReadyForQuery. An empty queue does not mean the server is
    /// done: Parse/Bind/Execute answered after a Flush leave it inside the batch's implicit transaction (rows
    /// written, portals open) until a Sync, so only a ReadyForQuery makes it fit for another client.
    unsynced: bool,
}

impl Relay {
    pub fn push(&mut self, e: Expect) {
        if !matches!(e, Expect::Fabricated(_)) {
            self.unsynced = true;
        }
        if self.server_skipping {
            match e {
                Expect::Sync => self.server_skipping = false,
                Expect::Parse {
                    statement: Some(h), ..
                } => {
                    self.discarded_statements.push(h);
                    return;
                }
                // Postgres answers nothing until the Sync, so neither does shardpool.
                _ => return,
            }
        }
        self.queue.push_back(e);
    }

    /// Queues an error shardpool raised itself, to be written when it reaches the front.
    pub fn push_error(&mut self, encoded: BytesMut) {
        if self.server_skipping {
            return;
        }
        self.errors.push_back(encoded);
        self.queue.push_back(Expect::Fabricated(Fabricated::Error));
    }

    /// Makes the next ReadyForQuery shardpool's own: used when a failed batch will be re-sent.
    pub fn swallow_next_ready(&mut self) {
        if let Some(front) = self.queue.front_mut() {
            if *front == Expect::Sync {
                *front = Expect::Query { forward: false };
            }
        }
    }

    /// Nothing outstanding: every message sent has been answered (and the server is not waiting for a Sync).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && !self.server_skipping
    }

    /// The server is back at a ReadyForQuery with nothing sent since: the only point at which it may go back to
    /// the pool (with an idle status) or be counted as waiting on the client between transactions.
    pub fn server_at_rest(&self) -> bool {
        self.is_empty() && !self.unsynced
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.in_copy_in = false;
        self.server_skipping = false;
        self.unsynced = false;
    }

    pub fn status(&self) -> TxStatus {
        self.status.unwrap_or(TxStatus::Idle)
    }

    /// Whether a fabricated reply is at the front of the queue (`emit_fabricated` would write something).
    #[inline]
    pub fn fabricated_next(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Fabricated(_)))
    }

    /// Writes the fabricated replies now at the front of the queue.
    pub fn emit_fabricated(&mut self, out: &mut BytesMut) {
        while let Some(Expect::Fabricated(f)) = self.queue.front().copied() {
            self.queue.pop_front();
            match f {
                Fabricated::ParseComplete => parse_complete(out),
                Fabricated::CloseComplete => close_complete(out),
                Fabricated::ReadyForQuery => ready_for_query(out, self.status()),
                Fabricated::Error => {
                    if let Some(e) = self.errors.pop_front() {
                        out.extend_from_slice(&e);
                    }
                }
            }
        }
    }

    /// Accounts for one server message (tag and body) and says what to do with it.
    pub fn on_server_message(&mut self, msg_tag: u8, body: &[u8]) -> Result<Outcome, Desync> {
        let front = self.queue.front().copied();
        let mut out = Outcome {
            forward: front.is_none_or(Expect::forwards),
            failed_statements: std::mem::take(&mut self.discarded_statements),
            ..Outcome::default()
        };
        let desync = || Desync {
            got: msg_tag as char,
            expected: front,
        };
        match msg_tag {
            // Asynchronous messages may arrive at any time.
            tag::NOTICE_RESPONSE | tag::NOTIFICATION_RESPONSE | tag::PARAMETER_STATUS => {
                return Ok(out)
            }
            tag::ERROR_RESPONSE => {
                // An error reaches the client, except one raised by shardpool's own simple query or by the Parse a
                // refusal sends to abort the server's transaction: when an injected Parse fails, the client's Bind
                // that needed it fails with it.
                out.forward = front.is_none_or(Expect::forwards_error);
                out.failed = front;
                self.in_copy_in = false;
                match front {
                    Some(Expect::Query { .. }) | Some(Expect::Sync) | None => {}
                    Some(_) => {
                        // This entry failed; the server skips everything up to the next Sync. If that Sync is
                        // not queued yet, what the client sends before it will be skipped too.
                        self.server_skipping = true;
                        while let Some(e) = self.queue.front().copied() {
                            if matches!(e, Expect::Sync | Expect::Query { .. }) {
                                self.server_skipping = false;
                                break;
                            }
                            self.queue.pop_front();
                            if e == Expect::Fabricated(Fabricated::Error) {
                                self.errors.pop_front();
                            }
                            if let Expect::Parse {
                                statement: Some(h), ..
                            } = e
                            {
                                out.failed_statements.push(h);
                            }
                        }
                    }
                }
                return Ok(out);
            }
            tag::READY_FOR_QUERY => {
                let status =
                    crate::protocol::backend::parse_ready_for_query(body).ok_or_else(desync)?;
                match front {
                    Some(Expect::Sync) | Some(Expect::Query { .. }) => {
                        self.queue.pop_front();
                    }
                    _ => return Err(desync()),
                }
                self.in_copy_in = false;
                self.unsynced = false;
                self.binds_done = 0;
                self.describes_done = 0;
                self.executes_done = 0;
                if out.forward {
                    self.status = Some(status);
                }
                out.ready = Some(status);
                return Ok(out);
            }
            _ => {}
        }
        let Some(front) = front else {
            return Err(desync());
        };
        let completes = match (front, msg_tag) {
            (Expect::Parse { statement, .. }, tag::PARSE_COMPLETE) => {
                out.prepared = statement;
                true
            }
            (Expect::Refused, tag::PARSE_COMPLETE) => true,
            (Expect::Bind { .. }, tag::BIND_COMPLETE) => {
                self.binds_done += 1;
                true
            }
            (Expect::Close { .. }, tag::CLOSE_COMPLETE) => true,
            (Expect::Describe { .. }, tag::PARAMETER_DESCRIPTION) => false,
            (Expect::Describe { .. }, tag::ROW_DESCRIPTION | tag::NO_DATA) => {
                self.describes_done += 1;
                true
            }
            (
                Expect::Execute,
                tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED,
            ) => true,
            (Expect::Execute | Expect::Query { .. }, tag::COPY_IN_RESPONSE) => {
                self.in_copy_in = true;
                out.copy_in = true;
                if front == Expect::Execute {
                    // A Sync already on its way will arrive while the server is in COPY mode and be ignored.
                    if let Some(i) = self.queue.iter().position(|e| *e == Expect::Sync) {
                        self.queue.remove(i);
                    }
                }
                false
            }
            (
                Expect::Execute | Expect::Query { .. },
                tag::DATA_ROW
                | tag::COPY_DATA
                | tag::COPY_DONE
                | tag::COPY_OUT_RESPONSE
                | tag::COPY_BOTH_RESPONSE
                | tag::ROW_DESCRIPTION,
            ) => false,
            (Expect::Query { .. }, _) => false, // a simple query's replies end only at ReadyForQuery
            _ => return Err(desync()),
        };
        if completes {
            self.queue.pop_front();
        }
        if msg_tag == tag::COMMAND_COMPLETE {
            self.in_copy_in = false;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut Relay, tags: &[u8]) -> Vec<bool> {
        tags.iter()
            .map(|&t| {
                let body: &[u8] = if t == b'Z' { b"I" } else { b"" };
                r.on_server_message(t, body).unwrap().forward
            })
            .collect()
    }

    #[test]
    fn pipelined_extended_batch_completes_at_each_sync() {
        let mut r = Relay::default();
        for e in [
            Expect::Parse {
                forward: true,
                statement: None,
            },
            Expect::Bind { statement: None },
            Expect::Execute,
            Expect::Sync,
        ] {
            r.push(e);
        }
        for e in [
            Expect::Bind { statement: None },
            Expect::Execute,
            Expect::Sync,
        ] {
            r.push(e);
        }
        assert!(feed(&mut r, b"12DDC").iter().all(|f| *f));
        assert_eq!(r.len(), 4);
        feed(&mut r, b"Z2CZ");
        assert!(r.is_empty());
        assert_eq!(r.status(), TxStatus::Idle);
    }

    #[test]
    fn error_skips_to_sync_and_reports_failed_statements() {
        let mut r = Relay::default();
        r.push(Expect::Parse {
            forward: false,
            statement: Some(7),
        });
        r.push(Expect::Bind { statement: None });
        r.push(Expect::Fabricated(Fabricated::CloseComplete));
        r.push(Expect::Execute);
        r.push(Expect::Sync);
        let o = r.on_server_message(b'E', b"").unwrap();
        assert!(
            o.forward,
            "the error of an injected Parse still reaches the client"
        );
        assert_eq!(o.failed_statements, vec![7]);
        assert_eq!(r.len(), 1);
        let mut out = BytesMut::new();
        r.emit_fabricated(&mut out);
        assert!(out.is_empty(), "replies after the error are not fabricated");
        feed(&mut r, b"Z");
        assert!(r.is_empty());
    }

    #[test]
    fn injected_replies_are_swallowed_and_fabricated_ones_placed_in_order() {
        let mut r = Relay::default();
        r.push(Expect::Query { forward: false });
        r.push(Expect::Fabricated(Fabricated::ParseComplete));
        r.push(Expect::Bind { statement: None });
        r.push(Expect::Sync);
        assert_eq!(feed(&mut r, b"CCSZ"), vec![false, false, false, false]);
        let mut out = BytesMut::new();
        r.emit_fabricated(&mut out);
        assert_eq!(&out[..], b"1\x00\x00\x00\x04");
        assert_eq!(feed(&mut r, b"2Z"), vec![true, true]);
    }

    #[test]
    fn copy_in_from_extended_protocol_drops_the_ignored_sync() {
        let mut r = Relay::default();
        r.push(Expect::Bind { statement: None });
        r.push(Expect::Execute);
        r.push(Expect::Sync);
        feed(&mut r, b"2");
        assert!(r.on_server_message(b'G', b"").unwrap().copy_in);
        assert_eq!(r.len(), 1);
        r.push(Expect::Sync); // the client's Sync after CopyDone
        feed(&mut r, b"CZ");
        assert!(r.is_empty() && !r.in_copy_in);
    }

    #[test]
    fn messages_sent_after_an_error_but_before_the_sync_get_no_reply() {
        let mut r = Relay::default();
        r.push(Expect::Bind { statement: None });
        // The server reports the Bind's error before the client's Execute and Sync have even been read.
        r.on_server_message(b'E', b"").unwrap();
        assert!(!r.is_empty(), "a Sync is still owed");
        r.push(Expect::Execute);
        r.push(Expect::Parse {
            forward: false,
            statement: Some(9),
        });
        r.push(Expect::Fabricated(Fabricated::ParseComplete));
        r.push(Expect::Sync);
        assert_eq!(r.len(), 1);
        let o = r.on_server_message(b'Z', b"I").unwrap();
        assert_eq!(o.failed_statements, vec![9]);
        assert!(r.is_empty());
        // The next batch is answered normally.
        r.push(Expect::Bind { statement: None });
        r.push(Expect::Sync);
        feed(&mut r, b"2Z");
        assert!(r.is_empty());
    }

    #[test]
    fn a_refusal_parse_error_is_swallowed_and_the_sync_answered() {
        let mut r = Relay::default();
        r.push_error(BytesMut::from(&b"E\0\0\0\x04"[..]));
        r.push(Expect::Refused);
        let mut out = BytesMut::new();
        r.emit_fabricated(&mut out);
        assert_eq!(
            &out[..],
            b"E\0\0\0\x04",
            "shardpool's own error comes first"
        );
        assert!(!r.on_server_message(b'E', b"").unwrap().forward);
        r.push(Expect::Sync);
        assert_eq!(feed(&mut r, b"Z"), vec![true]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_flushed_batch_is_answered_but_not_at_rest_until_its_sync() {
        let mut r = Relay::default();
        assert!(r.server_at_rest());
        r.push(Expect::Parse {
            forward: true,
            statement: None,
        });
        r.push(Expect::Bind { statement: None });
        r.push(Expect::Execute);
        // Flush: every reply comes back, yet the server sits in the batch's implicit transaction.
        feed(&mut r, b"12C");
        assert!(r.is_empty());
        assert!(!r.server_at_rest());
        // A row-limited Execute of the same portal, flushed again: still not at rest.
        r.push(Expect::Execute);
        feed(&mut r, b"Ds");
        assert!(!r.server_at_rest());
        r.push(Expect::Sync);
        assert!(!r.server_at_rest());
        feed(&mut r, b"Z");
        assert!(r.server_at_rest());
        // Fabricated replies involve no server.
        r.push(Expect::Fabricated(Fabricated::ParseComplete));
        r.emit_fabricated(&mut BytesMut::new());
        assert!(r.server_at_rest());
    }

    #[test]
    fn unexpected_messages_are_a_desync() {
        let mut r = Relay::default();
        assert!(r.on_server_message(b'2', b"").is_err());
        r.push(Expect::Bind { statement: None });
        assert!(r.on_server_message(b'C', b"").is_err());
        assert!(r.on_server_message(b'Z', b"X").is_err());
    }
}
