//! Accepting client connections: one task per connection that runs the handshake, login and then either a pooled
//! session or the admin console. Limits (max_pending_logins and client_login_timeout before authentication,
//! max_client_conn after it) and the shutdown switch apply here, to TCP and Unix-socket clients alike.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::handshake::{handshake, Handshake};
use super::login::{login, LoginError};
use super::session::{cancel_on_server, Session};
use super::startup_params::{initial_status, proxy_settings, startup_settings};
use super::stream::{ClientAddr, ClientStream};
use super::unix::UnixSocket;
use crate::context::Context;
use crate::error::{sqlstate, ClientError, ReportableError};
use crate::metrics::events::{CancelOutcome, CancelSource, LoginFailure};
use crate::protocol::backend::{
    authentication_ok, backend_key_data, negotiate_protocol_version, parameter_status,
    ready_for_query,
};
use crate::protocol::TxStatus;

/// Counts an accepted connection in `pending_logins` until its handshake and authentication are over.
struct PendingLogin(Arc<Context>);

impl Drop for PendingLogin {
    fn drop(&mut self) {
        self.0.pending_logins.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PendingLogin {
    /// Counts one more pending connection, unless `max` are already pending.
    fn begin(ctx: &Arc<Context>, max: usize) -> Option<PendingLogin> {
        let before = ctx.pending_logins.fetch_add(1, Ordering::Relaxed);
        let guard = PendingLogin(Arc::clone(ctx));
        (before < max).then_some(guard)
    }
}

/// A socket clients connect to. A Unix socket's file goes when this is dropped, i.e. when its accept loop ends.
pub enum Incoming {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

impl Incoming {
    async fn accept(&self) -> std::io::Result<(ClientStream, ClientAddr)> {
        match self {
            Incoming::Tcp(l) => {
                let (tcp, peer) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok((ClientStream::Plain(tcp), ClientAddr::Tcp(peer)))
            }
            Incoming::Unix(u) => {
                let (unix, _) = u.listener.accept().await?;
                Ok((ClientStream::Unix(unix), ClientAddr::Unix { port: u.port }))
            }
        }
    }
}

pub async fn accept_loop(
    ctx: Arc<Context>,
    listener: Incoming,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
) {
    let mut shutdown = ctx.shutdown_signal();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Typically EMFILE: keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => {
                if ctx.is_shutting_down() {
                    return;
                }
                continue;
            }
        };
        let Some(pending) = PendingLogin::begin(&ctx, ctx.config().general.max_pending_logins)
        else {
            refuse_over_cap(&ctx, &tcp, peer);
            continue;
        };
        let acceptor = tls.load_full();
        // The login and the session each run in a heap future of their own, and the login's is made here, outside
        // the task: the task that lives as long as the client then holds two pointers and the peer address, and
        // the session's future holds the session once, never the largest login step. (Binding the session to a
        // local of the task, even one moved from at once, kept 672 bytes per client in the task.)
        let login = Box::pin(establish(Arc::clone(&ctx), tcp, peer, acceptor, pending));
        tokio::spawn(async move {
            let running = login.await.map(Session::into_run);
            if let Some(running) = running {
                if let Err(e) = running.await {
                    tracing::info!(%peer, error = %e, "session ended with an error");
                }
            }
        });
    }
}

/// A connection beyond `max_pending_logins`: closed at once, never read and never waited on. The 53300 error is
/// written only if the fresh socket's send buffer takes it right away (it always has room for it).
fn refuse_over_cap(ctx: &Context, stream: &ClientStream, peer: ClientAddr) {
    ctx.login_failures.count(LoginFailure::TooManyPending);
    tracing::debug!(%peer, "refused: max_pending_logins connections are already logging in");
    let mut out = BytesMut::new();
    ClientError::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients are logging in already",
    )
    .write(&mut out);
    stream.try_write_now(&out);
}

/// Handshake, login and login replies. Returns the session to run, or `None` when the connection was a cancel
/// request, was refused, or was an admin console session (which has run to its end here). The handshake and the
/// authentication share one deadline, `client_login_timeout` after accept; the connection counts in
/// `pending_logins` until then and in `max_client_conn` from its successful login on.
async fn establish(
    ctx: Arc<Context>,
    tcp: ClientStream,
    peer: ClientAddr,
    tls: Option<Arc<TlsAcceptor>>,
    pending: PendingLogin,
) -> Option<Session> {
    let config = ctx.config();
    let require_tls = config
        .tls
        .as_ref()
        .is_some_and(|t| t.mode == crate::config::TlsMode::Require);
    let deadline = tokio::time::Instant::now() + config.general.client_login_timeout.0;
    let hs = tokio::time::timeout_at(
        deadline,
        Box::pin(handshake(tcp, tls.as_deref(), require_tls)),
    )
    .await;
    let (mut stream, params) = match hs {
        Ok(Ok(Handshake::Startup(stream, params))) => (stream, params),
        Ok(Ok(Handshake::Cancel(key))) => {
            handle_cancel(&ctx, key).await;
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            // A connection closed before its startup packet (a load balancer's TCP check) failed nothing.
            let why = match &e {
                super::handshake::HandshakeError::Tls(_) => Some(LoginFailure::Tls),
                _ => e
                    .client_error()
                    .map(|ce| LoginFailure::of_sqlstate(ce.code)),
            };
            if let Some(why) = why {
                ctx.login_failures.count(why);
            }
            return None;
        }
        Err(_) => {
            ctx.login_failures.count(LoginFailure::Timeout);
            tracing::debug!(%peer, "no startup packet within client_login_timeout");
            return None;
        }
    };

    if ctx.connections.load(Ordering::Relaxed) >= config.general.max_client_conn {
        refuse(&ctx, &mut stream, &too_many_clients()).await;
        return None;
    }
    if ctx.is_shutting_down() {
        let e = ClientError::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            "the database system is shutting down",
        );
        refuse(&ctx, &mut stream, &e).await;
        return None;
    }
    let authenticated = tokio::time::timeout_at(deadline, async {
        let options = params.protocol_options();
        if params.minor_version > 0 || !options.is_empty() {
            let mut out = BytesMut::new();
            negotiate_protocol_version(&mut out, &options);
            stream.write_all(&out).await?;
        }
        login(&ctx, &mut stream, &params).await
    })
    .await;
    let logged_in = match authenticated {
        Ok(Ok(l)) => l,
        Ok(Err(LoginError::Refused(e))) => {
            tracing::info!(%peer, user = params.user(), error = %e.message, "login refused");
            refuse(&ctx, &mut stream, &e).await;
            return None;
        }
        // The client hung up mid-authentication: psql does so to ask for a password, then logs in again.
        Ok(Err(LoginError::Io(_))) => return None,
        Err(_) => {
            ctx.login_failures.count(LoginFailure::Timeout);
            tracing::info!(%peer, user = params.user(), "login timed out");
            let e = ClientError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "client_login_timeout: authentication not completed in time",
            );
            send_refusal(&mut stream, &e).await;
            return None;
        }
    };
    drop(pending);
    let Some(slot) = ctx.admit_client(config.general.max_client_conn) else {
        refuse(&ctx, &mut stream, &too_many_clients()).await;
        return None;
    };
    let app_name = params
        .params
        .get("application_name")
        .cloned()
        .unwrap_or_default();
    let registration = ctx.register_client(
        slot,
        &logged_in.user.name,
        &logged_in.database,
        peer,
        &app_name,
        stream.is_tls(),
    );
    let key = registration.info.cancel_key;

    if logged_in.admin {
        send_login_ok(&mut stream, &crate::admin::server_params(), key).await;
        Box::pin(crate::admin::run(ctx, stream, registration)).await;
        return None;
    }
    let Some(pools) = ctx.pool_set(&logged_in.database, &logged_in.user) else {
        let e = ClientError::fatal(sqlstate::INVALID_CATALOG_NAME, "database was removed");
        refuse(&ctx, &mut stream, &e).await;
        return None;
    };
    let baseline = match Box::pin(pools.home().server_params()).await {
        Ok(b) => b,
        Err(e) => {
            let mut ce = e.client_error().unwrap_or_else(|| {
                ClientError::fatal(sqlstate::CONNECTION_FAILURE, "server unavailable")
            });
            ce.severity = crate::protocol::backend::Severity::Fatal;
            ctx.login_failures.count(LoginFailure::ServerUnavailable);
            send_refusal(&mut stream, &ce).await;
            return None;
        }
    };
    let proxy_values = match proxy_settings(&params) {
        Ok(v) => v,
        Err(e) => {
            let e = ClientError::fatal(e.sqlstate(), e.to_string());
            tracing::info!(%peer, user = params.user(), error = %e.message, "login refused");
            refuse(&ctx, &mut stream, &e).await;
            return None;
        }
    };
    let mut told = initial_status(&params, &baseline);
    told.share_own(|own| ctx.share_told(own));
    let settings = ctx.share_startup_settings(Arc::new(startup_settings(
        &params,
        &config.general.ignore_startup_parameters,
        &baseline,
    )));
    let told_all = told.all();
    let mode = config
        .databases
        .get(&logged_in.database)
        .map(|db| config.pool_settings(db, &logged_in.user).mode)
        .unwrap_or_default();
    let mut session = Session::new(
        Arc::clone(&ctx),
        stream,
        registration,
        pools,
        mode,
        settings,
        told,
    );
    if let Err(e) = session.apply_startup_settings(proxy_values) {
        tracing::info!(%peer, error = %e.message, "login refused");
        refuse(&ctx, session.client_mut(), &e).await;
        return None;
    }
    send_login_ok(session.client_mut(), &told_all, key).await;
    Some(session)
}

fn too_many_clients() -> ClientError {
    ClientError::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    )
}

async fn send_login_ok(
    stream: &mut ClientStream,
    params: &[(String, String)],
    key: crate::protocol::startup::CancelKey,
) {
    let mut out = BytesMut::with_capacity(512);
    authentication_ok(&mut out);
    for (k, v) in params {
        parameter_status(&mut out, k, v);
    }
    backend_key_data(&mut out, key.pid, key.secret);
    ready_for_query(&mut out, TxStatus::Idle);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

/// Refuses a login with `e`, counted under the reason its SQLSTATE stands for.
async fn refuse(ctx: &Context, stream: &mut ClientStream, e: &ClientError) {
    ctx.login_failures.count(LoginFailure::of_sqlstate(e.code));
    send_refusal(stream, e).await;
}

/// Sends `e` and closes: for refusals already counted.
async fn send_refusal(stream: &mut ClientStream, e: &ClientError) {
    let mut out = BytesMut::new();
    e.write(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// A CancelRequest: acted on here if the key is one of this instance's clients', passed once to the peer that
/// issued it otherwise (see `peers`), dropped without a word if nobody has it, as Postgres does.
async fn handle_cancel(ctx: &Arc<Context>, key: crate::protocol::startup::CancelKey) {
    let config = ctx.config();
    let source = if super::peers::is_forwarded(key) && ctx.peer_id != 0 {
        CancelSource::Peer
    } else {
        CancelSource::Client
    };
    let outcome = match super::peers::route(key, ctx.peer_id, &config) {
        super::peers::Route::Local(key) => match ctx.client_by_cancel_key(&key) {
            Some(client) => {
                forward_cancel(ctx, &client).await;
                CancelOutcome::Local
            }
            None => CancelOutcome::Unknown,
        },
        super::peers::Route::Forward { peer, addr, key } => {
            let timeout = config.general.server_connect_timeout.0;
            match super::peers::forward(&addr, key, timeout).await {
                Ok(()) => {
                    tracing::debug!(peer, %addr, "cancel request forwarded");
                    CancelOutcome::Forwarded
                }
                Err(e) => {
                    tracing::warn!(peer, error = %e, "cancel request not forwarded");
                    CancelOutcome::ForwardFailed
                }
            }
        }
        super::peers::Route::Drop(why) => {
            tracing::debug!(why, "cancel request dropped");
            CancelOutcome::Dropped
        }
    };
    // Counted once handled, before the connection closes: whoever sent it can read the counter right after.
    ctx.cancel_requests.count(source, outcome);
}

/// Forwards a client's cancel to the server running its query, and only to it, or to every shard of a
/// multi-shard statement. Each server is held back from other clients while the cancel is on its way (a released
/// server waits for it before going back to the pool), and the cancel is not sent if the client no longer holds that
/// server once the connection to its postmaster is open: otherwise a slow cancel could interrupt whatever the next
/// client runs there.
async fn forward_cancel(ctx: &Arc<Context>, client: &crate::context::ClientInfo) {
    let mut targets = client.fanout();
    targets.extend(client.server());
    let cancels = targets.into_iter().map(|(_, _, server_id)| async move {
        let _in_flight = ctx.begin_cancel(server_id);
        let still_held = || {
            client
                .server()
                .into_iter()
                .chain(client.fanout())
                .find(|s| s.2 == server_id)
        };
        let Some((addr, server_key, _)) = still_held() else {
            return;
        };
        cancel_on_server(addr, server_key, || client.holds_server(server_id)).await;
    });
    futures_join_all(cancels).await;
}

/// Runs the futures concurrently to their ends (a handful: one per shard).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
