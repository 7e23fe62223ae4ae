//! The merge itself, free of I/O so it can be tested on frames: the LIMIT/OFFSET window, ORDER BY comparisons of
//! whole rows, and the k-way merge of sorted shard streams. Combining partial aggregates is in
//! [`super::combine`].

use std::cmp::Ordering;

use bytes::Bytes;

use super::plan::{SortKey, Window};
use super::value::{type_name, SortValue, TypeClass};
use super::wire::data_row_values;
use super::ScatterError;
use crate::protocol::Frame;

/// What to do with the next row in merged order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Skip,
    Take,
    /// The window is full: stop reading.
    Done,
}

/// Applies OFFSET and LIMIT to merged rows.
#[derive(Debug)]
pub struct Emitter {
    skip: u64,
    left: Option<u64>,
    pub taken: u64,
}

impl Emitter {
    pub fn new(window: Window) -> Emitter {
        Emitter {
            skip: window.offset,
            left: window.limit,
            taken: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.left == Some(0)
    }

    pub fn admit(&mut self) -> Admit {
        if self.is_done() {
            return Admit::Done;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Admit::Skip;
        }
        if let Some(left) = &mut self.left {
            *left -= 1;
        }
        self.taken += 1;
        Admit::Take
    }
}

/// A sort key bound to a column index and its comparison rule.
#[derive(Clone, Copy, Debug)]
pub struct BoundKey {
    pub index: usize,
    pub class: TypeClass,
    pub descending: bool,
    pub nulls_first: bool,
}

/// Binds sort keys to the columns of a result whose column types are `type_oids` (client columns first).
pub fn bind_keys(
    keys: &[SortKey],
    visible: usize,
    type_oids: &[u32],
) -> Result<Vec<BoundKey>, ScatterError> {
    keys.iter()
        .map(|k| {
            let index = k.column.index(visible);
            let type_oid = *type_oids.get(index).ok_or_else(|| {
                ScatterError::protocol(0, format!("no sort column {index} in the result"))
            })?;
            let class = TypeClass::of(type_oid).ok_or_else(|| {
                ScatterError::unsupported(format!("ORDER BY on {}", type_name(type_oid)))
            })?;
            Ok(BoundKey {
                index,
                class,
                descending: k.descending,
                nulls_first: k.nulls_first,
            })
        })
        .collect()
}

/// Decodes the sort values of a row.
pub fn sort_values(
    keys: &[BoundKey],
    values: &[Option<Bytes>],
) -> Result<Vec<SortValue>, ScatterError> {
    keys.iter()
        .map(|k| {
            let v = values.get(k.index).ok_or_else(|| {
                ScatterError::protocol(0, "DataRow shorter than its RowDescription")
            })?;
            SortValue::decode(k.class, v.as_ref()).map_err(data_error)
        })
        .collect()
}

pub(super) fn data_error(e: impl std::fmt::Display) -> ScatterError {
    ScatterError::Data {
        code: "22P02",
        message: e.to_string(),
    }
}

/// Order of two rows under ORDER BY: per key, NULLs first or last, then the value order, reversed for DESC.
pub fn compare_rows(keys: &[BoundKey], a: &[SortValue], b: &[SortValue]) -> Ordering {
    for ((k, x), y) in keys.iter().zip(a).zip(b) {
        let ord = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) if k.nulls_first => Ordering::Less,
            (true, false) => Ordering::Greater,
            (false, true) if k.nulls_first => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) if k.descending => x.compare(y).reverse(),
            (false, false) => x.compare(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// Merges shard streams that are each sorted by the same keys. The caller offers each shard's next row (or its end)
/// whenever [`KWayMerge::wants`] says so, then pops the smallest head; ties go to the lower shard index. Each
/// stream's own order is checked, so a shard sorting differently from these comparisons (a non-C collation) is an
/// error instead of a misordered result.
pub struct KWayMerge {
    keys: Vec<BoundKey>,
    heads: Vec<Option<(Frame, Vec<SortValue>)>>,
    last: Vec<Option<Vec<SortValue>>>,
    live: Vec<bool>,
}

impl KWayMerge {
    pub fn new(keys: Vec<BoundKey>, shards: usize) -> KWayMerge {
        KWayMerge {
            keys,
            heads: vec![None; shards],
            last: vec![None; shards],
            live: vec![true; shards],
        }
    }

    pub fn wants(&self, shard: usize) -> bool {
        self.live[shard] && self.heads[shard].is_none()
    }

    pub fn offer(&mut self, shard: usize, row: Option<Frame>) -> Result<(), ScatterError> {
        let Some(frame) = row else {
            self.live[shard] = false;
            return Ok(());
        };
        let values =
            data_row_values(&frame).map_err(|e| ScatterError::protocol(shard, e.to_string()))?;
        let key = sort_values(&self.keys, &values)?;
        if let Some(prev) = &self.last[shard] {
            if compare_rows(&self.keys, &key, prev) == Ordering::Less {
                return Err(ScatterError::unsupported(format!(
                    "ORDER BY whose order on shard {shard} differs from shardpool's comparison \
                     (text under a collation other than \"C\"? use COLLATE \"C\")"
                )));
            }
        }
        self.heads[shard] = Some((frame, key));
        Ok(())
    }

    /// The smallest head row, once every live shard has offered one; `None` when all streams ended.
    pub fn pop(&mut self) -> Option<(usize, Frame)> {
        debug_assert!((0..self.heads.len()).all(|i| !self.wants(i)));
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            let Some((_, key)) = head else { continue };
            best = match best {
                Some(b) => match &self.heads[b] {
                    Some((_, bk)) if compare_rows(&self.keys, key, bk) == Ordering::Less => Some(i),
                    _ => Some(b),
                },
                None => Some(i),
            };
        }
        let shard = best?;
        let (frame, key) = self.heads[shard].take()?;
        self.last[shard] = Some(key);
        Some((shard, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::data_row;
    use crate::protocol::framing::split_frame;
    use crate::sharding::scatter::plan::ColumnRef;
    use crate::sharding::scatter::value::oid;
    use bytes::BytesMut;

    fn row(values: &[Option<&str>]) -> Frame {
        let mut buf = BytesMut::new();
        data_row(&mut buf, values);
        split_frame(&mut buf).unwrap().unwrap()
    }

    fn text_of(values: &[Option<Bytes>]) -> Vec<Option<String>> {
        values
            .iter()
            .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect()
    }

    #[test]
    fn the_window_skips_then_takes_then_stops() {
        let mut e = Emitter::new(Window {
            offset: 2,
            limit: Some(1),
        });
        assert_eq!(
            [e.admit(), e.admit(), e.admit(), e.admit()],
            [Admit::Skip, Admit::Skip, Admit::Take, Admit::Done]
        );
        assert_eq!(e.taken, 1);
        assert!(Emitter::new(Window {
            offset: 5,
            limit: Some(0)
        })
        .is_done());
    }

    #[test]
    fn k_way_merge_orders_across_shards_with_nulls_placed() {
        let keys = bind_keys(
            &[SortKey {
                column: ColumnRef::Output(0),
                descending: true,
                nulls_first: true,
            }],
            1,
            &[oid::INT4],
        )
        .unwrap();
        let shards = [
            vec![row(&[None]), row(&[Some("9")]), row(&[Some("3")])],
            vec![row(&[Some("10")]), row(&[Some("3")]), row(&[Some("-1")])],
            vec![],
        ];
        let mut merge = KWayMerge::new(keys, shards.len());
        let mut next = [0usize; 3];
        let mut out = Vec::new();
        loop {
            for (i, rows) in shards.iter().enumerate() {
                if merge.wants(i) {
                    merge.offer(i, rows.get(next[i]).cloned()).unwrap();
                    next[i] += 1;
                }
            }
            let Some((shard, frame)) = merge.pop() else {
                break;
            };
            out.push((shard, text_of(&data_row_values(&frame).unwrap())[0].clone()));
        }
        let got: Vec<(usize, Option<&str>)> = out.iter().map(|(s, v)| (*s, v.as_deref())).collect();
        assert_eq!(
            got,
            [
                (0, None),
                (1, Some("10")),
                (0, Some("9")),
                (0, Some("3")),
                (1, Some("3")),
                (1, Some("-1"))
            ]
        );
    }

    #[test]
    fn a_shard_out_of_order_is_an_error() {
        let keys = bind_keys(
            &[SortKey {
                column: ColumnRef::Output(0),
                descending: false,
                nulls_first: false,
            }],
            1,
            &[oid::TEXT],
        )
        .unwrap();
        let mut merge = KWayMerge::new(keys, 1);
        merge.offer(0, Some(row(&[Some("b")]))).unwrap();
        merge.pop().unwrap();
        assert!(matches!(
            merge.offer(0, Some(row(&[Some("B")]))),
            Err(ScatterError::Unsupported(_))
        ));
    }

    #[test]
    fn unsortable_types_are_refused_by_name() {
        let err = bind_keys(
            &[SortKey {
                column: ColumnRef::Output(0),
                descending: false,
                nulls_first: false,
            }],
            1,
            &[oid::INTERVAL],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "scatter/gather does not support ORDER BY on type interval across shards"
        );
    }
}
