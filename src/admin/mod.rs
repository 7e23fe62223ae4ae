//! The admin console: the virtual database `shardpool`, answering SHOW and control commands with PgBouncer's column
//! names wherever the concept matches, so tools written for PgBouncer's console keep working. Speaks the simple query
//! protocol and enough of the extended protocol (Parse/Bind/Describe/Execute/Sync) for drivers that always use it.

mod commands;
mod show;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::context::{ClientRegistration, Context};
use crate::error::sqlstate;
use crate::frontend::stream::ClientStream;
use crate::protocol::backend::{
    command_complete, data_row, empty_query_response, error_response, put_message, ready_for_query,
    row_description_text, Severity,
};
use crate::protocol::framing::split_frame_within;
use crate::protocol::frontend::{parse_bind, parse_parse, parse_target, query_text};
use crate::protocol::{read_cstr, tag, TxStatus};

/// A command's result: an optional table and the CommandComplete tag.
#[derive(Debug, Default)]
pub struct Output {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
}

impl Output {
    fn table(columns: Vec<&'static str>, rows: Vec<Vec<Option<String>>>) -> Output {
        Output {
            columns,
            rows,
            tag: "SHOW".into(),
        }
    }

    fn command(tag: &str) -> Output {
        Output {
            tag: tag.into(),
            ..Output::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Failed(String),
}

impl AdminError {
    fn code(&self) -> &'static str {
        match self {
            AdminError::Syntax(_) => sqlstate::SYNTAX_ERROR,
            AdminError::Failed(_) => sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        }
    }
}

/// ParameterStatus values the console reports at login.
pub fn server_params() -> Vec<(String, String)> {
    [
        (
            "server_version",
            concat!(env!("CARGO_PKG_VERSION"), "/shardpool"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub async fn execute(ctx: &Arc<Context>, sql: &str) -> Result<Output, AdminError> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] => Ok(Output::command("")),
        ["SHOW", what] => show::show(ctx, what),
        ["RELOAD"] => commands::reload(ctx),
        ["PAUSE"] => commands::pause(ctx).await,
        ["RESUME"] => commands::resume(ctx),
        ["SHUTDOWN"] => commands::shutdown(ctx),
        _ => Err(AdminError::Syntax(format!(
            "invalid command {:?}; try SHOW POOLS|CLIENTS|SERVERS|STATS|LISTS|CONFIG|DATABASES|USERS|VERSION, RELOAD, PAUSE, RESUME, SHUTDOWN",
            sql.trim()
        ))),
    }
}

fn write_output(out: &mut BytesMut, o: &Output, with_description: bool) {
    if !o.columns.is_empty() {
        if with_description {
            row_description_text(out, &o.columns);
        }
        for row in &o.rows {
            data_row(out, row);
        }
    }
    if o.tag.is_empty() {
        empty_query_response(out);
    } else {
        command_complete(out, &o.tag);
    }
}

fn write_error(out: &mut BytesMut, e: &AdminError) {
    error_response(out, Severity::Error, e.code(), &e.to_string(), None);
}

/// Runs the console for one logged-in admin client.
pub async fn run(ctx: Arc<Context>, mut stream: ClientStream, _registration: ClientRegistration) {
    let mut inbuf = BytesMut::with_capacity(1024);
    let mut out = BytesMut::with_capacity(4096);
    let mut state = Extended::default();
    let max_message = ctx.config().general.max_message_size;
    loop {
        let frame = match split_frame_within(&mut inbuf, max_message) {
            Ok(Some(f)) => f,
            Ok(None) => match stream.read_buf(&mut inbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => {
                error_response(
                    &mut out,
                    Severity::Fatal,
                    sqlstate::PROTOCOL_VIOLATION,
                    &e.to_string(),
                    None,
                );
                let _ = stream.write_all(&out).await;
                return;
            }
        };
        if state.failed && frame.tag != tag::SYNC {
            continue;
        }
        match frame.tag {
            tag::QUERY => {
                let sql = String::from_utf8_lossy(query_text(frame.body()).unwrap_or_default())
                    .into_owned();
                match execute(&ctx, &sql).await {
                    Ok(o) => write_output(&mut out, &o, true),
                    Err(e) => write_error(&mut out, &e),
                }
                ready_for_query(&mut out, TxStatus::Idle);
            }
            tag::PARSE => match parse_parse(frame.body()) {
                Some(p) => {
                    let sql = String::from_utf8_lossy(p.query).into_owned();
                    state.statements.insert(p.name.to_vec(), sql);
                    put_message(&mut out, tag::PARSE_COMPLETE, |_| {});
                }
                None => state.fail(&mut out, sqlstate::PROTOCOL_VIOLATION, "malformed Parse"),
            },
            tag::BIND => {
                let Some(b) = parse_bind(frame.body()) else {
                    state.fail(&mut out, sqlstate::PROTOCOL_VIOLATION, "malformed Bind");
                    continue;
                };
                let Some(sql) = state.statements.get(b.statement).cloned() else {
                    let msg = format!(
                        "prepared statement \"{}\" does not exist",
                        String::from_utf8_lossy(b.statement)
                    );
                    state.fail(&mut out, UNDEFINED_STATEMENT, &msg);
                    continue;
                };
                state
                    .portals
                    .insert(b.portal.to_vec(), Portal { sql, result: None });
                put_message(&mut out, tag::BIND_COMPLETE, |_| {});
            }
            tag::DESCRIBE => {
                let Some(t) = parse_target(frame.body()) else {
                    state.fail(&mut out, sqlstate::PROTOCOL_VIOLATION, "malformed Describe");
                    continue;
                };
                let (sql, cached) = if t.kind == b'S' {
                    match state.statements.get(t.name) {
                        Some(sql) => (sql.clone(), None),
                        None => {
                            state.fail(
                                &mut out,
                                UNDEFINED_STATEMENT,
                                "prepared statement does not exist",
                            );
                            continue;
                        }
                    }
                } else {
                    match state.portals.get_mut(t.name) {
                        Some(p) => (p.sql.clone(), Some(&mut p.result)),
                        None => {
                            state.fail(&mut out, UNDEFINED_PORTAL, "portal does not exist");
                            continue;
                        }
                    }
                };
                // Only SHOW has a row shape to describe, and running it has no side effect; a control command
                // (PAUSE, RELOAD...) must run once, at Execute, so it is described as returning no rows.
                let columns = if is_show(&sql) {
                    match execute(&ctx, &sql).await {
                        Ok(o) => {
                            let columns = o.columns.clone();
                            if let Some(slot) = cached {
                                *slot = Some(o); // Execute returns exactly what was described
                            }
                            columns
                        }
                        Err(e) => {
                            write_error(&mut out, &e);
                            state.failed = true;
                            continue;
                        }
                    }
                } else {
                    Vec::new()
                };
                if t.kind == b'S' {
                    put_message(&mut out, tag::PARAMETER_DESCRIPTION, |b| {
                        b.extend_from_slice(&[0, 0])
                    });
                }
                if columns.is_empty() {
                    put_message(&mut out, tag::NO_DATA, |_| {});
                } else {
                    row_description_text(&mut out, &columns);
                }
            }
            tag::EXECUTE => {
                let name = read_cstr(frame.body(), 0)
                    .map(|(n, _)| n)
                    .unwrap_or_default();
                let Some(portal) = state.portals.get_mut(name) else {
                    state.fail(&mut out, UNDEFINED_PORTAL, "portal does not exist");
                    continue;
                };
                let result = match portal.result.take() {
                    Some(o) => Ok(o),
                    None => execute(&ctx, &portal.sql.clone()).await,
                };
                match result {
                    Ok(o) => write_output(&mut out, &o, false),
                    Err(e) => {
                        write_error(&mut out, &e);
                        state.failed = true;
                        continue;
                    }
                }
            }
            tag::CLOSE => {
                if let Some(t) = parse_target(frame.body()) {
                    if t.kind == b'S' {
                        state.statements.remove(t.name);
                    } else {
                        state.portals.remove(t.name);
                    }
                }
                put_message(&mut out, tag::CLOSE_COMPLETE, |_| {});
            }
            tag::SYNC => {
                // Outside a transaction block, portals last until Sync; statements until closed.
                state.portals.clear();
                state.failed = false;
                ready_for_query(&mut out, TxStatus::Idle);
            }
            tag::FLUSH => {}
            tag::TERMINATE => return,
            other => {
                let msg = format!(
                    "unsupported message type {:?} on the admin console",
                    other as char
                );
                error_response(
                    &mut out,
                    Severity::Fatal,
                    sqlstate::PROTOCOL_VIOLATION,
                    &msg,
                    None,
                );
                let _ = stream.write_all(&out).await;
                return;
            }
        }
        if inbuf.is_empty() || out.len() > 64 * 1024 {
            if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// SQLSTATEs for extended-protocol references to things never created (Postgres' errcodes.txt).
const UNDEFINED_STATEMENT: &str = "26000";
const UNDEFINED_PORTAL: &str = "34000";

fn is_show(sql: &str) -> bool {
    sql.split_whitespace()
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("SHOW"))
}

/// Extended-protocol state: statements by name (until Close) and portals by name (until Sync), each remembering its
/// own command, so a driver may prepare several statements before running any of them.
#[derive(Default)]
struct Extended {
    statements: std::collections::HashMap<Vec<u8>, String>,
    portals: std::collections::HashMap<Vec<u8>, Portal>,
    /// An error was reported: skip messages until Sync, as Postgres does.
    failed: bool,
}

struct Portal {
    sql: String,
    /// Computed by Describe of the portal, handed to its Execute.
    result: Option<Output>,
}

impl Extended {
    fn fail(&mut self, out: &mut BytesMut, code: &str, message: &str) {
        error_response(out, Severity::Error, code, message, None);
        self.failed = true;
    }
}
