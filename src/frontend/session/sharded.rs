//! Sharding in the session: before a transaction takes a server, its first statement's shard key decides the shard
//! (the session then uses that shard's pools, with read/write splitting inside the shard); later statements of the
//! transaction must stay on it. Statements for every shard (DDL, reference-table writes) and keyless reads
//! (scatter/gather) run here on one connection per shard, outside the attached pump.

use std::sync::Arc;

use super::{Session, SessionError};
use crate::backend::{Pool, ServerConn};
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::{command_complete, ready_for_query};
use crate::protocol::frontend::{
    parse_bind, parse_bind_params, parse_parse, peek_bind, query_text,
};
use crate::protocol::{tag, Frame, TxStatus};
use crate::sharding::router::{list, Placement, ShardRouter};

/// A statement that runs on several shards at once (simple protocol only).
pub(super) struct Fanout {
    pub sql: String,
    pub shards: Vec<u16>,
    /// Merge results (a read) rather than run the statement everywhere and report once (DDL, writes).
    pub scatter: bool,
}

impl Session {
    pub(super) fn shard_router(&self) -> Option<Arc<ShardRouter>> {
        self.routing.as_ref().and_then(|r| r.shard_router.clone())
    }

    /// Where the statement in `frame` must run, from its shard keys (and Bind parameters). `Ok(None)`: it runs on
    /// several shards and has been queued as a fan-out.
    pub(super) fn place_frame(
        &mut self,
        router: &ShardRouter,
        frame: &Frame,
        in_transaction: bool,
    ) -> Result<Option<u16>, ClientError> {
        let default = router.config.default_shard;
        let def;
        let (sql, params): (Option<&[u8]>, Option<&[u8]>) = match frame.tag {
            tag::QUERY => (query_text(frame.body()), None),
            tag::PARSE => {
                let parse = parse_parse(frame.body());
                // Parse, Bind, Execute, Sync usually arrive together: the Bind's parameters decide.
                let bind = peek_bind(&self.cin)
                    .filter(|(name, _)| Some(*name) == parse.as_ref().map(|p| p.name));
                (parse.map(|p| p.query), bind.map(|(_, rest)| rest))
            }
            tag::BIND => {
                let view = parse_bind(frame.body());
                def = view
                    .as_ref()
                    .and_then(|b| self.statements.get(b.statement).cloned());
                (def.as_ref().map(|d| &d.query[..]), view.map(|b| b.rest))
            }
            _ => (None, None),
        };
        let Some(sql) = sql.and_then(|s| std::str::from_utf8(s).ok()) else {
            return Ok(Some(self.current_shard().unwrap_or(default)));
        };
        let analysis = router.analysis(sql);
        let Some(stmt) = analysis.combined() else {
            // Unparseable here: the default shard's Postgres will say what is wrong with it.
            return Ok(Some(default));
        };
        let decoded = match params {
            Some(rest) => Some(parse_bind_params(rest).ok_or_else(|| {
                ClientError::error(sqlstate::PROTOCOL_VIOLATION, "malformed Bind message")
            })?),
            None => None,
        };
        let placement = router.place(
            stmt,
            decoded.as_ref().map(|(f, v)| (v.as_slice(), f.as_slice())),
        )?;
        match placement {
            Placement::One { shard, keyed } => {
                if !keyed {
                    // Keyless statements (SET, BEGIN, unsharded tables...) stay where the session is.
                    return Ok(Some(if in_transaction {
                        self.current_shard().unwrap_or(shard)
                    } else {
                        shard
                    }));
                }
                Ok(Some(shard))
            }
            Placement::Every | Placement::Scatter(_)
                if in_transaction || frame.tag != tag::QUERY =>
            {
                Err(ClientError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    if in_transaction {
                        "a statement for every shard cannot run inside a transaction (transactions are bound to one shard)"
                    } else {
                        "a statement for every shard (scatter/gather, DDL, reference-table writes) must use the simple query protocol"
                    },
                ))
            }
            Placement::Every => {
                self.routing_state().fanout = Some(Fanout {
                    sql: sql.to_owned(),
                    shards: (0..router.shards()).collect(),
                    scatter: false,
                });
                Ok(None)
            }
            Placement::Scatter(shards) => {
                self.routing_state().fanout = Some(Fanout {
                    sql: sql.to_owned(),
                    shards,
                    scatter: true,
                });
                Ok(None)
            }
        }
    }

    pub(super) fn current_shard(&self) -> Option<u16> {
        self.routing.as_ref().map(|r| r.shard)
    }

    /// Makes `shard`'s pools the session's current ones.
    pub(super) fn use_shard(&mut self, shard: u16) {
        if self.current_shard() == Some(shard) && !self.pools.is_retired() {
            return;
        }
        let config = self.ctx.config();
        let Some(user) = config.user(&self.pools.user) else {
            return;
        };
        if let Some(set) = self.ctx.shard_pool_set(&self.pools.database, user, shard) {
            self.pools = set;
            self.routing_state().shard = shard;
        }
    }

    /// Inside a transaction bound to a shard: the error for a statement that needs another shard.
    pub(super) fn check_transaction_shard(&mut self, frame: &Frame) -> Option<ClientError> {
        let router = self.shard_router()?;
        if !matches!(frame.tag, tag::QUERY | tag::BIND) {
            return None;
        }
        let bound = self.current_shard()?;
        match self.place_frame(&router, frame, true) {
            Ok(Some(s)) if s == bound => None,
            Ok(Some(s)) => Some(ClientError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "this transaction is bound to shard {bound} of database \"{}\" and this statement needs shard {s}; \
                     cross-shard transactions are not supported",
                    router.database
                ),
            )),
            Ok(None) => None,
            Err(e) => Some(e),
        }
    }

    /// Runs a queued fan-out: one connection per shard (taken in shard order, so two fan-outs cannot deadlock on each
    /// other's pools), the client's session settings applied on each, then a merged read or the statement
    /// everywhere; the client gets one answer and ReadyForQuery.
    pub(super) async fn run_fanout(&mut self, f: Fanout) -> Result<(), SessionError> {
        self.flush_client().await?;
        let config = self.ctx.config();
        let user = config.user(&self.pools.user).cloned();
        let mut lent: Vec<(Arc<Pool>, Box<ServerConn>)> = Vec::with_capacity(f.shards.len());
        let mut failure = None;
        for &s in &f.shards {
            let set = user
                .as_ref()
                .and_then(|u| self.ctx.shard_pool_set(&self.pools.database, u, s));
            let Some(set) = set else {
                failure = Some(ClientError::error(
                    sqlstate::INTERNAL_ERROR,
                    format!("no pools for shard {s}"),
                ));
                break;
            };
            let Some(w) = set.cluster.writer() else {
                failure = Some(ClientError::error(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!("shard {s} has no server accepting writes"),
                ));
                break;
            };
            let pool = Arc::clone(&set.pools[w]);
            match pool.checkout().await {
                Ok(mut server) => {
                    if let Some(sql) = self.settings_delta(&server) {
                        match server.simple_query(&sql).await {
                            Ok(None) => server.applied = self.settings.clone(),
                            _ => server.broken = true,
                        }
                    }
                    lent.push((pool, server));
                }
                Err(e) => {
                    use crate::error::ReportableError;
                    failure = Some(e.client_error().unwrap_or_else(|| {
                        ClientError::error(sqlstate::CONNECTION_FAILURE, format!("shard {s}: {e}"))
                    }));
                    break;
                }
            }
        }
        if let Some(e) = failure {
            e.write(&mut self.cout);
        } else if f.scatter {
            self.scatter(&f, &mut lent).await;
        } else {
            self.everywhere(&f, &mut lent).await;
        }
        for (pool, server) in lent {
            if server.status == TxStatus::Idle && !server.broken {
                pool.checkin(server);
            }
        }
        ready_for_query(&mut self.cout, TxStatus::Idle);
        self.flush_client().await
    }

    async fn scatter(&mut self, f: &Fanout, lent: &mut [(Arc<Pool>, Box<ServerConn>)]) {
        if let Some(r) = self.shard_router() {
            r.scatters
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let plan = match crate::sharding::scatter::Plan::from_sql(&f.sql) {
            Ok(p) => p,
            Err(e) => {
                e.write_error_response(&mut self.cout);
                return;
            }
        };
        let mut servers: Vec<&mut ServerConn> = lent.iter_mut().map(|(_, s)| &mut **s).collect();
        if let Err(e) =
            crate::sharding::scatter::scatter_query(&f.sql, &plan, &mut servers, &mut self.cout)
                .await
        {
            e.write_error_response(&mut self.cout);
        }
    }

    /// DDL and reference-table writes: the statement on every shard. Without two-phase commit a failure on one
    /// shard cannot undo the others, so the error says exactly which shards applied it.
    async fn everywhere(&mut self, f: &Fanout, lent: &mut [(Arc<Pool>, Box<ServerConn>)]) {
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        let mut tags = Vec::new();
        for (i, (_, server)) in lent.iter_mut().enumerate() {
            let shard = f.shards[i];
            match server.run_for_tags(&f.sql).await {
                Ok((t, None)) => {
                    ok.push(shard);
                    if tags.is_empty() {
                        tags = t;
                    }
                }
                Ok((_, Some(e))) => failed.push((shard, e.code, e.message)),
                Err(e) => {
                    server.broken = true;
                    failed.push((
                        shard,
                        sqlstate::CONNECTION_FAILURE.to_owned(),
                        e.to_string(),
                    ));
                }
            }
        }
        match failed.first() {
            None => {
                for t in &tags {
                    command_complete(&mut self.cout, t);
                }
            }
            Some((shard, code, message)) => {
                let failed_shards: Vec<u16> = failed.iter().map(|f| f.0).collect();
                let detail = format!(
                    "failed on shards {}; ran on shards {}",
                    list(&failed_shards),
                    if ok.is_empty() {
                        "none".to_owned()
                    } else {
                        list(&ok)
                    }
                );
                crate::protocol::backend::error_response(
                    &mut self.cout,
                    crate::protocol::backend::Severity::Error,
                    code,
                    &format!("on shard {shard}: {message}"),
                    Some(&detail),
                );
            }
        }
    }
}
