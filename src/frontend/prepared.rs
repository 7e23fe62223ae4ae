//! Protocol-level prepared statements across server switches. A client's named statement is renamed to a name
//! derived from its text and parameter types (`sp` + xxh3 hash), so every server connection can hold it under the
//! same name, clients preparing the same text share it, and a statement the client prepared on one server is prepared
//! lazily (an injected Parse) on whichever server the client gets next. The client's own names live only here.

use std::collections::HashMap;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

#[derive(Debug, PartialEq, Eq)]
pub struct StatementDef {
    pub hash: u64,
    pub server_name: Box<[u8]>,
    pub query: Box<[u8]>,
    pub param_types: Box<[u8]>,
}

impl StatementDef {
    pub fn new(query: &[u8], param_types: &[u8]) -> StatementDef {
        let mut key = Vec::with_capacity(query.len() + 1 + param_types.len());
        key.extend_from_slice(query);
        key.push(0);
        key.extend_from_slice(param_types);
        let hash = xxh3_64(&key);
        StatementDef {
            hash,
            server_name: format!("sp{hash:016x}").into_bytes().into_boxed_slice(),
            query: query.into(),
            param_types: param_types.into(),
        }
    }
}

impl StatementDef {
    /// Same text and parameter types (what a shared server-side statement must be), whatever the hashes say.
    pub fn same_as(&self, other: &StatementDef) -> bool {
        std::ptr::eq(self, other)
            || (self.query == other.query && self.param_types == other.param_types)
    }
}

/// One client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: HashMap<Box<[u8]>, Arc<StatementDef>>,
}

impl ClientStatements {
    /// Defines (or, as a lenient extension, redefines) a client statement name.
    pub fn define(&mut self, name: &[u8], query: &[u8], param_types: &[u8]) -> Arc<StatementDef> {
        if let Some(existing) = self.map.get(name) {
            if &*existing.query == query && &*existing.param_types == param_types {
                return Arc::clone(existing);
            }
        }
        let def = Arc::new(StatementDef::new(query, param_types));
        self.map.insert(name.into(), Arc::clone(&def));
        def
    }

    /// Whether `name` may be defined under a limit of `limit` names (0: none): a name already defined may always
    /// be redefined.
    pub fn admits(&self, name: &[u8], limit: usize) -> bool {
        limit == 0 || self.map.len() < limit || self.map.contains_key(name)
    }

    /// The error for a Parse of one name more than `limit` allows.
    pub fn limit_error(limit: usize) -> crate::error::ClientError {
        crate::error::ClientError::error(
            crate::error::sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "this client already holds {limit} prepared statements, the most max_prepared_statements_per_client \
                 allows; close (DEALLOCATE) some before preparing more"
            ),
        )
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<StatementDef>> {
        self.map.get(name)
    }

    pub fn close(&mut self, name: &[u8]) -> bool {
        self.map.remove(name).is_some()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_server_name() {
        let mut a = ClientStatements::default();
        let mut b = ClientStatements::default();
        let x = a.define(b"s1", b"SELECT $1", b"\x00\x00");
        let y = b.define(b"other", b"SELECT $1", b"\x00\x00");
        assert_eq!(x.server_name, y.server_name);
        let z = a.define(b"s2", b"SELECT $1", b"\x00\x01\x00\x00\x00\x17");
        assert_ne!(x.server_name, z.server_name);
        assert!(a.close(b"s1") && !a.close(b"s1"));
    }

    #[test]
    fn the_limit_admits_redefinitions_but_no_new_name() {
        let mut a = ClientStatements::default();
        a.define(b"s1", b"SELECT 1", b"");
        a.define(b"s2", b"SELECT 2", b"");
        assert!(!a.admits(b"s3", 2));
        assert!(a.admits(b"s2", 2));
        assert!(a.admits(b"s3", 3) && a.admits(b"s3", 0));
        a.close(b"s1");
        assert!(a.admits(b"s3", 2));
    }
}
