//! Which functions make a SELECT a write. Postgres marks every function immutable, stable or volatile
//! (`pg_proc.provolatile`, see src/include/catalog/pg_proc.h); a volatile function may change the database (or must
//! at least run where the session's other statements run), so a query calling one goes to the primary.
//!
//! Calls are matched by name only: the classifier does not resolve argument types or the search_path, so a name is
//! volatile if ANY overload in ANY schema is (`random()` and `random(min, max)` share one verdict), and an unqualified
//! call is judged by the bare name. Both choices can only send a read to the primary, never a write to a replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Calls that must reach the primary whatever their volatility says: sequence functions (their values exist only
/// on the primary, and `currval`/`lastval` read state that `nextval` left in the session) and the ones that assign
/// a transaction id, which fails on a standby even though Postgres marks them stable.
pub const PRIMARY_ONLY: &[&str] = &[
    "currval",
    "lastval",
    "nextval",
    "pg_current_xact_id",
    "setval",
    "txid_current",
];

/// SQL-standard syntax that sqlparser reports as a function call but that has no `pg_proc` row (so a loaded catalog
/// would call it unknown). None of them is volatile.
pub const SYNTAX_FUNCTIONS: &[&str] = &[
    "array",
    "coalesce",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "greatest",
    "grouping",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_value",
    "least",
    "localtime",
    "localtimestamp",
    "nullif",
    "row",
    "session_user",
    "system_user",
    "user",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
];

/// Functions known to be immutable or stable in every supported Postgres version, trusted before the catalog is
/// loaded so that common reads can still go to replicas. Sorted (binary search).
pub const KNOWN_NOT_VOLATILE: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_remove",
    "array_to_json",
    "array_to_string",
    "avg",
    "bit_and",
    "bit_or",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "date_part",
    "date_trunc",
    "dense_rank",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "format_type",
    "generate_series",
    "has_schema_privilege",
    "has_table_privilege",
    "initcap",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_set",
    "jsonb_typeof",
    "lag",
    "last_value",
    "lead",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_interval",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "obj_description",
    "octet_length",
    "overlay",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_backend_pid",
    "pg_get_expr",
    "pg_get_indexdef",
    "pg_get_userbyid",
    "pg_table_is_visible",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "rank",
    "regexp_match",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trunc",
    "unnest",
    "upper",
    "version",
];

/// Process-wide counter so that every table built (load, reload, overrides) has a distinct generation, which
/// caches of analyses compare to notice that their verdicts are stale.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Why a call makes a statement a write, or `None` when it does not.
pub type CallVerdict = Option<&'static str>;

/// Function names and whether they are volatile, from the server catalog plus configuration overrides.
#[derive(Debug)]
pub struct FunctionVolatility {
    /// `name` and `schema.name`, lower-case, to "is any overload volatile". `None` until loaded.
    catalog: Option<HashMap<String, bool>>,
    /// Configuration: `name` or `schema.name` to volatile, winning over the catalog.
    overrides: HashMap<String, bool>,
    generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VolatilityError {
    #[error("loading function volatility from pg_proc: {0}")]
    Query(#[from] tokio_postgres::Error),
}

impl FunctionVolatility {
    /// Before the catalog is loaded: every call not in a small built-in list of immutable/stable functions counts
    /// as volatile.
    pub fn unknown() -> FunctionVolatility {
        FunctionVolatility {
            catalog: None,
            overrides: HashMap::new(),
            generation: next_generation(),
        }
    }

    /// From catalog rows `(schema, name, volatile)`; several rows per name (overloads) fold with OR.
    pub fn from_catalog<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
    ) -> FunctionVolatility {
        let mut catalog = HashMap::new();
        for (schema, name, volatile) in rows {
            let name = name.to_lowercase();
            let qualified = format!("{}.{name}", schema.to_lowercase());
            *catalog.entry(qualified).or_insert(false) |= volatile;
            *catalog.entry(name).or_insert(false) |= volatile;
        }
        FunctionVolatility {
            catalog: Some(catalog),
            overrides: HashMap::new(),
            generation: next_generation(),
        }
    }

    /// Reads every function of the connected database's `pg_proc` (a few thousand rows).
    pub async fn load(
        client: &tokio_postgres::Client,
    ) -> Result<FunctionVolatility, VolatilityError> {
        let rows = client
            .query(
                "SELECT n.nspname::text, p.proname::text, bool_or(p.provolatile = 'v') \
                 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 GROUP BY 1, 2",
                &[],
            )
            .await?;
        let mut decoded = Vec::with_capacity(rows.len());
        for row in &rows {
            decoded.push((
                row.try_get::<_, String>(0)?,
                row.try_get::<_, String>(1)?,
                row.try_get::<_, bool>(2)?,
            ));
        }
        Ok(FunctionVolatility::from_catalog(
            decoded.iter().map(|(s, n, v)| (s.as_str(), n.as_str(), *v)),
        ))
    }

    /// Configuration overrides (`name` or `schema.name`); `not_volatile` wins when a name is in both lists, since
    /// it is the deliberate exception. A volatile `schema.name` also marks the bare name, because an unqualified
    /// call may resolve to it.
    pub fn with_overrides(
        mut self,
        volatile: &[String],
        not_volatile: &[String],
    ) -> FunctionVolatility {
        for name in volatile {
            let name = name.trim().to_lowercase();
            if let Some((_, bare)) = name.rsplit_once('.') {
                self.overrides.insert(bare.to_owned(), true);
            }
            self.overrides.insert(name, true);
        }
        for name in not_volatile {
            self.overrides.insert(name.trim().to_lowercase(), false);
        }
        self.generation = next_generation();
        self
    }

    /// Distinct for every table built; analyses cached under another generation are stale.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_loaded(&self) -> bool {
        self.catalog.is_some()
    }

    /// Whether calling `schema.name(...)` (schema optional; both lower-case) makes a statement a write.
    pub fn call(&self, schema: Option<&str>, name: &str) -> CallVerdict {
        if PRIMARY_ONLY.contains(&name) {
            return Some("sequence or transaction-id function");
        }
        let qualified = schema.map(|s| format!("{s}.{name}"));
        let override_of = |key: &str| self.overrides.get(key).copied();
        let overridden = qualified
            .as_deref()
            .and_then(override_of)
            .or_else(|| override_of(name));
        if let Some(volatile) = overridden {
            return volatile.then_some("function configured as volatile");
        }
        if schema.is_none() && SYNTAX_FUNCTIONS.contains(&name) {
            return None;
        }
        match &self.catalog {
            Some(catalog) => match catalog.get(qualified.as_deref().unwrap_or(name)) {
                Some(true) => Some("volatile function"),
                Some(false) => None,
                None => Some("function not in the catalog"),
            },
            None => {
                let builtin = matches!(schema, None | Some("pg_catalog"))
                    && KNOWN_NOT_VOLATILE.binary_search(&name).is_ok();
                (!builtin).then_some("function volatility not loaded")
            }
        }
    }
}

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_is_sorted() {
        assert!(KNOWN_NOT_VOLATILE.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn unknown_trusts_only_builtins() {
        let f = FunctionVolatility::unknown();
        assert!(!f.is_loaded());
        assert_eq!(f.call(None, "lower"), None);
        assert_eq!(f.call(Some("pg_catalog"), "now"), None);
        assert_eq!(f.call(None, "coalesce"), None);
        assert!(f.call(Some("public"), "lower").is_some());
        assert!(f.call(None, "random").is_some());
        assert!(f.call(None, "my_func").is_some());
        assert!(f.call(None, "nextval").is_some());
    }

    #[test]
    fn catalog_folds_overloads_and_schemas() {
        let f = FunctionVolatility::from_catalog([
            ("pg_catalog", "random", true),
            ("pg_catalog", "lower", false),
            ("app", "f", false),
            ("app", "f", true), // an overload
            ("app", "g", false),
            ("other", "g", true),
        ]);
        assert!(f.call(None, "random").is_some());
        assert_eq!(f.call(None, "lower"), None);
        assert_eq!(f.call(Some("pg_catalog"), "lower"), None);
        assert!(f.call(Some("app"), "f").is_some());
        assert_eq!(f.call(Some("app"), "g"), None);
        assert!(f.call(Some("other"), "g").is_some());
        assert!(f.call(None, "g").is_some(), "bare name: any schema");
        assert_eq!(f.call(None, "missing"), Some("function not in the catalog"));
        assert_eq!(f.call(None, "current_timestamp"), None);
        assert!(f.call(None, "nextval").is_some());
    }

    #[test]
    fn overrides_win_and_bump_the_generation() {
        let f = FunctionVolatility::from_catalog([
            ("app", "audit", false),
            ("app", "cached_lookup", true),
        ]);
        let before = f.generation();
        let f = f.with_overrides(
            &["app.audit".into(), "nextval".into()],
            &["Cached_Lookup".into(), "nextval".into()],
        );
        assert_ne!(f.generation(), before);
        assert!(f.call(Some("app"), "audit").is_some());
        assert!(f.call(None, "audit").is_some());
        assert_eq!(f.call(Some("app"), "cached_lookup"), None);
        assert_eq!(f.call(None, "cached_lookup"), None);
        assert!(
            f.call(None, "nextval").is_some(),
            "sequences stay on the primary"
        );
    }
}
