//! Frame splitting (src/protocol/framing.rs) over an arbitrary byte stream, delivered whole and in chunks.
//! Invariants: the frames plus what is left over are exactly the input; each frame's length is its header's;
//! cutting the stream differently never changes the frames or the error.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardpool::protocol::framing::{peek_header, split_frame, HEADER_LEN};
use shardpool::protocol::{Frame, FrameError};

/// All frames of `chunks` fed one after another, the bytes left over, and the error that stopped it.
fn split_all(chunks: &[&[u8]]) -> (Vec<Frame>, BytesMut, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let peeked = peek_header(&buf);
            match split_frame(&mut buf) {
                Ok(Some(f)) => {
                    let Ok(Some((tag, total))) = peeked else {
                        panic!("split a frame peek_header did not see: {peeked:?}");
                    };
                    assert_eq!((f.tag, f.raw.len()), (tag, total));
                    assert_eq!(f.body().len() + HEADER_LEN, f.raw.len());
                    let len = i32::from_be_bytes([f.raw[1], f.raw[2], f.raw[3], f.raw[4]]);
                    assert_eq!(len as usize, f.raw.len() - 1);
                    frames.push(f);
                }
                Ok(None) => {
                    if let Ok(Some((_, total))) = peeked {
                        assert!(buf.len() < total);
                    }
                    break;
                }
                Err(e) => {
                    assert!(matches!(&peeked, Err(p) if *p == e), "{peeked:?} / {e:?}");
                    return (frames, buf, Some(e));
                }
            }
        }
    }
    (frames, buf, None)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunking; the rest is the stream.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let (frames, rest, err) = split_all(&[stream]);
    let mut joined: Vec<u8> = frames.iter().flat_map(|f| f.raw.iter().copied()).collect();
    joined.extend_from_slice(&rest);
    assert_eq!(joined, stream);

    let sizes = [cut % 7 + 1, cut / 7 % 13 + 1, cut / 91 + 1];
    let chunked = split_all(&shardpool_fuzz::chunks(stream, &sizes));
    // An error stops reading, so the chunked run may have read less of the stream before it.
    assert_eq!(chunked.0, frames);
    assert_eq!(chunked.2, err);
    if err.is_none() {
        assert_eq!(chunked.1, rest);
    }
});
