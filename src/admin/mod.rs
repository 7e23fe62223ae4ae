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
use crate::protocol::framing::split_frame;
use crate::protocol::frontend::{parse_parse, query_text};
use crate::protocol::{tag, TxStatus};

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
            "invalid command {:?}; try SHOW POOLS|CLIENTS|SERVERS|STATS|CONFIG|DATABASES|USERS|VERSION, RELOAD, PAUSE, RESUME, SHUTDOWN",
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
    loop {
        let frame = match split_frame(&mut inbuf) {
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
            tag::PARSE => {
                state.query = parse_parse(frame.body())
                    .map(|p| String::from_utf8_lossy(p.query).into_owned());
                state.result = None;
                put_message(&mut out, tag::PARSE_COMPLETE, |_| {});
            }
            tag::BIND => put_message(&mut out, tag::BIND_COMPLETE, |_| {}),
            tag::DESCRIBE | tag::EXECUTE => {
                if state.result.is_none() {
                    let sql = state.query.clone().unwrap_or_default();
                    match execute(&ctx, &sql).await {
                        Ok(o) => state.result = Some(o),
                        Err(e) => {
                            write_error(&mut out, &e);
                            state.failed = true;
                            continue;
                        }
                    }
                }
                let Some(o) = state.result.as_ref() else {
                    continue;
                };
                if frame.tag == tag::DESCRIBE {
                    if frame.body().first() == Some(&b'S') {
                        put_message(&mut out, tag::PARAMETER_DESCRIPTION, |b| {
                            b.extend_from_slice(&[0, 0])
                        });
                    }
                    if o.columns.is_empty() {
                        put_message(&mut out, tag::NO_DATA, |_| {});
                    } else {
                        row_description_text(&mut out, &o.columns);
                    }
                } else {
                    write_output(&mut out, o, false);
                }
            }
            tag::CLOSE => put_message(&mut out, tag::CLOSE_COMPLETE, |_| {}),
            tag::SYNC => {
                state = Extended {
                    query: state.query.take(),
                    ..Extended::default()
                };
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

#[derive(Default)]
struct Extended {
    query: Option<String>,
    result: Option<Output>,
    failed: bool,
}
