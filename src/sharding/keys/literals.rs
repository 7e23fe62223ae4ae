//! Which SQL expressions stand for a key value: literals, `$n` parameters and casts to the key's own type.

use sqlparser::ast::{CastKind, DataType, Expr, UnaryOperator, Value};

use super::statement::KeyRef;
use super::syntax::last_ident;
use crate::sharding::key::{KeyType, KeyValue};
use crate::sharding::schema::ident_is;

/// The key value an expression compared with (or inserted into) a key of type `ty` stands for. Only literals,
/// parameters, and casts to the key's own type (`'42'::bigint`, `$1::int8`, `uuid '…'`) qualify: anything else may
/// compare differently from the key's type (`key = 1.5`, `key = '42'::text`) and routes as "no key".
pub(super) fn key_ref(e: &Expr, ty: KeyType) -> Option<KeyRef> {
    match e {
        Expr::Nested(inner) => key_ref(inner, ty),
        Expr::Value(v) => value_ref(&v.value, ty),
        Expr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match (&**expr, ty) {
            (Expr::Value(v), KeyType::Int) => match &v.value {
                Value::Number(n, _) => {
                    let parsed = if *op == UnaryOperator::Minus {
                        format!("-{n}").parse::<i64>()
                    } else {
                        n.parse::<i64>()
                    };
                    parsed.ok().map(|n| KeyRef::Literal(KeyValue::Int(n)))
                }
                _ => None,
            },
            _ => None,
        },
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            data_type,
            format: None,
        } if cast_type(data_type) == Some(ty) => key_ref(expr, ty),
        Expr::TypedString(ts) if cast_type(&ts.data_type) == Some(ty) => match &ts.value.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                ty.parse_text(s).ok().map(KeyRef::Literal)
            }
            _ => None,
        },
        _ => None,
    }
}

fn value_ref(v: &Value, ty: KeyType) -> Option<KeyRef> {
    let text = |s: &str| ty.parse_text(s).ok().map(KeyRef::Literal);
    match v {
        Value::Number(n, _) if ty == KeyType::Int => n
            .parse::<i64>()
            .ok()
            .map(|n| KeyRef::Literal(KeyValue::Int(n))),
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s) => text(s),
        Value::DollarQuotedString(d) => text(&d.value),
        Value::Null => Some(KeyRef::Literal(KeyValue::Null)),
        Value::Placeholder(p) => p
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .map(KeyRef::Param),
        _ => None,
    }
}

/// The key type a cast produces, when it is one whose values compare like the key's.
fn cast_type(dt: &DataType) -> Option<KeyType> {
    match dt {
        DataType::Int2(_)
        | DataType::Int4(_)
        | DataType::Int8(_)
        | DataType::SmallInt(_)
        | DataType::Int(_)
        | DataType::Integer(_)
        | DataType::BigInt(_) => Some(KeyType::Int),
        // varchar(n) truncates on an explicit cast: `'abcd'::varchar(3)` is 'abc'. Only unbounded ones qualify.
        DataType::Text
        | DataType::Varchar(None)
        | DataType::CharacterVarying(None)
        | DataType::CharVarying(None) => Some(KeyType::Text),
        DataType::Uuid => Some(KeyType::Uuid),
        DataType::Custom(name, mods) if mods.is_empty() => {
            let id = last_ident(name)?;
            ["int2", "int4", "int8"]
                .iter()
                .any(|n| ident_is(id, n))
                .then_some(KeyType::Int)
        }
        _ => None,
    }
}
