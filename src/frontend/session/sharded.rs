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
    pub kind: FanoutKind,
}

pub(super) enum FanoutKind {
    /// A read whose rows are merged.
    Scatter,
    /// DDL, reference-table and allowed keyless writes: the statement everywhere, one answer.
    Everywhere,
    /// `COPY sharded_table FROM STDIN`: the client's rows split by key.
    CopyIn(
        Box<crate::sharding::copy::CopyFrom>,
        Arc<crate::sharding::schema::ShardedTable>,
    ),
    /// `COPY sharded_table TO STDOUT`: the shards' outputs one after the other (`header`: send it once).
    CopyOut { header: bool },
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
        if frame.tag == tag::QUERY && starts_with_copy(sql) {
            if let Some(fanout) = copy_fanout(router, sql)? {
                if in_transaction {
                    return Err(ClientError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "COPY of a sharded table cannot run inside a transaction (transactions are bound to one shard)",
                    ));
                }
                self.routing_state().fanout = Some(fanout);
                return Ok(None);
            }
        }
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
                    kind: FanoutKind::Everywhere,
                });
                Ok(None)
            }
            Placement::Scatter(shards) => {
                self.routing_state().fanout = Some(Fanout {
                    sql: sql.to_owned(),
                    shards,
                    kind: FanoutKind::Scatter,
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
        } else {
            match &f.kind {
                FanoutKind::Scatter => self.scatter(&f, &mut lent).await,
                FanoutKind::Everywhere => self.everywhere(&f, &mut lent).await,
                FanoutKind::CopyIn(from, table) => {
                    let (from, table) = (from.clone(), Arc::clone(table));
                    Box::pin(self.copy_in(&from, &table, &mut lent)).await?
                }
                FanoutKind::CopyOut { header } => {
                    Box::pin(self.copy_out(&f.sql, *header, &mut lent)).await?
                }
            }
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

/// Whether a query starts with the COPY keyword (after blanks and comments are not skipped: a hint comment before
/// COPY makes it go the ordinary way, which refuses a keyless write).
fn starts_with_copy(sql: &str) -> bool {
    let t = sql.trim_start();
    t.len() >= 4 && t[..4].eq_ignore_ascii_case("copy")
}

/// The fan-out a COPY of a sharded table needs; `None` when the COPY is not about a sharded table.
fn copy_fanout(router: &ShardRouter, sql: &str) -> Result<Option<Fanout>, ClientError> {
    use crate::sharding::copy::{CopySource, CopyStatement};
    use crate::sharding::schema::TableKind;
    let parsed =
        CopyStatement::parse(sql).map_err(|e| ClientError::error(e.sqlstate(), e.to_string()))?;
    let sharded = |name: &crate::sharding::copy::TableName| {
        let full = match &name.schema {
            Some(s) => format!("{s}.{}", name.name),
            None => name.name.clone(),
        };
        match router.schema.lookup_str(&full) {
            Some(TableKind::Sharded(t)) => Some(Arc::clone(t)),
            _ => None,
        }
    };
    let all: Vec<u16> = (0..router.shards()).collect();
    Ok(match parsed {
        Some(CopyStatement::Split(from)) => sharded(&from.table).map(|t| Fanout {
            sql: sql.to_owned(),
            shards: all,
            kind: FanoutKind::CopyIn(Box::new(from), t),
        }),
        Some(CopyStatement::Concatenate(to)) => match &to.source {
            CopySource::Table { table, .. } => sharded(table).map(|_| Fanout {
                sql: sql.to_owned(),
                shards: all,
                kind: FanoutKind::CopyOut {
                    header: to.options.header == crate::sharding::copy::HeaderLine::Present,
                },
            }),
            CopySource::Query(_) => {
                return Err(ClientError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "COPY (query) TO STDOUT is not supported on a sharded database: concatenating shards is only \
                     correct for a table; use COPY table TO STDOUT, or a SELECT (which is merged)",
                ))
            }
        },
        None => None,
    })
}
