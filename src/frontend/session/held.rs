//! Writes held during a remap's cutover. A write routed by key to a vshard that a remap has frozen is not sent
//! anywhere: the session waits for the catalog to change (the freeze lifted, the placement flipped) or for the hold
//! to run out, puts the message back in front of the client's input and routes it again. Nothing has been sent to a
//! server yet, so the client sees only a delay; reads and other vshards are never held.

use std::time::Instant;

use super::sharded::{Fanout, FanoutKind};
use super::{Session, SessionError};
use crate::protocol::Frame;
use crate::sharding::router::Held;

impl Session {
    /// Queues the hold of `first`; returns the `None` of a queued fan-out.
    pub(super) fn hold(&mut self, first: &Frame, held: Held) -> Option<u16> {
        let kind = FanoutKind::AwaitUnfreeze(first.clone(), held);
        self.routing_state().fanout = Some(Fanout {
            sql: String::new(),
            shards: Vec::new(),
            kind,
            batch: None,
            reference_only: false,
        });
        None
    }

    /// Whether the queued fan-out is a hold (a hold inside a held-back BEGIN is fine: nothing ran yet).
    pub(super) fn is_held(&self) -> bool {
        self.routing.as_ref().is_some_and(|r| {
            r.fanout
                .as_ref()
                .is_some_and(|f| matches!(f.kind, FanoutKind::AwaitUnfreeze(..)))
        })
    }

    /// Waits for a catalog newer than the one that held `first` (or for the hold's time to run out), then puts
    /// `first` back in front of the input to be routed again.
    pub(super) async fn await_unfreeze(
        &mut self,
        first: &Frame,
        held: Held,
    ) -> Result<(), SessionError> {
        let started = Instant::now();
        let router = self.shard_router();
        let mut epochs = router.as_ref().and_then(|r| r.catalog_epochs());
        let until = tokio::time::Instant::from_std(held.until);
        let newer = match epochs.as_mut() {
            Some(rx) => *rx.borrow_and_update() != held.epoch,
            None => false,
        };
        let mut expired = false;
        if !newer {
            match epochs.as_mut() {
                Some(rx) => tokio::select! {
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep_until(until) => expired = true,
                },
                None => {
                    tokio::time::sleep_until(until).await;
                    expired = true;
                }
            }
        }
        if let Some(r) = &router {
            r.holds.record(started.elapsed(), expired);
        }
        self.put_back(first);
        Ok(())
    }
}
