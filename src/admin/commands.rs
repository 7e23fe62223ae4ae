//! Control commands: RELOAD re-reads the config file, PAUSE waits until no server connection is lent and holds new
//! transactions back, RESUME lets them go, SHUTDOWN starts a graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::{AdminError, Output};
use crate::context::Context;

pub fn reload(ctx: &Arc<Context>) -> Result<Output, AdminError> {
    ctx.reload_from_disk()
        .map_err(|e| AdminError::Failed(e.to_string()))?;
    Ok(Output::command("RELOAD"))
}

pub async fn pause(ctx: &Arc<Context>) -> Result<Output, AdminError> {
    ctx.pause.set(true);
    // Transactions in flight finish; PAUSE returns once every server connection is back in its pool.
    loop {
        let busy: usize = ctx
            .pools()
            .iter()
            .map(|p| {
                let s = p.snapshot();
                s.total - s.idle - s.connecting
            })
            .sum();
        if busy == 0 || !ctx.pause.is_paused() {
            return Ok(Output::command("PAUSE"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn resume(ctx: &Arc<Context>) -> Result<Output, AdminError> {
    if !ctx.pause.is_paused() {
        return Err(AdminError::Failed("pooler is not paused".into()));
    }
    ctx.pause.set(false);
    Ok(Output::command("RESUME"))
}

pub fn shutdown(ctx: &Arc<Context>) -> Result<Output, AdminError> {
    ctx.begin_shutdown();
    Ok(Output::command("SHUTDOWN"))
}
