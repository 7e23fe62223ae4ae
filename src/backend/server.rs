//! One logged-in server connection and the state that must travel with it from client to client: the parameters
//! applied on a client's behalf, the prepared statements it holds, its cancel key and its age. The session drives I/O on
//! `stream`/`rbuf` directly while the connection is attached, so forwarding needs no extra task or channel hop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::statements::StatementCache;
use super::transport::{ServerAddr, ServerStream};
use crate::protocol::backend::{parse_parameter_status, parse_ready_for_query, ErrorFields};
use crate::protocol::framing::split_frame;
use crate::protocol::frontend::write_query;
use crate::protocol::startup::CancelKey;
use crate::protocol::{tag, TxStatus};

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// Read buffer size for server connections: large enough to take a burst of rows in one syscall.
pub const SERVER_READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerIoError {
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("server sent a malformed message: {0}")]
    Protocol(String),
    #[error("server error {}: {}", .0.code, .0.message)]
    Postgres(ErrorFields),
}

pub struct ServerConn {
    pub id: u64,
    pub stream: ServerStream,
    pub rbuf: BytesMut,
    pub addr: ServerAddr,
    /// The server's own cancel key, used when a client cancels a query running here.
    pub cancel_key: CancelKey,
    /// ParameterStatus values as last reported by the server.
    pub reported: BTreeMap<String, String>,
    /// Session settings applied for the client that used this connection last (name -> SET statement).
    /// Shared with the client's own copy until one of them changes (copy on write).
    pub applied: std::sync::Arc<BTreeMap<String, String>>,
    /// A client changed settings in a way `applied` cannot follow (`set_config(name, value, false)`): the next
    /// client's settings start from RESET ALL.
    pub settings_unknown: bool,
    pub statements: StatementCache,
    pub status: TxStatus,
    pub created: Instant,
    pub last_used: Instant,
    /// Set when the connection is in a state nobody should inherit (desync, I/O error); it is closed, not pooled.
    pub broken: bool,
    /// Statements whose plan went stale under DDL ("cached plan must not change result type"): closed on the
    /// server before they are prepared again.
    pub stale: std::collections::HashSet<u64>,
    /// Keeps the pool's connection count right however the connection ends.
    pub(crate) slot: Option<super::pool::Slot>,
    /// In thread-per-core mode, the core whose runtime the socket is registered with (see `crate::cores`).
    pub home: Option<u16>,
}

impl ServerConn {
    pub(crate) fn new(
        stream: ServerStream,
        addr: ServerAddr,
        cancel_key: CancelKey,
        reported: BTreeMap<String, String>,
        statement_capacity: usize,
    ) -> ServerConn {
        let now = Instant::now();
        ServerConn {
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            stream,
            rbuf: BytesMut::with_capacity(SERVER_READ_CHUNK),
            addr,
            cancel_key,
            reported,
            applied: Default::default(),
            settings_unknown: false,
            statements: StatementCache::new(statement_capacity),
            status: TxStatus::Idle,
            created: now,
            last_used: now,
            broken: false,
            stale: std::collections::HashSet::new(),
            slot: None,
            home: crate::cores::current(),
        }
    }

    /// In thread-per-core mode, moves the socket to the calling core's runtime if it is registered with another
    /// one, so its readiness is seen by the core that uses it instead of waking it from another thread. TLS
    /// connections stay where they are (the stream cannot be taken apart and put back), and work regardless.
    /// On an error (the socket could not be registered) the connection is closed.
    pub fn adopt(mut self: Box<Self>) -> std::io::Result<Box<Self>> {
        let Some(core) = crate::cores::current() else {
            return Ok(self);
        };
        if self.home == Some(core) || self.stream.is_tls() {
            return Ok(self);
        }
        let stream = self.stream;
        self.stream = stream.rehome()?;
        self.home = Some(core);
        Ok(self)
    }

    /// Runs a query shardpool issues itself (health check, reset, rollback) and waits for ReadyForQuery, discarding
    /// results. Returns the first error the server reported, if any.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Option<ErrorFields>, ServerIoError> {
        self.send_query(sql).await?;
        self.drain_until_ready().await
    }

    /// Runs a query shardpool issues itself and returns its rows as text (the monitor's WAL positions, the write
    /// position after a commit). A server error becomes `ServerIoError::Postgres`.
    pub async fn query_rows(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ServerIoError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let error = self
            .read_to_ready(|frame| {
                if frame.tag == tag::DATA_ROW {
                    let values = crate::protocol::backend::parse_data_row(frame.body())
                        .ok_or_else(|| ServerIoError::Protocol("bad DataRow".into()))?;
                    rows.push(
                        values
                            .into_iter()
                            .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                            .collect(),
                    );
                }
                Ok(())
            })
            .await?;
        match error {
            Some(e) => Err(ServerIoError::Postgres(e)),
            None => Ok(rows),
        }
    }

    /// Runs a simple query and returns its command tags (CommandComplete texts) and the first error, if any.
    pub async fn run_for_tags(
        &mut self,
        sql: &str,
    ) -> Result<(Vec<String>, Option<ErrorFields>), ServerIoError> {
        self.send_query(sql).await?;
        let mut tags = Vec::new();
        let error = self
            .read_to_ready(|frame| {
                if frame.tag == tag::COMMAND_COMPLETE {
                    let text = crate::protocol::backend::parse_command_complete(frame.body());
                    tags.push(String::from_utf8_lossy(text).into_owned());
                }
                Ok(())
            })
            .await?;
        Ok((tags, error))
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), ServerIoError> {
        let mut out = BytesMut::new();
        write_query(&mut out, sql);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads and discards messages until ReadyForQuery; used for shardpool's own queries and for cleanup.
    pub async fn drain_until_ready(&mut self) -> Result<Option<ErrorFields>, ServerIoError> {
        self.read_to_ready(|_| Ok(())).await
    }

    /// Reads messages up to ReadyForQuery, showing each other message (ErrorResponses included) to `on`, keeping
    /// ParameterStatus and the transaction status; returns the first ErrorResponse.
    pub async fn read_to_ready(
        &mut self,
        mut on: impl FnMut(crate::protocol::Frame) -> Result<(), ServerIoError>,
    ) -> Result<Option<ErrorFields>, ServerIoError> {
        let mut first_error = None;
        loop {
            let frame = self.next_frame().await?;
            match frame.tag {
                tag::READY_FOR_QUERY => {
                    self.status = parse_ready_for_query(frame.body())
                        .ok_or_else(|| ServerIoError::Protocol("bad ReadyForQuery".into()))?;
                    return Ok(first_error);
                }
                tag::PARAMETER_STATUS => {
                    if let Some((k, v)) = parse_parameter_status(frame.body()) {
                        self.reported.insert(k, v);
                    }
                }
                tag::ERROR_RESPONSE if first_error.is_none() => {
                    first_error = Some(ErrorFields::parse(frame.body()));
                    on(frame)?;
                }
                _ => on(frame)?,
            }
        }
    }

    /// The next whole message from the server, reading as needed.
    pub async fn next_frame(&mut self) -> Result<crate::protocol::Frame, ServerIoError> {
        loop {
            if let Some(frame) =
                split_frame(&mut self.rbuf).map_err(|e| ServerIoError::Protocol(e.to_string()))?
            {
                return Ok(frame);
            }
            self.read_more().await?;
        }
    }

    /// One read into `rbuf`; EOF is an error because a server never closes a healthy connection.
    pub async fn read_more(&mut self) -> Result<usize, ServerIoError> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(SERVER_READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(ServerIoError::Closed),
            n => Ok(n),
        }
    }

    /// Forget session state after the server ran DISCARD ALL (or an equivalent reset).
    pub fn forget_session_state(&mut self) {
        self.applied = Default::default();
        self.settings_unknown = false;
        self.statements.clear();
        self.stale.clear();
    }
}
