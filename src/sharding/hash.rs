//! Key -> hash -> virtual shard, computed exactly as Postgres computes it, so that a shard can evaluate a row's
//! virtual shard in SQL (publication row filters during an online move, check constraints that refuse rows a shard
//! does not own) and always agree with the proxy's routing.
//!
//! The functions are a port of Bob Jenkins' lookup3 hash as Postgres uses it (`src/common/hashfn.c`:
//! `hash_bytes_extended`, `hash_bytes_uint32_extended`, exposed as `hash_any_extended`/`hash_uint32_extended`) and of
//! the per-type wrappers that feed it (`src/backend/access/hash/hashfunc.c`: `hashint8extended`,
//! `hashtextextended`; `src/backend/utils/adt/uuid.c`: `uuid_hash_extended`). Results are what an x86_64
//! (little-endian) server returns; SQL shows the same 64 bits as a signed bigint.

use super::key::{KeyType, KeyValue};

/// The seed shardpool hashes with. Fixed forever once data is placed: changing it moves every row.
pub const SHARD_SEED: u64 = 0;

/// lookup3's starting state before the key length is added (hashfn.c adds `0x9e3779b9 + len + 3923095`).
const INIT: u32 = 0x9e37_79b9_u32.wrapping_add(3_923_095);

/// The three-word lookup3 state.
#[derive(Clone, Copy)]
struct State {
    a: u32,
    b: u32,
    c: u32,
}

impl State {
    /// hashfn.c starts every hash from one value derived from the key length, then, for a non-zero seed, mixes the
    /// seed in as if it were a leading 12-byte block (high word into `a`, low word into `b`, zero into `c`).
    fn new(len: u32, seed: u64) -> State {
        let v = INIT.wrapping_add(len);
        let mut s = State { a: v, b: v, c: v };
        if seed != 0 {
            s.a = s.a.wrapping_add((seed >> 32) as u32);
            s.b = s.b.wrapping_add(seed as u32);
            s.mix();
        }
        s
    }

    /// lookup3 `mix()`: reversible mixing after each full 12-byte block.
    #[inline(always)]
    fn mix(&mut self) {
        let State { a, b, c } = self;
        *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }

    /// lookup3 `final()`, then Postgres' 64-bit result: `b` in the high half, `c` in the low half.
    #[inline(always)]
    fn finish(mut self) -> u64 {
        let State { a, b, c } = &mut self;
        *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
        *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
        *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
        *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
        *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
        *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
        *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
        (u64::from(*b) << 32) | u64::from(*c)
    }
}

#[inline(always)]
fn word(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Postgres `hash_any_extended` (hashfn.c `hash_bytes_extended`) on a little-endian server.
///
/// hashfn.c has an aligned path (word loads) and an unaligned path (byte assembly); on little-endian machines both
/// read each 4-byte group as a little-endian word, so one path suffices here. The tail is the subtle part: its last
/// three bytes go into `c` shifted up by one byte, because lookup3 reserves `c`'s lowest byte for the length.
pub fn hash_any_extended(key: &[u8], seed: u64) -> u64 {
    // Postgres passes the length as a C int; a datum is at most 1 GB, so the cast never truncates in practice.
    let mut s = State::new(key.len() as u32, seed);
    let mut blocks = key.chunks_exact(12);
    for block in &mut blocks {
        s.a = s.a.wrapping_add(word(&block[0..4]));
        s.b = s.b.wrapping_add(word(&block[4..8]));
        s.c = s.c.wrapping_add(word(&block[8..12]));
        s.mix();
    }
    let tail = blocks.remainder();
    // Missing tail bytes contribute nothing in the C `switch`, exactly like zero padding does here.
    let mut padded = [0u8; 12];
    padded[..tail.len()].copy_from_slice(tail);
    s.a = s.a.wrapping_add(word(&padded[0..4]));
    s.b = s.b.wrapping_add(word(&padded[4..8]));
    s.c = s.c.wrapping_add(word(&padded[8..12]) << 8);
    s.finish()
}

/// Postgres `hash_uint32_extended` (hashfn.c `hash_bytes_uint32_extended`): `hash_any_extended` of the value's four
/// bytes, without the loop.
pub fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let mut s = State::new(4, seed);
    s.a = s.a.wrapping_add(k);
    s.finish()
}

/// Postgres `hashint8extended`. The high half is folded into the low half (complemented for negative values) so that
/// any value fitting in 32 bits hashes exactly as `hashint4extended`/`hashint2extended` hash it: an int2 or int4 shard
/// key routes like the same number stored as int8, and cross-type SQL comparisons stay consistent.
pub fn hash_int8_extended(v: i64, seed: u64) -> u64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    let folded = if v >= 0 { lo ^ hi } else { lo ^ !hi };
    hash_uint32_extended(folded, seed)
}

/// Postgres `hashtextextended` under a deterministic collation (the default, "C", and libc/ICU collations that are
/// not declared `deterministic = false`): the hash of the raw bytes in the database encoding. `bytes` must therefore
/// be the text as the server stores it (UTF-8 for a UTF8 database).
pub fn hash_text_extended(bytes: &[u8], seed: u64) -> u64 {
    hash_any_extended(bytes, seed)
}

/// Postgres `uuid_hash_extended`: the hash of the 16 bytes in their textual (big-endian, RFC 4122) order.
pub fn hash_uuid_extended(uuid: &[u8; 16], seed: u64) -> u64 {
    hash_any_extended(uuid, seed)
}

/// The virtual shard of a hash. The sign bit is cleared first so the SQL form (`bigint & 9223372036854775807`, then
/// `%`, where Postgres' `%` keeps the sign of the dividend) computes the same number.
///
/// # Panics
/// If `vshards` is 0; a sharded database's configuration is validated to have at least one virtual shard.
#[inline]
pub fn vshard_of(hash: u64, vshards: u32) -> u32 {
    ((hash & 0x7fff_ffff_ffff_ffff) % u64::from(vshards)) as u32
}

impl KeyValue {
    /// The virtual shard of this key under the hash map with [`SHARD_SEED`]; `None` for NULL, which has no shard
    /// (the SQL functions are strict and return NULL too).
    pub fn vshard(&self, vshards: u32) -> Option<u32> {
        let hash = match self {
            KeyValue::Int(v) => hash_int8_extended(*v, SHARD_SEED),
            KeyValue::Text(s) => hash_text_extended(s.as_bytes(), SHARD_SEED),
            KeyValue::Uuid(u) => hash_uuid_extended(u, SHARD_SEED),
            KeyValue::Null => return None,
        };
        Some(vshard_of(hash, vshards))
    }
}

/// The SQL expression computing, inside Postgres, the virtual shard [`KeyValue::vshard`] computes for
/// `key_column`: usable in publication row filters, check constraints and verification queries.
///
/// `key_column` is the column's name as stored in the catalog (case-sensitive); it is quoted when Postgres would
/// need it. The parentheses matter: Postgres gives `%` higher precedence than `&`. For text keys the column must
/// have a deterministic collation, or the server hashes a sort key instead of the bytes.
pub fn vshard_sql(key_column: &str, key_type: KeyType, vshards: u32) -> String {
    vshard_expr(&quote_ident(key_column), key_type, vshards)
}

/// [`vshard_sql`] over any SQL expression of the key's type (`NEW.aid` in a trigger, say); `expr` is inserted as
/// is, so it must already be quoted.
pub fn vshard_expr(expr: &str, key_type: KeyType, vshards: u32) -> String {
    let function = match key_type {
        KeyType::Int => "hashint8extended",
        KeyType::Text => "hashtextextended",
        KeyType::Uuid => "uuid_hash_extended",
    };
    format!("(({function}({expr}, {SHARD_SEED}) & 9223372036854775807) % {vshards})")
}

/// Quotes an identifier unless it is a plain lowercase name that is not a keyword, like Postgres' `quote_ident`.
pub fn quote_ident(name: &str) -> String {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && NEEDS_QUOTES.binary_search(&name).is_err();
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Keywords that cannot stand as a bare column reference: every keyword `pg_get_keywords()` does not list as
/// unreserved (catcode R, C or T). Taken from PostgreSQL 15 plus the later releases' additions; an extra entry only
/// adds harmless quotes. Sorted for binary search.
#[rustfmt::skip]
const NEEDS_QUOTES: &[&str] = &[
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization", "between",
    "bigint", "binary", "bit", "boolean", "both", "case", "cast", "char", "character", "check", "coalesce",
    "collate", "collation", "column", "concurrently", "constraint", "create", "cross", "current_catalog",
    "current_date", "current_role", "current_schema", "current_time", "current_timestamp", "current_user", "dec",
    "decimal", "default", "deferrable", "desc", "distinct", "do", "else", "end", "except", "exists", "extract",
    "false", "fetch", "float", "for", "foreign", "freeze", "from", "full", "grant", "greatest", "group", "grouping",
    "having", "ilike", "in", "initially", "inner", "inout", "int", "integer", "intersect", "interval", "into", "is",
    "isnull", "join", "json", "json_array", "json_arrayagg", "json_exists", "json_object", "json_objectagg",
    "json_query", "json_scalar", "json_serialize", "json_table", "json_value", "lateral", "leading", "least", "left",
    "like", "limit", "localtime", "localtimestamp", "merge_action", "national", "natural", "nchar", "none",
    "normalize", "not", "notnull", "null", "nullif", "numeric", "offset", "on", "only", "or", "order", "out",
    "outer", "overlaps", "overlay", "placing", "position", "precision", "primary", "real", "references", "returning",
    "right", "row", "select", "session_user", "setof", "similar", "smallint", "some", "substring", "symmetric",
    "system_user", "table", "tablesample", "then", "time", "timestamp", "to", "trailing", "treat", "trim", "true",
    "union", "unique", "user", "using", "values", "varchar", "variadic", "verbose", "when", "where", "window",
    "with", "xmlattributes", "xmlconcat", "xmlelement", "xmlexists", "xmlforest", "xmlnamespaces", "xmlparse",
    "xmlpi", "xmlroot", "xmlserialize", "xmltable",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Values returned by PostgreSQL 15.18 on x86_64 (`SELECT hashint8extended(v, 0), hashint8extended(v, 42)`...).
    const INT8: &[(i64, i64, i64)] = &[
        (0, 4154612158245552303, -8162688053457160230),
        (1, -3670598878359251130, 2207685931686633351),
        (-1, -1888257769727981238, -2218543911767281624),
        (42, 8010225493015854792, 826591455424871831),
        (i64::MAX, 1977219185673256887, 2517197663604715469),
        (i64::MIN, -9109110466470504941, -4216469540329842178),
        // 2^32 folds onto 1: the same hash, as in Postgres.
        (4294967296, -3670598878359251130, 2207685931686633351),
    ];

    const TEXT: &[(&str, i64, i64)] = &[
        ("", -6939563903564495251, 6158832220375811857),
        ("a", 3591986179850072241, 6942402718208252407),
        ("abc", -6747756470228489321, 4423357919252764502),
        ("abcd", -1038429303365892052, 8078444844130423812),
        ("hello world!", -2866487628948787489, 2479580040493412857),
        ("hello world!!", 2407105755976055416, -3322402259041673096),
        ("Grüße, 世界 🦀", 5354439691065141049, 2221226023651811541),
        // Tails of 9, 11 and 10 bytes reach `c`; the last with bytes >= 0x80 there.
        ("abcdefghi", -3278210106038014113, -2685125201776515235),
        ("abcdefghijk", 3112909444737856467, 82226251194666265),
        (
            "ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ",
            -3441482036105993594,
            -8978787254995743401,
        ),
        (
            "🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀",
            -6248639519102423305,
            4943872081159576486,
        ),
        (
            "the quick brown fox jumps over the lazy dog",
            -6494288192639172655,
            -5651317460073426575,
        ),
    ];

    const UUID: &[(&str, i64, i64)] = &[
        (
            "00000000-0000-0000-0000-000000000000",
            -6859010066814654381,
            -3882004234363783809,
        ),
        (
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            7543054272012930821,
            -2994642859040156162,
        ),
        (
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            293445543803463785,
            -6666173708135232559,
        ),
    ];

    fn uuid(text: &str) -> [u8; 16] {
        match KeyType::Uuid.parse_text(text).unwrap() {
            KeyValue::Uuid(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn int8_matches_postgres() {
        for &(v, h0, h42) in INT8 {
            assert_eq!(hash_int8_extended(v, 0) as i64, h0, "{v}");
            assert_eq!(hash_int8_extended(v, 42) as i64, h42, "{v} seed 42");
        }
    }

    #[test]
    fn seeds_with_one_half_zero_match_postgres() {
        // (v, hashint8extended(v, -1), hashint8extended(v, 4294967296))
        for (v, all_ones, high_only) in [
            (-42, 8355049244265804908, -256374129576241813),
            (2147483648, 6110074166949006181, -893720521979811119),
        ] {
            assert_eq!(hash_int8_extended(v, u64::MAX) as i64, all_ones, "{v}");
            assert_eq!(hash_int8_extended(v, 1 << 32) as i64, high_only, "{v}");
        }
    }

    #[test]
    fn text_matches_postgres() {
        for &(t, h0, h42) in TEXT {
            assert_eq!(hash_text_extended(t.as_bytes(), 0) as i64, h0, "{t:?}");
            assert_eq!(
                hash_text_extended(t.as_bytes(), 42) as i64,
                h42,
                "{t:?} seed 42"
            );
        }
    }

    #[test]
    fn uuid_matches_postgres() {
        for &(u, h0, h42) in UUID {
            assert_eq!(hash_uuid_extended(&uuid(u), 0) as i64, h0, "{u}");
            assert_eq!(hash_uuid_extended(&uuid(u), 42) as i64, h42, "{u} seed 42");
        }
    }

    #[test]
    fn int4_range_hashes_like_hashint4extended() {
        // hashint4extended is hash_uint32_extended of the int4 itself; the int8 fold must reproduce it.
        for v in [
            0i32,
            1,
            -1,
            42,
            -42,
            i32::MAX,
            i32::MIN,
            i16::MAX.into(),
            i16::MIN.into(),
        ] {
            for seed in [0, 42, u64::MAX] {
                assert_eq!(
                    hash_int8_extended(v.into(), seed),
                    hash_uint32_extended(v as u32, seed),
                    "{v} seed {seed}"
                );
            }
        }
    }

    #[test]
    fn uint32_shortcut_equals_hashing_its_bytes() {
        for k in [0u32, 1, 0xdead_beef, u32::MAX] {
            for seed in [0, 1, 1 << 32, u64::MAX] {
                assert_eq!(
                    hash_uint32_extended(k, seed),
                    hash_any_extended(&k.to_le_bytes(), seed)
                );
            }
        }
    }

    #[test]
    fn vshard_clears_the_sign_bit_before_the_modulo() {
        assert_eq!(vshard_of(u64::MAX, 1024), 1023);
        assert_eq!(vshard_of(1 << 63, 1024), 0);
        assert_eq!(vshard_of(12345, 1), 0);
        assert_eq!(
            vshard_of(u64::MAX, u32::MAX),
            (i64::MAX as u64 % u64::from(u32::MAX)) as u32
        );
        // 42 as int8: hash 8010225493015854792 in Postgres.
        assert_eq!(
            KeyValue::Int(42).vshard(1024),
            Some((8010225493015854792_u64 % 1024) as u32)
        );
    }

    #[test]
    fn key_values_use_their_type_and_null_has_no_vshard() {
        assert_eq!(KeyValue::Null.vshard(4096), None);
        let n = 4096;
        let int = vshard_of(hash_int8_extended(42, 0), n);
        let text = vshard_of(hash_text_extended(b"42", 0), n);
        assert_eq!(KeyValue::Int(42).vshard(n), Some(int));
        assert_eq!(KeyValue::Text("42".into()).vshard(n), Some(text));
        assert_ne!(int, text, "int 42 and text '42' hash differently");
        let u = uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(
            KeyValue::Uuid(u).vshard(n),
            Some(vshard_of(hash_uuid_extended(&u, 0), n))
        );
    }

    #[test]
    fn vshard_sql_names_the_type_function_and_quotes_when_needed() {
        assert_eq!(
            vshard_sql("aid", KeyType::Int, 1024),
            "((hashint8extended(aid, 0) & 9223372036854775807) % 1024)"
        );
        assert_eq!(
            vshard_sql("name", KeyType::Text, 4096),
            "((hashtextextended(name, 0) & 9223372036854775807) % 4096)"
        );
        assert_eq!(
            vshard_sql("id_2", KeyType::Uuid, 8),
            "((uuid_hash_extended(id_2, 0) & 9223372036854775807) % 8)"
        );
        for (name, quoted) in [
            ("user", "\"user\""),
            ("Aid", "\"Aid\""),
            ("1st", "\"1st\""),
            ("tenant id", "\"tenant id\""),
            ("a\"b", "\"a\"\"b\""),
            ("", "\"\""),
            ("grüße", "\"grüße\""),
        ] {
            assert_eq!(
                vshard_sql(name, KeyType::Int, 2),
                format!("((hashint8extended({quoted}, 0) & 9223372036854775807) % 2)")
            );
        }
    }

    #[test]
    fn keyword_list_is_sorted() {
        assert!(NEEDS_QUOTES.windows(2).all(|w| w[0] < w[1]));
    }
}
