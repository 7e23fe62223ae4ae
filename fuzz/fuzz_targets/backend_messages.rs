//! Every server message body shardpool decodes: the pooling views (src/protocol/backend.rs), the scatter merge's
//! RowDescription/DataRow readers and error fields (src/sharding/scatter/wire.rs, mod.rs), and the decoders of
//! the column values it sorts, groups and aggregates (value.rs, numeric.rs, binary.rs). A shard is trusted less
//! than it seems: a server behind a broken network, or not Postgres at all, may send anything.
//! Invariants: no panic; the two DataRow readers agree; what decodes re-encodes to the same bytes; numeric text
//! survives parse -> print -> parse, and compares equal to itself.
#![no_main]

use std::cmp::Ordering;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardpool::protocol::backend::*;
use shardpool::protocol::framing::split_frame;
use shardpool::protocol::Frame;
use shardpool::sharding::scatter::binary::{convertible, text_to_binary};
use shardpool::sharding::scatter::numeric::{compare_numeric_text, numeric_group_key, Numeric};
use shardpool::sharding::scatter::value::{group_key, parse_datetime, SortValue, TypeClass};
use shardpool::sharding::scatter::wire::{
    data_row_values, parse_row_description, write_data_row, write_row_description,
};
use shardpool::sharding::scatter::ShardErrorFields;

const CLASSES: [TypeClass; 7] = [
    TypeClass::Bool,
    TypeClass::Int,
    TypeClass::Float,
    TypeClass::Numeric,
    TypeClass::Bytes,
    TypeClass::BpChar,
    TypeClass::DateTime,
];

fn check_value(v: &bytes::Bytes) {
    for class in CLASSES {
        if let Ok(a) = SortValue::decode(class, Some(v)) {
            if !matches!(a, SortValue::Float(f) if f.is_nan()) {
                assert_eq!(a.compare(&a), Ordering::Equal, "{class:?} {v:?}");
            }
        }
        let _ = group_key(class, v, &mut Vec::new());
    }
    let _ = parse_datetime(v);
    if let Ok(n) = Numeric::parse(v) {
        let text = n.to_text();
        let again = Numeric::parse(text.as_bytes()).expect("printed numeric parses");
        assert_eq!(again.to_text(), text);
        // The comparison reads only what Postgres prints (no '+', for one), so it may refuse what parse accepted.
        if let Ok(order) = compare_numeric_text(v, text.as_bytes()) {
            assert_eq!(order, Ordering::Equal, "{v:?} / {text}");
        }
        let printed = text.as_bytes();
        assert_eq!(compare_numeric_text(printed, printed).ok(), Some(Ordering::Equal), "{text}");
        let _ = n.add(&again).div_count(3);
        let _ = numeric_group_key(v, &mut Vec::new());
    }
    for oid in [
        16, 20, 21, 23, 26, 700, 701, 25, 1043, 1042, 19, 1700, 2950, 1082, 1114,
    ] {
        if let Some(bin) = text_to_binary(oid, v) {
            assert!(convertible(oid));
            assert!(
                bin.len() <= v.len() + 64,
                "{oid} {v:?} -> {} bytes",
                bin.len()
            );
        }
    }
}

fn check_frame(frame: &Frame) {
    let body = frame.body();
    let row = parse_data_row(body);
    let values = data_row_values(frame);
    match (&row, &values) {
        (Some(a), Ok(b)) => {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert_eq!(*x, y.as_deref());
            }
            let mut out = BytesMut::new();
            write_data_row(&mut out, b);
            assert_eq!(&out[5..], body);
            b.iter().flatten().for_each(check_value);
        }
        (None, Err(_)) => {}
        _ => panic!("DataRow readers disagree: {row:?} / {values:?}"),
    }
    if let Ok(fields) = parse_row_description(frame) {
        let mut out = BytesMut::new();
        write_row_description(&mut out, &fields);
        // Trailing bytes after the last field are not read, so only the read part must round-trip.
        assert!(body.starts_with(&out[5..]));
    }
    let e = ErrorFields::parse(body);
    let s = ShardErrorFields::parse(body);
    // Both read the same fields; with one 'C' field they must agree on the SQLSTATE.
    if body.iter().filter(|&&b| b == b'C').count() <= 1 {
        assert!(s.code().is_empty() || s.code() == e.code);
    }
    let _ = (s.message(), s.detail(), e.message, e.severity);
    let _ = parse_ready_for_query(body);
    if let Some((name, value)) = parse_parameter_status(body) {
        assert!(!name.contains('\0') && !value.contains('\0'));
    }
    let tag = parse_command_complete(body);
    assert!(tag.len() <= body.len());
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf) {
        check_frame(&frame);
    }
    check_value(&buf.freeze());
});
