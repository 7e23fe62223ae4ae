//! Spare I/O buffers, per runtime thread. An idle session gives its buffers back (so 10,000 idle clients hold
//! none), and the next transaction on the same thread takes them instead of asking malloc again: a 16 KiB read
//! buffer plus two write buffers per transaction were three of the six allocations a select-only transaction cost,
//! all too large for glibc's per-thread cache, and the read buffer paid a fourth one each time it was first split
//! (`BytesMut` turning shared). A recycled buffer is already shared and keeps its whole allocation.
//!
//! The lists are thread-local, so taking and giving are a borrow of a `RefCell`, never a lock; a buffer given on
//! one thread and taken on another is fine (it is plain heap memory). Each list is bounded in count and in the
//! size of what it keeps, so the spares never hold more than `KEEP * MAX_KEPT_CAPACITY` per thread.

use std::cell::RefCell;

use bytes::BytesMut;

/// Spare buffers kept per thread: enough for the transactions one thread has in flight at a time on a busy pool.
const KEEP: usize = 64;

/// A buffer that grew beyond this (a large result or COPY) is freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 64 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer with room for at least `min` bytes: a spare one if this thread has one, else a new one.
pub fn take(min: usize) -> BytesMut {
    let spare = SPARE.with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()));
    match spare {
        Some(mut buf) => {
            // Reclaims the allocation from its start when nothing else still refers to it (the usual case);
            // otherwise allocates, as a fresh buffer would have.
            buf.reserve(min);
            buf
        }
        None => BytesMut::with_capacity(min),
    }
}

/// Hands `buf` back for reuse (its contents are discarded); an empty or oversized buffer is simply dropped.
pub fn give(buf: &mut BytesMut) {
    let buf = std::mem::take(buf);
    if buf.capacity() == 0 || buf.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    let mut buf = buf;
    buf.clear();
    SPARE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < KEEP {
                s.push(buf);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_with_its_allocation() {
        let mut a = take(16 * 1024);
        a.extend_from_slice(b"hello");
        let frame = a.split_to(5).freeze(); // the buffer is now shared, as after a client message is split off
        drop(frame);
        let ptr = a.as_ptr();
        give(&mut a);
        assert_eq!(a.capacity(), 0, "the session keeps nothing");
        let b = take(1024);
        assert!(b.is_empty());
        assert!(b.capacity() >= 16 * 1024 - 5, "capacity {}", b.capacity());
        // Reclaimed inside the original allocation, not a new one.
        let start = b.as_ptr() as usize;
        assert!(start <= ptr as usize && (ptr as usize) < start + b.capacity());
    }

    #[test]
    fn oversized_and_empty_buffers_are_not_kept() {
        let mut big = BytesMut::with_capacity(MAX_KEPT_CAPACITY + 1);
        give(&mut big);
        let mut empty = BytesMut::new();
        give(&mut empty);
        SPARE.with(|s| s.borrow_mut().clear());
        let mut small = BytesMut::with_capacity(100);
        give(&mut small);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 1);
        let mut big = BytesMut::with_capacity(MAX_KEPT_CAPACITY + 1);
        give(&mut big);
        let mut empty = BytesMut::new();
        give(&mut empty);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 1);
    }

    #[test]
    fn the_list_is_bounded() {
        SPARE.with(|s| s.borrow_mut().clear());
        for _ in 0..KEEP + 10 {
            let mut b = BytesMut::with_capacity(64);
            give(&mut b);
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), KEEP);
        SPARE.with(|s| s.borrow_mut().clear());
    }
}
