//! Framing of regular (post-startup) messages: a one-byte tag, a big-endian i32 length that counts itself, a body.
//! The pooler's hot path only ever peeks at the 5-byte header and splits whole frames off a `BytesMut` without
//! copying; bodies are decoded only for the handful of message types pooling must understand.

use bytes::{Bytes, BytesMut};

/// Upper bound on a single message we accept, mirroring Postgres' `PQ_LARGE_MESSAGE_LIMIT` (1 GiB - 1).
pub const MAX_MESSAGE_LEN: usize = 0x3fff_ffff;

/// Header size: tag + length.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i64 },
    #[error(
        "message of type {tag:?} is {len} bytes long, over the limit of {max} (max_message_size)"
    )]
    TooLong { tag: char, len: usize, max: usize },
}

/// One complete message, tag included, as it travelled on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// The whole message including tag and length, ready to forward unchanged.
    pub raw: Bytes,
}

impl Frame {
    /// The body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.raw[HEADER_LEN..]
    }
}

/// Peeks at the header at the start of `buf`: returns (tag, total frame length) once 5 bytes are there.
#[inline]
pub fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize)>, FrameError> {
    peek_header_within(buf, MAX_MESSAGE_LEN)
}

/// `peek_header` for a message whose length (as its length field counts it: itself and the body) may be at most
/// `max`: a longer one is refused from its header, before any of its body is buffered.
#[inline]
pub fn peek_header_within(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_MESSAGE_LEN {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len: i64::from(len),
        });
    }
    if len as usize > max {
        return Err(FrameError::TooLong {
            tag: tag as char,
            len: len as usize,
            max,
        });
    }
    Ok(Some((tag, len as usize + 1)))
}

/// Splits one complete frame off the front of `buf`, or returns `None` if more bytes are needed.
#[inline]
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    split_frame_within(buf, MAX_MESSAGE_LEN)
}

/// `split_frame` with a limit on the message's length (see `peek_header_within`): what client input goes through.
#[inline]
pub fn split_frame_within(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match peek_header_within(buf, max)? {
        Some((tag, total)) if buf.len() >= total => Ok(Some(Frame {
            tag,
            raw: buf.split_to(total).freeze(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whole_frames_and_waits_for_partial_ones() {
        let mut buf = BytesMut::from(&b"Q\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00"[..]);
        let f = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"SELECT 1\x00");
        assert_eq!(split_frame(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"Z\x00\x00");
    }

    #[test]
    fn a_limit_refuses_longer_messages_from_the_header_alone() {
        let mut at_limit = BytesMut::from(&b"Q\x00\x00\x00\x0dSELECT 1\x00"[..]);
        assert!(split_frame_within(&mut at_limit, 13).unwrap().is_some());
        let mut header_only = BytesMut::from(&b"Q\x00\x00\x00\x0e"[..]);
        assert_eq!(
            split_frame_within(&mut header_only, 13),
            Err(FrameError::TooLong {
                tag: 'Q',
                len: 14,
                max: 13
            })
        );
    }

    #[test]
    fn rejects_lengths_that_cannot_be_valid() {
        for len in [-1i32, 0, 3, i32::MAX] {
            let mut raw = vec![b'Q'];
            raw.extend_from_slice(&len.to_be_bytes());
            let mut buf = BytesMut::from(&raw[..]);
            assert!(split_frame(&mut buf).is_err(), "len {len}");
        }
    }
}
