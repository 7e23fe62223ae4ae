//! Resolving `$n` key references with one Bind message's parameters (text or binary format, Postgres' format-code
//! rules), for prepared statements whose analysis is cached once and executed many times.

use std::sync::Arc;

use super::statement::{Bound, KeyRange, KeyRef, Keys, StatementShards};
use crate::sharding::key::{KeyError, KeyType, KeyValue};
use crate::sharding::schema::ShardedTable;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindError {
    #[error("bind message supplies {given} parameters, but the statement uses ${wanted}")]
    MissingParam { wanted: usize, given: usize },
    #[error("bind message has {formats} parameter formats but {params} parameters")]
    FormatCount { formats: usize, params: usize },
    #[error("unsupported format code: {0}")]
    BadFormat(i16),
    #[error("incorrect binary data format in bind parameter {param}")]
    BadBinary { param: usize },
    #[error("invalid byte sequence for encoding \"UTF8\" in bind parameter {param}")]
    BadUtf8 { param: usize },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Resolves the statement's key values with one Bind's parameters (values as sent, `None` for NULL; format codes
/// as sent). Returns nothing for `Keys::None`.
pub fn bind_keys(
    analysis: &StatementShards,
    params: &[Option<&[u8]>],
    formats: &[i16],
) -> Result<Vec<(Arc<ShardedTable>, KeyValue)>, BindError> {
    let Keys::Values(keys) = &analysis.keys else {
        return Ok(Vec::new());
    };
    keys.iter()
        .map(|k| {
            Ok((
                k.table.clone(),
                resolve(&k.key, k.key_type(), params, formats)?,
            ))
        })
        .collect()
}

/// Resolves `insert_rows`, the keys of each row going into `insert_table`.
pub fn bind_insert_rows(
    analysis: &StatementShards,
    params: &[Option<&[u8]>],
    formats: &[i16],
) -> Result<Vec<KeyValue>, BindError> {
    let Some(ty) = analysis.insert_table.as_ref().map(|t| t.key_type) else {
        return Ok(Vec::new());
    };
    analysis
        .insert_rows
        .iter()
        .map(|k| resolve(k, ty, params, formats))
        .collect()
}

/// A key range's bounds resolved with one Bind's parameters, as (value, inclusive): lower bounds, upper bounds.
pub type BoundRange = (Vec<(KeyValue, bool)>, Vec<(KeyValue, bool)>);

/// Resolves every bound of `range` (a key of type `ty`) with one Bind's parameters.
pub fn bind_range(
    range: &KeyRange,
    ty: KeyType,
    params: &[Option<&[u8]>],
    formats: &[i16],
) -> Result<BoundRange, BindError> {
    let side = |bounds: &[Bound]| -> Result<Vec<(KeyValue, bool)>, BindError> {
        bounds
            .iter()
            .map(|b| Ok((resolve(&b.key, ty, params, formats)?, b.inclusive)))
            .collect()
    };
    Ok((side(&range.lower)?, side(&range.upper)?))
}

fn resolve(
    key: &KeyRef,
    ty: KeyType,
    params: &[Option<&[u8]>],
    formats: &[i16],
) -> Result<KeyValue, BindError> {
    let n = match key {
        KeyRef::Literal(v) => return Ok(v.clone()),
        KeyRef::Param(n) => *n,
    };
    let Some(value) = params.get(n - 1) else {
        return Err(BindError::MissingParam {
            wanted: n,
            given: params.len(),
        });
    };
    // Postgres' rule (bind in postgres.c): no codes = all text, one code = for all, else one per parameter.
    let format = match formats.len() {
        0 => 0,
        1 => formats[0],
        m if m == params.len() => formats[n - 1],
        m => {
            return Err(BindError::FormatCount {
                formats: m,
                params: params.len(),
            })
        }
    };
    let Some(bytes) = value else {
        return Ok(KeyValue::Null);
    };
    let utf8 = || std::str::from_utf8(bytes).map_err(|_| BindError::BadUtf8 { param: n });
    match format {
        0 => Ok(ty.parse_text(utf8()?)?),
        1 => match ty {
            KeyType::Int => match bytes.len() {
                2 => Ok(KeyValue::Int(
                    i16::from_be_bytes([bytes[0], bytes[1]]).into(),
                )),
                4 => Ok(KeyValue::Int(
                    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).into(),
                )),
                8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(bytes);
                    Ok(KeyValue::Int(i64::from_be_bytes(b)))
                }
                _ => Err(BindError::BadBinary { param: n }),
            },
            KeyType::Uuid => {
                let b: [u8; 16] = (*bytes)
                    .try_into()
                    .map_err(|_| BindError::BadBinary { param: n })?;
                Ok(KeyValue::Uuid(b))
            }
            KeyType::Text => Ok(KeyValue::Text(utf8()?.to_string())),
        },
        f => Err(BindError::BadFormat(f)),
    }
}
