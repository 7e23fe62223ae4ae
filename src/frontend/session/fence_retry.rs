//! Writes a remap's fence refused, routed again instead of failed.
//!
//! During a cutover every instance holds new writes to the moving vshards, and the source's fence refuses any write
//! to them that still arrives (SQLSTATE 40001). A write can reach the source after the fence although the instance
//! routed it correctly when it looked: routed just before this instance saw the freeze, then it waited for a pool
//! connection while the freeze was acknowledged and the fence installed; or the instance was stopped across the
//! flip. Such a write ran nothing that can be seen: it is the first thing its transaction did (or came right after a
//! BEGIN the proxy answered itself), the refusal rolled the transaction back, and the client has not been sent a byte
//! of it. Then the session drops that server connection, puts the transaction's messages back in front of the
//! client's input and routes them again, by the catalog as it is now: held while the vshard is frozen, sent to the
//! target once it was flipped. The client sees a delay, not an error.
//!
//! Anything else refused by the fence (a write after others in an open transaction, output already sent, a batch
//! the client pipelined more after, a statement that committed part of its work) reaches the client as the 40001 it
//! is: retrying the transaction is safe for the client, but the proxy cannot do it without replaying more than it
//! saw.

use std::time::Duration;

use bytes::BytesMut;

use super::{Session, SessionError};
use crate::config::PoolMode;
use crate::protocol::backend::ErrorFields;
use crate::protocol::frontend::parse_parse;
use crate::protocol::{tag, Frame};
use crate::sharding::remap::cutover::FENCE_MESSAGE_PREFIX;

/// Re-routes of one transaction after fence refusals before the refusal is passed on. More than one is needed only
/// when a cutover attempt is undone and retried meanwhile.
const MAX_FENCE_RETRIES: u8 = 3;

/// How long a retry waits for the catalog to change when the catalog that sent the write to the fence is still the
/// current one (this instance stopped holding because the remap outlived its pause, e.g. `shardctl` died mid-cutover):
/// the flip, or the freeze lifted by the remap run again, is a catalog change.
const CATALOG_CHANGE_WAIT: Duration = Duration::from_secs(2);

/// Command tags after which part of a transaction may have committed, so a later refusal cannot be replayed.
const COMMITTING_TAGS: [&[u8]; 5] = [
    b"COMMIT",
    b"CALL",
    b"DO",
    b"PREPARE TRANSACTION",
    b"COMMIT PREPARED",
];

/// Whether a CommandComplete with this tag means the transaction can no longer be replayed.
pub(super) fn commits(command_tag: &[u8]) -> bool {
    COMMITTING_TAGS.contains(&command_tag)
}

impl Session {
    /// Whether `e`, an error from the attached server, is a remap fence's refusal of a transaction that can be
    /// routed again unseen (see the module doc).
    pub(super) fn fence_refused_unseen(&self, e: &ErrorFields) -> bool {
        let Some(r) = self.routing.as_ref() else {
            return false;
        };
        if r.shard_router.is_none()
            || e.code != crate::error::sqlstate::SERIALIZATION_FAILURE
            || !e.message.starts_with(FENCE_MESSAGE_PREFIX)
            || self.mode != PoolMode::Transaction
            || self.pinned.is_some()
            || r.fence_retries >= MAX_FENCE_RETRIES
            || r.committed_part
            || r.retained_overflow
            || self.bytes_to_client != r.client_mark
        {
            return false;
        }
        // Exactly one batch, ending with the last message sent: nothing the client pipelined after it has run.
        let ends = r
            .retained
            .iter()
            .filter(|f| matches!(f.tag, tag::QUERY | tag::SYNC | tag::FUNCTION_CALL))
            .count();
        let last_ends = r
            .retained
            .last()
            .is_some_and(|f| matches!(f.tag, tag::QUERY | tag::SYNC));
        // A named statement's Parse registers the name again when replayed; COPY data is not routed by statement.
        let replayable = r.retained.iter().all(|f| match f.tag {
            tag::PARSE => parse_parse(f.body()).is_some_and(|p| p.name.is_empty()),
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => false,
            _ => true,
        });
        ends == 1 && last_ends && replayable
    }

    /// Drops the server that refused, puts the transaction's messages back in front of the client's input (with the
    /// BEGIN the proxy answered, if there was one) and, when this is a second refusal under an unchanged catalog,
    /// waits for the catalog to change. The idle loop then routes the messages again.
    pub(super) async fn reroute_after_fence(&mut self) -> Result<(), SessionError> {
        let Some(r) = self.routing.as_mut() else {
            return Ok(());
        };
        let frames: Vec<Frame> = std::mem::take(&mut r.retained);
        let begun = r.begun.take();
        let cout_mark = r.cout_mark;
        r.fence_retries += 1;
        let routed = r.routed_epoch;
        let router = r.shard_router.clone();
        // Postgres rolls the refused transaction back when the connection goes.
        self.abandon_unseen(cout_mark);
        self.batch_failed = false;
        let len: usize = frames.iter().map(|f| f.raw.len()).sum::<usize>() + self.cin.len();
        let mut input = BytesMut::with_capacity(len);
        for f in &frames {
            input.extend_from_slice(&f.raw);
        }
        input.extend_from_slice(&self.cin);
        self.cin = input;
        let Some(router) = router else {
            return Ok(());
        };
        router
            .holds
            .fence_retried
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut epochs = router.catalog_epochs();
        let now = epochs.as_mut().map(|rx| *rx.borrow_and_update());
        if let (Some(rx), true) = (epochs.as_mut(), routed.is_some() && routed == now) {
            // The catalog that sent it to the fence is still the current one: routing it now would send it there
            // again. Wait for the change that ends this (the flip, or the freeze lifted by a remap run again).
            let _ = tokio::time::timeout(CATALOG_CHANGE_WAIT, rx.changed()).await;
        }
        let client = self.registration.info.id;
        let state = self.routing_state();
        if let Some(b) = begun {
            state.deferred_begin = Some(b);
        }
        tracing::info!(
            client,
            retry = state.fence_retries,
            "a remap fence refused a write the client has not seen; routing it again"
        );
        Ok(())
    }
}

impl Session {
    /// Whether `first`, placed on a shard by a catalog that has changed while its transaction waited for a server
    /// (a remap froze or flipped its vshard meanwhile), now belongs elsewhere or must be held: then it is routed
    /// again instead of being sent where the old catalog said, which the fence would refuse, or which would bind the
    /// transaction to a shard its statement no longer lives on. Sets the session's reroute flag when so.
    pub(super) fn placement_moved_while_waiting(&mut self, first: &Frame) -> bool {
        let Some(r) = self.routing.as_mut() else {
            return false;
        };
        let (Some(router), Some(epoch)) = (r.shard_router.clone(), r.routed_epoch) else {
            return false;
        };
        if router.catalog().map(|c| c.epoch) == Some(epoch) {
            return false;
        }
        let bound = self.current_shard();
        let moved = match self.place_frame(&router, first, false) {
            Ok(Some(shard)) => Some(shard) != bound,
            // Held, or a fan-out now: the normal path decides (and queues) it again.
            Ok(None) => true,
            // Routing it again answers the client with the same error, the usual way.
            Err(_) => true,
        };
        let state = self.routing_state();
        state.fanout = None;
        state.reroute = moved;
        moved
    }

    /// Whether the transaction that was to start must be routed again (and clears the flag).
    pub(super) fn take_reroute(&mut self) -> bool {
        self.routing
            .as_mut()
            .is_some_and(|r| std::mem::take(&mut r.reroute))
    }
}
