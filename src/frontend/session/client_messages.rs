//! What the session does with each client message while a server is attached: forward it (renaming prepared
//! statements, injecting a Parse where the server lacks one), answer it itself (Close of a renamed statement,
//! DEALLOCATE), or refuse it; and for each, the replies it owes, queued in the relay. Also the statement-level checks
//! that decide pinning and record SET/RESET for re-application elsewhere.

use std::sync::Arc;

use bytes::BytesMut;

use super::{protocol_violation, Flow, Session, SessionError};
use crate::backend::statements::Lookup;
use crate::backend::ServerConn;
use crate::config::SessionFeatures;
use crate::error::{sqlstate, ClientError};
use crate::frontend::prepared::{ClientStatements, StatementDef};
use crate::frontend::relay::{Expect, Fabricated};
use crate::protocol::backend::{close_complete, command_complete, ready_for_query};
use crate::protocol::frontend::{
    parse_bind, parse_parse, parse_target, query_text, write_bind, write_parse, write_sync,
    write_target,
};
use crate::protocol::{tag, Frame, TxStatus};
use crate::router::session_effects::{effects, SessionEffect};

impl Session {
    /// Handles one client message while attached.
    pub(super) fn on_client_frame(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        if self.relay.skip_until_sync {
            if frame.tag == tag::SYNC {
                // The server failed the batch too (see `refuse_in_line`): its ReadyForQuery has the real status.
                self.relay.skip_until_sync = false;
                self.sent_batch_end = true;
                self.sout.extend_from_slice(&frame.raw);
                self.relay.push(Expect::Sync);
            }
            return Ok(Flow::Continue);
        }
        self.note_client_frame(&frame);
        if self.routing.is_some() {
            if let Some(e) = self.check_transaction_shard(&frame) {
                self.refuse_in_line(frame.tag, &e);
                return Ok(Flow::Continue);
            }
        }
        self.log_batch(&frame);
        self.batch_open = match frame.tag {
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE | tag::EXECUTE => true,
            tag::SYNC | tag::FLUSH | tag::QUERY => false,
            _ => self.batch_open,
        };
        self.sent_batch_end = matches!(frame.tag, tag::SYNC | tag::QUERY | tag::FUNCTION_CALL);
        match frame.tag {
            tag::QUERY => self.forward_query(frame)?,
            tag::PARSE => self.forward_parse(&frame)?,
            tag::BIND => self.forward_bind(&frame)?,
            tag::DESCRIBE => self.forward_describe(&frame)?,
            tag::CLOSE => {
                if !self.close_statement_locally(&frame) {
                    self.sout.extend_from_slice(&frame.raw);
                    self.relay.push(Expect::Close { forward: true });
                }
            }
            tag::EXECUTE => {
                self.sout.extend_from_slice(&frame.raw);
                self.relay.push(Expect::Execute);
            }
            tag::SYNC => {
                self.sout.extend_from_slice(&frame.raw);
                self.relay.push(Expect::Sync);
            }
            tag::FUNCTION_CALL => {
                self.sout.extend_from_slice(&frame.raw);
                self.relay.push(Expect::Query { forward: true });
            }
            tag::FLUSH | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                self.sout.extend_from_slice(&frame.raw)
            }
            tag::TERMINATE => return Ok(Flow::ClientGone),
            other => {
                return Err(protocol_violation(format!(
                    "invalid frontend message type {:?}",
                    other as char
                )));
            }
        }
        Ok(Flow::Continue)
    }

    /// Keeps the extended-protocol batch in flight, for a transparent re-send after DDL (see `plan_retry`). Simple
    /// queries are never re-sent, and a batch that grows past a bound without a Sync is not kept whole: it then cannot
    /// be re-sent, but memory stays bounded whatever the client sends.
    fn log_batch(&mut self, frame: &Frame) {
        const MAX_LOGGED: usize = 64;
        if self.server.is_none() || frame.tag == tag::QUERY {
            return;
        }
        if self.batch.len() < MAX_LOGGED {
            self.batch.push(frame.clone());
        } else {
            self.batch_truncated = true;
        }
        if frame.tag == tag::SYNC {
            // Swap rather than take, so both vectors keep their capacity across batches.
            std::mem::swap(&mut self.batch, &mut self.last_batch);
            self.batch.clear();
            self.last_batch_whole = !std::mem::take(&mut self.batch_truncated);
            if !self.last_batch_whole {
                self.last_batch.clear();
            }
        }
    }

    fn server_mut(&mut self) -> Result<&mut ServerConn, SessionError> {
        self.server
            .as_deref_mut()
            .ok_or_else(|| SessionError::ServerProtocol("no server attached".into()))
    }

    fn forward_query(&mut self, frame: Frame) -> Result<(), SessionError> {
        let sql = query_text(frame.body())
            .ok_or_else(|| protocol_violation("malformed Query message".into()))?;
        let sql = sql_text(sql);
        let found = effects(&sql);
        if !found.is_empty() && !self.accept_effects(&found, tag::QUERY)? {
            return Ok(());
        }
        if let [SessionEffect::Deallocate(name)] = found.as_slice() {
            if let Some(def) = self.statements.get(name.as_bytes()).cloned() {
                // The server knows the statement by its shared name: prepare it there if needed, then drop it there.
                self.ensure_prepared(&def)?;
                self.server_mut()?.statements.remove(def.hash);
                self.statements.close(name.as_bytes());
                let sql = format!("DEALLOCATE {}", String::from_utf8_lossy(&def.server_name));
                crate::protocol::frontend::write_query(&mut self.sout, &sql);
                self.relay.push(Expect::Query { forward: true });
                return Ok(());
            }
        }
        self.sout.extend_from_slice(&frame.raw);
        self.relay.push(Expect::Query { forward: true });
        Ok(())
    }

    /// Records session effects and applies the session-feature policy. Returns false if the message was refused.
    fn accept_effects(
        &mut self,
        found: &[SessionEffect],
        msg_tag: u8,
    ) -> Result<bool, SessionError> {
        for e in found {
            match e {
                SessionEffect::NeedsSession(feature) => {
                    if self.mode == crate::config::PoolMode::Session {
                        continue;
                    }
                    if self.session_features == SessionFeatures::Error {
                        let err = ClientError::error(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!("{feature} is not supported in transaction pooling mode (shardpool)"),
                        );
                        self.refuse_in_line(msg_tag, &err);
                        return Ok(false);
                    }
                    if self.pinned.is_none() {
                        tracing::debug!(
                            client = self.registration.info.id,
                            feature,
                            "pinning server to client"
                        );
                    }
                    self.pinned.get_or_insert(feature);
                }
                SessionEffect::SettingsUnknown => {
                    // Whether or not the transaction commits: the server's settings are reset before its next use.
                    self.server_mut()?.settings_unknown = true;
                }
                SessionEffect::DiscardAll | SessionEffect::DeallocateAll => {
                    // The server drops every prepared statement, ours included; so do the client's names.
                    self.statements.clear();
                    self.statement_effects.clear();
                    let server = self.server_mut()?;
                    server.statements.clear();
                    if matches!(e, SessionEffect::DiscardAll) {
                        server.applied = Default::default();
                    }
                    self.pending_effects.push(e.clone());
                }
                other => self.pending_effects.push(other.clone()),
            }
        }
        Ok(true)
    }

    /// Answers with an error in the reply order the client expects. The server is made to fail as well, with a Parse
    /// it rejects (its own error swallowed), so that the transaction the refused message was part of (an explicit
    /// block, or the implicit one of an extended-protocol batch) is aborted exactly as if the statement had failed
    /// on Postgres, and the ReadyForQuery the client gets is the server's, with the real transaction status.
    fn refuse_in_line(&mut self, msg_tag: u8, err: &ClientError) {
        // Queue it behind the replies still owed so ordering holds.
        let mut buf = BytesMut::new();
        self.home.stats.errors.count(err.code);
        err.write(&mut buf);
        self.relay.push_error(buf);
        write_parse(
            &mut self.sout,
            b"shardpool_refused",
            b"shardpool refused this statement",
            &[0, 0],
        );
        self.relay.push(Expect::Refused);
        self.batch_failed = true;
        if msg_tag == tag::QUERY {
            // A simple query ends with its ReadyForQuery: Sync on the client's behalf.
            write_sync(&mut self.sout);
            self.relay.push(Expect::Sync);
        } else {
            // The server now skips to the client's Sync; so does shardpool, which then forwards that Sync.
            self.relay.skip_until_sync = true;
        }
    }

    fn forward_parse(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let view = parse_parse(frame.body())
            .ok_or_else(|| protocol_violation("malformed Parse message".into()))?;
        let limit = self.ctx.config().general.max_prepared_statements_per_client;
        if !view.name.is_empty() && !self.statements.admits(view.name, limit) {
            self.refuse_in_line(tag::PARSE, &ClientStatements::limit_error(limit));
            return Ok(());
        }
        let sql = sql_text(view.query);
        let found = effects(&sql);
        let pending_before = self.pending_effects.len();
        if !found.is_empty() && !self.accept_effects(&found, tag::PARSE)? {
            return Ok(());
        }
        if view.name.is_empty() {
            self.sout.extend_from_slice(&frame.raw);
            self.relay.push(Expect::Parse {
                forward: true,
                statement: None,
            });
            return Ok(());
        }
        let def = self
            .statements
            .define(view.name, view.query, view.param_types);
        if !found.is_empty() {
            // Effects of a named statement take hold each time it runs, not when it is prepared. (Only some of
            // `found` were queued: a feature that pins the server is not a pending effect.)
            self.pending_effects.truncate(pending_before);
            self.statement_effects.insert(def.hash, found);
        }
        let server = self.server_mut()?;
        let lookup = server.statements.touch(&def);
        if lookup != Lookup::Hit {
            if lookup == Lookup::Taken {
                server.stale.insert(def.hash);
            }
            self.prepare_on_server(&def, true)?;
        } else if server.statements.is_confirmed(def.hash) && self.relay.status() == TxStatus::Idle
        {
            self.relay
                .push(Expect::Fabricated(Fabricated::ParseComplete));
        } else {
            // Its Parse is still on its way (pipelined) and may yet fail, or we are inside a transaction, where a
            // stale shared copy (DDL since it was prepared) could not be retried after its error: this Parse must get
            // the server's own answer, so close and parse it again (same text: the same success, or the same error,
            // and a plan for the schema as it is now, as a direct connection would get).
            write_target(&mut self.sout, tag::CLOSE, b'S', &def.server_name);
            self.relay.push(Expect::Close { forward: false });
            write_parse(
                &mut self.sout,
                &def.server_name,
                &def.query,
                &def.param_types,
            );
            self.relay.push(Expect::Parse {
                forward: true,
                statement: Some(def.hash),
            });
        }
        Ok(())
    }

    /// Makes sure the attached server has `def` prepared, injecting a Parse whose reply the client never sees.
    fn ensure_prepared(&mut self, def: &Arc<StatementDef>) -> Result<(), SessionError> {
        let server = self.server_mut()?;
        match server.statements.touch(def) {
            Lookup::Hit => {}
            Lookup::Miss => self.prepare_on_server(def, false)?,
            Lookup::Taken => {
                // Another text holds this name here: close it before preparing ours.
                server.stale.insert(def.hash);
                self.prepare_on_server(def, false)?;
            }
        }
        Ok(())
    }

    fn prepare_on_server(
        &mut self,
        def: &Arc<StatementDef>,
        forward: bool,
    ) -> Result<(), SessionError> {
        let server = self.server_mut()?;
        if server.stale.remove(&def.hash) {
            // Closing a statement that is not there is not an error, so this is safe whatever the server has.
            write_target(&mut self.sout, tag::CLOSE, b'S', &def.server_name);
            self.relay.push(Expect::Close { forward: false });
        }
        let evicted = self.server_mut()?.statements.insert(def);
        if let Some(old) = evicted {
            write_target(
                &mut self.sout,
                tag::CLOSE,
                b'S',
                format!("sp{old:016x}").as_bytes(),
            );
            self.relay.push(Expect::Close { forward: false });
        }
        write_parse(
            &mut self.sout,
            &def.server_name,
            &def.query,
            &def.param_types,
        );
        self.relay.push(Expect::Parse {
            forward,
            statement: Some(def.hash),
        });
        Ok(())
    }

    /// The client's named statement `name`, made ready on the attached server. `None` for the unnamed statement and
    /// for names the client never prepared: those go to the server as sent, and it answers as Postgres does.
    fn prepared_for(&mut self, name: &[u8]) -> Result<Option<Arc<StatementDef>>, SessionError> {
        if name.is_empty() {
            return Ok(None);
        }
        let Some(def) = self.statements.get(name).cloned() else {
            return Ok(None);
        };
        self.ensure_prepared(&def)?;
        Ok(Some(def))
    }

    fn forward_bind(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let view = parse_bind(frame.body())
            .ok_or_else(|| protocol_violation("malformed Bind message".into()))?;
        let statement = match self.prepared_for(view.statement)? {
            Some(def) => {
                if let Some(found) = self.statement_effects.get(&def.hash) {
                    self.pending_effects.extend(found.iter().cloned());
                }
                write_bind(&mut self.sout, view.portal, &def.server_name, view.rest);
                Some(def.hash)
            }
            None => {
                self.sout.extend_from_slice(&frame.raw);
                None
            }
        };
        self.relay.push(Expect::Bind { statement });
        Ok(())
    }

    fn forward_describe(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let view = parse_target(frame.body())
            .ok_or_else(|| protocol_violation("malformed Describe message".into()))?;
        let def = if view.kind == b'S' {
            self.prepared_for(view.name)?
        } else {
            None
        };
        let statement = match def {
            Some(def) => {
                write_target(&mut self.sout, tag::DESCRIBE, b'S', &def.server_name);
                Some(def.hash)
            }
            None => {
                self.sout.extend_from_slice(&frame.raw);
                None
            }
        };
        self.relay.push(Expect::Describe { statement });
        Ok(())
    }

    /// A named Parse of a text some server already accepted, outside a transaction: recorded and answered here, and
    /// prepared on a server only when it is first bound or described. This matters beyond saving a round trip:
    /// clients that prepare synchronously while their other connections hold every pooled server (pgbench
    /// `-M prepared` does exactly that) would otherwise wait for a server that cannot come back.
    pub(super) fn parse_locally(&mut self, frame: &Frame) -> Result<bool, SessionError> {
        let view = parse_parse(frame.body())
            .ok_or_else(|| protocol_violation("malformed Parse message".into()))?;
        if view.name.is_empty() {
            return Ok(false);
        }
        let limit = self.ctx.config().general.max_prepared_statements_per_client;
        if !self.statements.admits(view.name, limit) {
            // Refused where a server answers it, in line with the rest of the batch.
            return Ok(false);
        }
        let probe = StatementDef::new(view.query, view.param_types);
        if !self.home.known_statements.knows(&probe) {
            return Ok(false);
        }
        let sql = sql_text(view.query);
        if !effects(&sql).is_empty() {
            return Ok(false);
        }
        self.statements
            .define(view.name, view.query, view.param_types);
        crate::protocol::backend::parse_complete(&mut self.cout);
        Ok(true)
    }

    /// Close of a named statement: the client's name goes away, the server keeps the shared statement cached.
    /// Returns false for portals and the unnamed statement, which go to the server.
    pub(super) fn close_statement_locally(&mut self, frame: &Frame) -> bool {
        let Some(view) = parse_target(frame.body()) else {
            return false;
        };
        if view.kind != b'S' || view.name.is_empty() {
            return false;
        }
        self.statements.close(view.name);
        if self.server.is_some() {
            self.relay
                .push(Expect::Fabricated(Fabricated::CloseComplete));
        } else {
            close_complete(&mut self.cout);
        }
        true
    }

    /// A lone `DEALLOCATE name|ALL` outside a transaction, for statements shardpool renamed: nothing to do on any
    /// server, so answer it here. Returns false if the query needs a server.
    pub(super) fn deallocate_locally(&mut self, frame: &Frame) -> Result<bool, SessionError> {
        let sql = query_text(frame.body())
            .ok_or_else(|| protocol_violation("malformed Query message".into()))?;
        let head = sql.get(..10).unwrap_or(sql);
        if !head.eq_ignore_ascii_case(b"deallocate") {
            return Ok(false);
        }
        let sql = sql_text(sql);
        let tag_text = match effects(&sql).as_slice() {
            [SessionEffect::Deallocate(name)] if self.statements.close(name.as_bytes()) => {
                "DEALLOCATE"
            }
            [SessionEffect::DeallocateAll] if self.pinned.is_none() => {
                self.statements.clear();
                self.statement_effects.clear();
                "DEALLOCATE ALL"
            }
            _ => return Ok(false),
        };
        command_complete(&mut self.cout, tag_text);
        let status = self.idle_status();
        ready_for_query(&mut self.cout, status);
        Ok(true)
    }
}

/// A statement's text for scanning. Valid UTF-8 (all but broken clients) is borrowed after `from_utf8`'s
/// word-at-a-time check, which costs a fraction of `from_utf8_lossy`'s per-character decoding on every query.
fn sql_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}
