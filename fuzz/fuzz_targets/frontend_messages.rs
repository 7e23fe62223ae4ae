//! Every client message body shardpool decodes (src/protocol/frontend.rs), over a stream of frames: each body goes
//! through every decoder whatever its tag, so a decoder never trusts the tag to have shaped the body.
//! Invariants: no panic; whatever decodes re-encodes to the same bytes (shardpool renames statements and portals
//! by decoding and re-writing these messages); `malformed` lets through only bodies the session can decode.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use shardpool::protocol::framing::split_frame;
use shardpool::protocol::frontend::*;
use shardpool::protocol::tag;

fn body_of(mut buf: BytesMut) -> Vec<u8> {
    let f = split_frame(&mut buf)
        .expect("our own frame is valid")
        .expect("our own frame is whole");
    assert!(buf.is_empty());
    f.body().to_vec()
}

fn check_body(msg_tag: u8, body: &[u8]) {
    if let Some(q) = query_text(body) {
        assert!(!q.contains(&0) && q.len() < body.len());
    }
    if let Some(p) = parse_parse(body) {
        let mut buf = BytesMut::new();
        write_parse(&mut buf, p.name, p.query, p.param_types);
        assert_eq!(body_of(buf), body);
    }
    if let Some(b) = parse_bind(body) {
        let mut buf = BytesMut::new();
        write_bind(&mut buf, b.portal, b.statement, b.rest);
        assert_eq!(body_of(buf), body);
        if let Some((formats, values)) = parse_bind_params(b.rest) {
            // The formats and values re-encode to a prefix of the rest (the result formats follow).
            let mut again = Vec::new();
            again.put_i16(formats.len() as i16);
            formats.iter().for_each(|f| again.put_i16(*f));
            again.put_i16(values.len() as i16);
            for v in &values {
                match v {
                    Some(v) => {
                        again.put_i32(v.len() as i32);
                        again.put_slice(v);
                    }
                    None => again.put_i32(-1),
                }
            }
            assert!(b.rest.starts_with(&again), "{formats:?} {values:?}");
        }
    }
    if let Some(t) = parse_target(body) {
        let mut buf = BytesMut::new();
        write_target(&mut buf, tag::DESCRIBE, t.kind, t.name);
        assert_eq!(body_of(buf), body);
    }
    if let Some(pw) = parse_password(body) {
        let mut buf = BytesMut::new();
        write_password(&mut buf, pw);
        assert_eq!(body_of(buf), body);
    }
    if let Some((mechanism, data)) = parse_sasl_initial(body) {
        if let Ok(m) = std::str::from_utf8(mechanism) {
            let mut buf = BytesMut::new();
            write_sasl_initial(&mut buf, m, data);
            assert_eq!(body_of(buf), body);
        }
    }
    if malformed(msg_tag, body).is_none() {
        match msg_tag {
            tag::QUERY => assert!(query_text(body).is_some()),
            tag::PARSE => assert!(parse_parse(body).is_some()),
            tag::BIND => assert!(parse_bind(body).is_some()),
            tag::DESCRIBE => assert!(parse_target(body).is_some()),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // peek_bind reads the raw buffer itself, frames and all.
    if let Some((statement, rest)) = peek_bind(data) {
        assert!(!statement.contains(&0));
        assert!(rest.len() < data.len());
    }
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf) {
        check_body(frame.tag, frame.body());
    }
    // A tail that is not a whole frame is still a body some decoder may be handed.
    check_body(data.first().copied().unwrap_or(0), &buf);
});
