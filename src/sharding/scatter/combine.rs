//! Combining partial aggregate rows from every shard into one row per group, following Postgres' own combine
//! functions: counts add as int8 (int8pl, overflow is an error); sum(int2/int4) arrives as int8 and adds as int8;
//! sum(int8) and sum(numeric) arrive as numeric and add exactly in decimal; float sums add in their own precision,
//! and an overflow to infinity is an error as in float8pl; min/max compare as [`super::value`] does; avg divides
//! the summed sum by the summed count: numeric_div for integer and numeric inputs (exact, same scale as Postgres
//! prints), plain division for double precision. Float sums can differ from an unsharded server's in the last
//! digits, because the additions happen in another order (Postgres' own parallel aggregation has the same
//! property). avg(real) is refused: shards would sum in single precision where Postgres accumulates in double
//! precision. min/max of numerics equal in value but printed with different scales (1.0, 1.00) return the first
//! shard's; Postgres' choice depends on row order as well.

use std::cmp::Ordering;
use std::collections::HashMap;

use bytes::Bytes;

use super::merge::data_error;
use super::numeric::{format_float4, format_float8, parse_float, Numeric};
use super::plan::MergedColumn;
use super::value::{group_key, oid, type_name, SortValue, TypeClass};
use super::wire::{data_row_values, Field};
use super::{Limits, ScatterError, NUMERIC_OUT_OF_RANGE};
use crate::protocol::Frame;

/// How one merged column combines, bound to the shard result's column types.
#[derive(Clone, Copy, Debug)]
enum Combine {
    Group { col: usize, class: TypeClass },
    First { col: usize },
    Count { col: usize },
    SumInt8 { col: usize },
    SumNumeric { col: usize },
    SumFloat8 { col: usize },
    SumFloat4 { col: usize },
    Min { col: usize, class: TypeClass },
    Max { col: usize, class: TypeClass },
    AvgNumeric { sum: usize, count: usize },
    AvgFloat8 { sum: usize, count: usize },
}

/// The running state of one merged column of one group.
#[derive(Clone, Debug)]
enum Acc {
    First(Option<Bytes>),
    Int8(Option<i64>),
    Numeric(Option<Numeric>),
    /// Float sum; the shard's own text is kept while only one shard contributed, so it prints exactly as Postgres
    /// printed it.
    Float8(Option<f64>, Option<Bytes>),
    Float4(Option<f32>, Option<Bytes>),
    Extreme(Option<(SortValue, Bytes)>),
    AvgNumeric(Option<Numeric>, i64),
    AvgFloat8(Option<f64>, i64),
}

/// Combines partial aggregate rows from all shards into one row per group.
pub struct Aggregator {
    combine: Vec<Combine>,
    width: usize,
    groups: HashMap<Vec<u8>, usize>,
    rows: Vec<Vec<Acc>>,
    /// Comparison rule of each merged column (None: the type cannot be compared).
    classes: Vec<Option<TypeClass>>,
    /// Type OIDs of merged columns, for sorting after merging.
    pub type_oids: Vec<u32>,
    /// The RowDescription fields of the client's columns.
    pub fields: Vec<Field>,
    limits: Limits,
    /// Estimated bytes held: keys, kept values and a per-group overhead.
    held: usize,
}

/// Bytes a group costs beyond its key and values: its map entry, its row vector and one accumulator per column
/// (an estimate: what matters is that it grows with the groups).
const GROUP_OVERHEAD: usize = 64;
const ACC_OVERHEAD: usize = std::mem::size_of::<Acc>();

impl Aggregator {
    pub fn new(
        columns: &[MergedColumn],
        visible: usize,
        shard_fields: &[Field],
        limits: Limits,
    ) -> Result<Aggregator, ScatterError> {
        let type_of = |col: usize| {
            shard_fields.get(col).map(|f| f.type_oid).ok_or_else(|| {
                ScatterError::protocol(0, format!("shards returned no column {col}"))
            })
        };
        let mut combine = Vec::with_capacity(columns.len());
        let mut type_oids = Vec::with_capacity(columns.len());
        for column in columns {
            let (c, out_oid) = bind(*column, &type_of)?;
            combine.push(c);
            type_oids.push(out_oid);
        }
        let fields = (0..visible)
            .map(|i| {
                let mut f = shard_fields[shard_column(columns[i])].clone();
                if let Combine::AvgNumeric { .. } | Combine::AvgFloat8 { .. } = combine[i] {
                    f.type_oid = type_oids[i];
                    f.type_len = if f.type_oid == oid::FLOAT8 { 8 } else { -1 };
                    f.type_mod = -1;
                }
                f
            })
            .collect();
        Ok(Aggregator {
            classes: type_oids.iter().map(|&o| TypeClass::of(o)).collect(),
            combine,
            width: shard_fields.len(),
            groups: HashMap::new(),
            rows: Vec::new(),
            type_oids,
            fields,
            limits,
            held: 0,
        })
    }

    /// Adds one partial row from a shard.
    pub fn add(&mut self, shard: usize, frame: &Frame) -> Result<(), ScatterError> {
        // Copied out of the frame: a slice would keep the shard's whole read buffer (64 KiB) alive for each group.
        let values: Vec<Option<Bytes>> = data_row_values(frame)
            .map_err(|e| ScatterError::protocol(shard, e.to_string()))?
            .into_iter()
            .map(|v| v.map(|b| Bytes::copy_from_slice(&b)))
            .collect();
        if values.len() != self.width {
            return Err(ScatterError::protocol(
                shard,
                "DataRow width differs from RowDescription",
            ));
        }
        let mut key = Vec::new();
        for c in &self.combine {
            if let Combine::Group { col, class } = *c {
                match &values[col] {
                    None => key.push(0xff),
                    Some(v) => {
                        let start = key.len();
                        key.extend_from_slice(&[0; 5]);
                        group_key(class, v, &mut key).map_err(data_error)?;
                        let len = (key.len() - start - 5) as u32;
                        key[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
                    }
                }
            }
        }
        match self.groups.get(&key) {
            Some(&row) => {
                for (acc, c) in self.rows[row].iter_mut().zip(&self.combine) {
                    combine(acc, *c, &values)?;
                }
            }
            None => {
                if self.rows.len() >= self.limits.max_groups {
                    return Err(ScatterError::LimitExceeded {
                        what: "GROUP BY",
                        setting: "scatter_max_groups",
                        limit: self.limits.max_groups,
                    });
                }
                let values_len: usize = values.iter().flatten().map(Bytes::len).sum();
                self.held = self.held.saturating_add(
                    GROUP_OVERHEAD + key.len() + values_len + ACC_OVERHEAD * self.combine.len(),
                );
                if self.held > self.limits.max_buffer_bytes {
                    return Err(ScatterError::LimitExceeded {
                        what: "GROUP BY",
                        setting: "scatter_max_buffer_bytes",
                        limit: self.limits.max_buffer_bytes,
                    });
                }
                let accs = self
                    .combine
                    .iter()
                    .map(|c| init(*c, &values))
                    .collect::<Result<Vec<_>, _>>()?;
                self.groups.insert(key, self.rows.len());
                self.rows.push(accs);
            }
        }
        Ok(())
    }

    /// The merged rows (all merged columns, hidden ones included), in order of first appearance.
    pub fn finish(self) -> Vec<Vec<Option<Bytes>>> {
        self.rows
            .into_iter()
            .map(|accs| accs.into_iter().map(output).collect())
            .collect()
    }

    /// The comparison rule of merged column `i`, for ORDER BY after merging.
    pub fn class(&self, i: usize) -> Option<TypeClass> {
        self.classes.get(i).copied().flatten()
    }
}

fn shard_column(column: MergedColumn) -> usize {
    match column {
        MergedColumn::Group(c)
        | MergedColumn::Value(c)
        | MergedColumn::Count(c)
        | MergedColumn::Sum(c)
        | MergedColumn::Min(c)
        | MergedColumn::Max(c) => c,
        MergedColumn::Avg { sum, .. } => sum,
    }
}

/// Chooses the combine rule from the partial's type; returns it with the merged column's type OID.
fn bind(
    column: MergedColumn,
    type_of: &impl Fn(usize) -> Result<u32, ScatterError>,
) -> Result<(Combine, u32), ScatterError> {
    let comparable = |col: usize, what: &str| -> Result<(TypeClass, u32), ScatterError> {
        let t = type_of(col)?;
        let class = TypeClass::of(t)
            .ok_or_else(|| ScatterError::unsupported(format!("{what} on {}", type_name(t))))?;
        Ok((class, t))
    };
    Ok(match column {
        MergedColumn::Group(col) => {
            let (class, t) = comparable(col, "GROUP BY")?;
            (Combine::Group { col, class }, t)
        }
        MergedColumn::Value(col) => (Combine::First { col }, type_of(col)?),
        MergedColumn::Count(col) => match type_of(col)? {
            oid::INT8 => (Combine::Count { col }, oid::INT8),
            t => return Err(ScatterError::protocol(0, format!("count() returned {}", type_name(t)))),
        },
        MergedColumn::Sum(col) => match type_of(col)? {
            oid::INT8 => (Combine::SumInt8 { col }, oid::INT8),
            oid::NUMERIC => (Combine::SumNumeric { col }, oid::NUMERIC),
            oid::FLOAT8 => (Combine::SumFloat8 { col }, oid::FLOAT8),
            oid::FLOAT4 => (Combine::SumFloat4 { col }, oid::FLOAT4),
            t => return Err(ScatterError::unsupported(format!("sum() over {}", type_name(t)))),
        },
        MergedColumn::Min(col) => {
            let (class, t) = comparable(col, "min()")?;
            (Combine::Min { col, class }, t)
        }
        MergedColumn::Max(col) => {
            let (class, t) = comparable(col, "max()")?;
            (Combine::Max { col, class }, t)
        }
        MergedColumn::Avg { sum, count } => match type_of(sum)? {
            oid::INT8 | oid::NUMERIC => (Combine::AvgNumeric { sum, count }, oid::NUMERIC),
            oid::FLOAT8 => (Combine::AvgFloat8 { sum, count }, oid::FLOAT8),
            oid::FLOAT4 => {
                return Err(ScatterError::unsupported(
                    "avg() over real (shards would sum in single precision; cast the argument to double precision)",
                ))
            }
            t => return Err(ScatterError::unsupported(format!("avg() over {}", type_name(t)))),
        },
    })
}

fn value(values: &[Option<Bytes>], col: usize) -> Option<&Bytes> {
    values.get(col).and_then(Option::as_ref)
}

fn text(v: &Bytes) -> &str {
    std::str::from_utf8(v).unwrap_or("")
}

fn int8(v: Option<&Bytes>) -> Result<Option<i64>, ScatterError> {
    v.map(|v| {
        text(v)
            .parse()
            .map_err(|_| data_error(format!("invalid bigint {:?}", text(v))))
    })
    .transpose()
}

fn numeric(v: Option<&Bytes>) -> Result<Option<Numeric>, ScatterError> {
    v.map(|v| Numeric::parse(v).map_err(data_error)).transpose()
}

fn float(v: Option<&Bytes>) -> Result<Option<f64>, ScatterError> {
    v.map(|v| parse_float(v).ok_or_else(|| data_error(format!("invalid float {:?}", text(v)))))
        .transpose()
}

fn float4(v: Option<&Bytes>) -> Result<Option<f32>, ScatterError> {
    v.map(|v| match &v[..] {
        b"NaN" => Ok(f32::NAN),
        b"Infinity" => Ok(f32::INFINITY),
        b"-Infinity" => Ok(f32::NEG_INFINITY),
        _ => text(v)
            .parse::<f32>()
            .map_err(|_| data_error(format!("invalid real {:?}", text(v)))),
    })
    .transpose()
}

fn overflow(what: &str) -> ScatterError {
    ScatterError::Data {
        code: NUMERIC_OUT_OF_RANGE,
        message: what.into(),
    }
}

fn init(c: Combine, values: &[Option<Bytes>]) -> Result<Acc, ScatterError> {
    Ok(match c {
        Combine::Group { col, .. } | Combine::First { col } => {
            Acc::First(value(values, col).cloned())
        }
        Combine::Count { col } | Combine::SumInt8 { col } => Acc::Int8(int8(value(values, col))?),
        Combine::SumNumeric { col } => Acc::Numeric(numeric(value(values, col))?),
        Combine::SumFloat8 { col } => {
            Acc::Float8(float(value(values, col))?, value(values, col).cloned())
        }
        Combine::SumFloat4 { col } => {
            Acc::Float4(float4(value(values, col))?, value(values, col).cloned())
        }
        Combine::Min { col, class } | Combine::Max { col, class } => Acc::Extreme(
            value(values, col)
                .map(|v| {
                    Ok::<_, ScatterError>((
                        SortValue::decode(class, Some(v)).map_err(data_error)?,
                        v.clone(),
                    ))
                })
                .transpose()?,
        ),
        Combine::AvgNumeric { sum, count } => Acc::AvgNumeric(
            numeric(value(values, sum))?,
            int8(value(values, count))?.unwrap_or(0),
        ),
        Combine::AvgFloat8 { sum, count } => Acc::AvgFloat8(
            float(value(values, sum))?,
            int8(value(values, count))?.unwrap_or(0),
        ),
    })
}

/// float8pl / float4pl: an infinite result from finite inputs is an overflow error.
fn add_f64(a: f64, b: f64) -> Result<f64, ScatterError> {
    let r = a + b;
    if r.is_infinite() && a.is_finite() && b.is_finite() {
        return Err(overflow("value out of range: overflow"));
    }
    Ok(r)
}

fn add_f32(a: f32, b: f32) -> Result<f32, ScatterError> {
    let r = a + b;
    if r.is_infinite() && a.is_finite() && b.is_finite() {
        return Err(overflow("value out of range: overflow"));
    }
    Ok(r)
}

fn add_i64(a: i64, b: i64) -> Result<i64, ScatterError> {
    a.checked_add(b)
        .ok_or_else(|| overflow("bigint out of range"))
}

/// Adds two optional partials; NULL (a shard with no input rows) is no contribution.
fn add_opt<T: Copy>(
    a: Option<T>,
    b: Option<T>,
    add: impl Fn(T, T) -> Result<T, ScatterError>,
) -> Result<Option<T>, ScatterError> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(add(a, b)?),
        (a, b) => a.or(b),
    })
}

fn add_numeric(a: &mut Option<Numeric>, b: Option<Numeric>) {
    if let Some(b) = b {
        *a = Some(match a.take() {
            Some(a) => a.add(&b),
            None => b,
        });
    }
}

fn combine(acc: &mut Acc, c: Combine, values: &[Option<Bytes>]) -> Result<(), ScatterError> {
    match (acc, c) {
        (Acc::First(_), _) => {}
        (Acc::Int8(a), Combine::Count { col } | Combine::SumInt8 { col }) => {
            *a = add_opt(*a, int8(value(values, col))?, add_i64)?;
        }
        (Acc::Numeric(a), Combine::SumNumeric { col }) => {
            add_numeric(a, numeric(value(values, col))?)
        }
        (Acc::Float8(a, kept), Combine::SumFloat8 { col }) => {
            let b = float(value(values, col))?;
            if b.is_some() {
                *kept = if a.is_none() {
                    value(values, col).cloned()
                } else {
                    None
                };
            }
            *a = add_opt(*a, b, add_f64)?;
        }
        (Acc::Float4(a, kept), Combine::SumFloat4 { col }) => {
            let b = float4(value(values, col))?;
            if b.is_some() {
                *kept = if a.is_none() {
                    value(values, col).cloned()
                } else {
                    None
                };
            }
            *a = add_opt(*a, b, add_f32)?;
        }
        (Acc::Extreme(cur), Combine::Min { col, class } | Combine::Max { col, class }) => {
            if let Some(v) = value(values, col) {
                let candidate = SortValue::decode(class, Some(v)).map_err(data_error)?;
                let want = if matches!(c, Combine::Min { .. }) {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                let better = match cur {
                    Some((best, _)) => candidate.compare(best) == want,
                    None => true,
                };
                if better {
                    *cur = Some((candidate, v.clone()));
                }
            }
        }
        (Acc::AvgNumeric(sum, n), Combine::AvgNumeric { sum: s, count }) => {
            add_numeric(sum, numeric(value(values, s))?);
            *n = add_i64(*n, int8(value(values, count))?.unwrap_or(0))?;
        }
        (Acc::AvgFloat8(sum, n), Combine::AvgFloat8 { sum: s, count }) => {
            *sum = add_opt(*sum, float(value(values, s))?, add_f64)?;
            *n = add_i64(*n, int8(value(values, count))?.unwrap_or(0))?;
        }
        _ => return Err(ScatterError::protocol(0, "aggregate state mismatch")),
    }
    Ok(())
}

fn output(acc: Acc) -> Option<Bytes> {
    let owned = |s: String| Some(Bytes::from(s));
    match acc {
        Acc::First(v) => v,
        Acc::Int8(v) => v.and_then(|v| owned(v.to_string())),
        Acc::Numeric(v) => v.and_then(|v| owned(v.to_text())),
        Acc::Float8(v, kept) => kept.or_else(|| v.and_then(|v| owned(format_float8(v)))),
        Acc::Float4(v, kept) => kept.or_else(|| v.and_then(|v| owned(format_float4(v)))),
        Acc::Extreme(v) => v.map(|(_, text)| text),
        Acc::AvgNumeric(sum, n) if n > 0 => {
            sum.and_then(|s| owned(s.div_count(n as u64).to_text()))
        }
        Acc::AvgFloat8(sum, n) if n > 0 => sum.and_then(|s| owned(format_float8(s / n as f64))),
        Acc::AvgNumeric(..) | Acc::AvgFloat8(..) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::data_row;
    use crate::protocol::framing::split_frame;
    use bytes::BytesMut;

    fn row(values: &[Option<&str>]) -> Frame {
        let mut buf = BytesMut::new();
        data_row(&mut buf, values);
        split_frame(&mut buf).unwrap().unwrap()
    }

    fn field(type_oid: u32) -> Field {
        Field {
            name: Bytes::from_static(b"c"),
            table_oid: 0,
            column: 0,
            type_oid,
            type_len: -1,
            type_mod: -1,
            format: 0,
        }
    }

    fn text_of(values: &[Option<Bytes>]) -> Vec<Option<String>> {
        values
            .iter()
            .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect()
    }

    #[test]
    fn partial_aggregates_combine_per_group() {
        // SELECT g, count(*), sum(i4), sum(i8), min(t), max(f), avg(i4) ... GROUP BY g, as shards return it:
        // g, count, sum(int4) -> int8, sum(int8) -> numeric, min(text), max(float8), sum(int4) for avg, count.
        let columns = [
            MergedColumn::Group(0),
            MergedColumn::Count(1),
            MergedColumn::Sum(2),
            MergedColumn::Sum(3),
            MergedColumn::Min(4),
            MergedColumn::Max(5),
            MergedColumn::Avg { sum: 6, count: 7 },
        ];
        let fields: Vec<Field> = [
            oid::NUMERIC,
            oid::INT8,
            oid::INT8,
            oid::NUMERIC,
            oid::TEXT,
            oid::FLOAT8,
            oid::INT8,
            oid::INT8,
        ]
        .into_iter()
        .map(field)
        .collect();
        let mut agg = Aggregator::new(&columns, 7, &fields, Limits::UNLIMITED).unwrap();
        assert_eq!(agg.fields[6].type_oid, oid::NUMERIC);
        let rows = [
            [
                Some("1.0"),
                Some("2"),
                Some("5"),
                Some("9223372036854775807"),
                Some("b"),
                Some("NaN"),
                Some("5"),
                Some("2"),
            ],
            [
                Some("1.00"),
                Some("1"),
                Some("4"),
                Some("9223372036854775807"),
                Some("a"),
                Some("1"),
                Some("4"),
                Some("1"),
            ],
            [None, Some("1"), None, None, None, None, None, Some("0")],
            [
                Some("2"),
                Some("0"),
                None,
                None,
                None,
                None,
                None,
                Some("0"),
            ],
        ];
        for (i, r) in rows.iter().enumerate() {
            agg.add(i, &row(r)).unwrap();
        }
        let merged: Vec<_> = agg.finish().iter().map(|r| text_of(r)).collect();
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            merged,
            [
                vec![
                    s("1.0"),
                    s("3"),
                    s("9"),
                    s("18446744073709551614"),
                    s("a"),
                    s("NaN"),
                    s("3.0000000000000000")
                ],
                vec![None, s("1"), None, None, None, None, None],
                vec![s("2"), s("0"), None, None, None, None, None],
            ]
        );
    }

    #[test]
    fn sums_overflow_like_postgres() {
        let fields = vec![field(oid::INT8)];
        let mut agg =
            Aggregator::new(&[MergedColumn::Count(0)], 1, &fields, Limits::UNLIMITED).unwrap();
        agg.add(0, &row(&[Some("9223372036854775807")])).unwrap();
        let err = agg.add(1, &row(&[Some("1")])).unwrap_err();
        assert!(matches!(err, ScatterError::Data { code: "22003", .. }));
        let fields = vec![field(oid::FLOAT8)];
        let mut agg =
            Aggregator::new(&[MergedColumn::Sum(0)], 1, &fields, Limits::UNLIMITED).unwrap();
        agg.add(0, &row(&[Some("1e+308")])).unwrap();
        assert!(agg.add(1, &row(&[Some("1e+308")])).is_err());
    }

    #[test]
    fn float_sums_keep_a_single_shards_text_and_avg_real_is_refused() {
        let fields = vec![field(oid::FLOAT8)];
        let mut agg =
            Aggregator::new(&[MergedColumn::Sum(0)], 1, &fields, Limits::UNLIMITED).unwrap();
        agg.add(0, &row(&[None])).unwrap();
        agg.add(1, &row(&[Some("0.30000000000000004")])).unwrap();
        assert_eq!(
            text_of(&agg.finish()[0]),
            [Some("0.30000000000000004".to_owned())]
        );
        let fields = vec![field(oid::FLOAT4), field(oid::INT8)];
        let err = Aggregator::new(
            &[MergedColumn::Avg { sum: 0, count: 1 }],
            1,
            &fields,
            Limits::UNLIMITED,
        )
        .err()
        .unwrap();
        assert!(matches!(err, ScatterError::Unsupported(_)));
    }

    #[test]
    fn groups_past_either_limit_are_refused_naming_the_setting() {
        let fields = vec![field(oid::INT4), field(oid::INT8)];
        let columns = [MergedColumn::Group(0), MergedColumn::Count(1)];
        let limits = Limits {
            max_groups: 2,
            max_buffer_bytes: usize::MAX,
        };
        let mut agg = Aggregator::new(&columns, 2, &fields, limits).unwrap();
        agg.add(0, &row(&[Some("1"), Some("5")])).unwrap();
        agg.add(1, &row(&[Some("2"), Some("5")])).unwrap();
        // Existing groups still merge at the limit.
        agg.add(1, &row(&[Some("1"), Some("5")])).unwrap();
        let err = agg.add(0, &row(&[Some("3"), Some("5")])).unwrap_err();
        assert!(matches!(
            err,
            ScatterError::LimitExceeded {
                setting: "scatter_max_groups",
                limit: 2,
                ..
            }
        ));
        let limits = Limits {
            max_groups: usize::MAX,
            max_buffer_bytes: 1000,
        };
        let mut agg = Aggregator::new(&columns, 2, &fields, limits).unwrap();
        let added = (0..1000)
            .take_while(|i| agg.add(0, &row(&[Some(&i.to_string()), Some("1")])).is_ok())
            .count();
        assert!((1..20).contains(&added), "{added} groups fit in 1000 bytes");
    }
}
