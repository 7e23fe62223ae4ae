//! Rows grouped per shard into ready-to-send CopyData frames. Each shard's rows accumulate in one buffer that
//! already starts with a CopyData header; when the buffer passes the threshold its length is patched in and the
//! frame leaves whole, so a COPY holds at most about `shards x threshold` bytes plus one row, however much data
//! flows, and shards receive few large messages rather than one per row.

use bytes::{BufMut, Bytes, BytesMut};

use super::CopyRow;
use crate::protocol::{tag, MAX_MESSAGE_LEN};
use crate::sharding::key::KeyValue;

/// Flush a shard's buffer once it holds this many bytes of rows: large enough that framing and syscalls cost
/// little, small enough that many concurrent COPYs stay cheap.
pub const DEFAULT_FLUSH_THRESHOLD: usize = 64 * 1024;

/// Tag and length.
const HEADER_LEN: usize = 5;

/// One CopyData message for one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFrame {
    pub shard: u16,
    /// The whole message: tag `d`, length, rows.
    pub frame: Bytes,
    /// Rows in this frame.
    pub rows: u64,
}

impl ShardFrame {
    /// The rows' bytes without the message header.
    pub fn payload(&self) -> &[u8] {
        &self.frame[HEADER_LEN..]
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError<E> {
    /// The router could not place the key.
    #[error("{0}")]
    Route(E),
    /// The router named a shard that does not exist: a bug or a stale placement map, never the client's doing.
    #[error("router chose shard {shard} of {shards}")]
    NoSuchShard { shard: u16, shards: usize },
}

/// Per-shard buffers of rows and per-shard row counts, fed by a router from key to shard.
pub struct ShardBatches<F> {
    route: F,
    buffers: Vec<BytesMut>,
    pending: Vec<u64>,
    counts: Vec<u64>,
    threshold: usize,
}

impl<F, E> ShardBatches<F>
where
    F: FnMut(&KeyValue) -> Result<u16, E>,
{
    /// Batches for `shards` shards (numbered from 0), flushed at `threshold` bytes (at least one row per frame).
    pub fn new(shards: usize, threshold: usize, route: F) -> ShardBatches<F> {
        let threshold = threshold.clamp(1, MAX_MESSAGE_LEN / 2);
        ShardBatches {
            route,
            buffers: (0..shards).map(|_| BytesMut::new()).collect(),
            pending: vec![0; shards],
            counts: vec![0; shards],
            threshold,
        }
    }

    /// Adds a row to its shard's buffer; returns that buffer as a frame when it has reached the threshold. (Should
    /// the row not fit in one message with what is buffered, which takes rows near the 1 GiB message limit, the
    /// buffered rows leave first and the row waits for the next push or [`flush_all`](Self::flush_all).)
    pub fn push(&mut self, row: &CopyRow) -> Result<Option<ShardFrame>, BatchError<E>> {
        let shard = (self.route)(&row.key).map_err(BatchError::Route)?;
        let i = usize::from(shard);
        let Some(buf) = self.buffers.get(i) else {
            return Err(BatchError::NoSuchShard {
                shard,
                shards: self.buffers.len(),
            });
        };
        if !buf.is_empty() && buf.len() - 1 + row.data.len() > MAX_MESSAGE_LEN {
            let full = self.take(i);
            self.append(i, row);
            return Ok(Some(full));
        }
        self.append(i, row);
        Ok((self.buffers[i].len() - HEADER_LEN >= self.threshold).then(|| self.take(i)))
    }

    fn append(&mut self, i: usize, row: &CopyRow) {
        let buf = &mut self.buffers[i];
        if buf.is_empty() {
            buf.reserve(HEADER_LEN + self.threshold.max(row.data.len()));
            buf.put_u8(tag::COPY_DATA);
            buf.put_i32(0);
        }
        buf.extend_from_slice(&row.data);
        self.pending[i] += 1;
        self.counts[i] += 1;
    }

    /// Every non-empty buffer as a frame, in shard order: at CopyDone, or whenever the input pauses and rows should
    /// not wait.
    pub fn flush_all(&mut self) -> Vec<ShardFrame> {
        let full: Vec<usize> = (0..self.buffers.len())
            .filter(|&i| !self.buffers[i].is_empty())
            .collect();
        full.into_iter().map(|i| self.take(i)).collect()
    }

    /// Rows routed to each shard so far. Without a WHERE clause their sum is the `COPY n` the client expects; with
    /// one, only the shards know how many rows they kept, so add up their replies instead.
    pub fn rows_per_shard(&self) -> &[u64] {
        &self.counts
    }

    pub fn total_rows(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn take(&mut self, i: usize) -> ShardFrame {
        let mut buf = self.buffers[i].split();
        // At most MAX_MESSAGE_LEN (see `push`), so the length fits an i32.
        let len = i32::try_from(buf.len() - 1).unwrap_or(i32::MAX);
        buf[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        let rows = std::mem::take(&mut self.pending[i]);
        ShardFrame {
            shard: i as u16,
            frame: buf.freeze(),
            rows,
        }
    }
}
