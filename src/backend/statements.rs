//! Which prepared statements exist on one server connection. Client statements are renamed to a name derived from
//! their text (see `frontend::prepared`), so two clients preparing the same text share one server-side statement. The
//! cache is bounded: past its capacity the least recently used statement is closed on the server.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

use crate::frontend::prepared::StatementDef;

/// Keys here are already xxh3 hashes of the statement text: hashing them again would be wasted work.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by statement hashes.
pub type HashKeyed<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

/// What a server's cache says of a statement definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Prepared (or being prepared) on this server under its name, with this very text and parameter types.
    Hit,
    Miss,
    /// The name is taken on this server by another text whose hash is the same (a collision, possibly crafted: the
    /// hash is not cryptographic). The entry is forgotten; the caller must close the name before preparing it.
    Taken,
}

#[derive(Debug)]
struct Entry {
    tick: u64,
    /// The server answered its Parse with ParseComplete (else the Parse is still on its way).
    confirmed: bool,
    /// The full definition: a hit is only ever a hit on equal text, never on an equal hash alone.
    def: Arc<StatementDef>,
}

#[derive(Debug, Default)]
pub struct StatementCache {
    capacity: usize,
    tick: u64,
    entries: HashKeyed<Entry>,
}

impl StatementCache {
    pub fn new(capacity: usize) -> StatementCache {
        StatementCache {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashKeyed::default(),
        }
    }

    /// Whether `def` is (or is being) prepared on this server; marks it used.
    pub fn touch(&mut self, def: &StatementDef) -> Lookup {
        self.tick += 1;
        match self.entries.get_mut(&def.hash) {
            Some(e) if e.def.same_as(def) => {
                e.tick = self.tick;
                Lookup::Hit
            }
            Some(_) => {
                self.entries.remove(&def.hash);
                Lookup::Taken
            }
            None => Lookup::Miss,
        }
    }

    /// True once the server answered the statement's Parse with ParseComplete.
    pub fn is_confirmed(&self, hash: u64) -> bool {
        self.entries.get(&hash).is_some_and(|e| e.confirmed)
    }

    /// The server answered the statement's Parse with ParseComplete; returns its definition.
    pub fn confirm(&mut self, hash: u64) -> Option<Arc<StatementDef>> {
        let e = self.entries.get_mut(&hash)?;
        e.confirmed = true;
        Some(Arc::clone(&e.def))
    }

    /// Records a statement about to be prepared. Returns the statement to close first if the cache is full.
    pub fn insert(&mut self, def: &Arc<StatementDef>) -> Option<u64> {
        self.tick += 1;
        let hash = def.hash;
        let evicted = if self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            let victim = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.tick)
                .map(|(h, _)| *h);
            if let Some(v) = victim {
                self.entries.remove(&v);
            }
            victim
        } else {
            None
        };
        let confirmed = self
            .entries
            .get(&hash)
            .is_some_and(|e| e.confirmed && e.def.same_as(def));
        self.entries.insert(
            hash,
            Entry {
                tick: self.tick,
                confirmed,
                def: Arc::clone(def),
            },
        );
        evicted
    }

    /// Forgets a statement whose Parse failed or was never executed by the server.
    pub fn remove(&mut self, hash: u64) {
        self.entries.remove(&hash);
    }

    /// After DISCARD ALL / DEALLOCATE ALL on the server.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Statement texts some server of one pool (one database and user) has accepted in a Parse, so a later Parse of the
/// same text by a client of that pool can be answered without a server. Scoped to the pool: a text that parses for
/// one user or database may not for another. Compared by text, never by hash alone; bounded.
#[derive(Debug)]
pub struct KnownStatements {
    capacity: usize,
    map: RwLock<HashKeyed<Arc<StatementDef>>>,
}

impl Default for KnownStatements {
    fn default() -> Self {
        KnownStatements::new(MAX_KNOWN_STATEMENTS)
    }
}

/// How many distinct statement texts a pool remembers (a few MB at most for typical statements). Past it, one is
/// forgotten per new one: a forgotten text only costs its next Parse a round trip to a server.
pub const MAX_KNOWN_STATEMENTS: usize = 10_000;

impl KnownStatements {
    pub fn new(capacity: usize) -> KnownStatements {
        KnownStatements {
            capacity: capacity.max(1),
            map: RwLock::new(HashKeyed::default()),
        }
    }

    pub fn knows(&self, def: &StatementDef) -> bool {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&def.hash)
            .is_some_and(|known| known.same_as(def))
    }

    pub fn remember(&self, def: Arc<StatementDef>) {
        if self.knows(&def) {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.capacity && !map.contains_key(&def.hash) {
            if let Some(victim) = map.keys().next().copied() {
                map.remove(&victim);
            }
        }
        map.insert(def.hash, def);
    }

    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(sql: &str) -> Arc<StatementDef> {
        Arc::new(StatementDef::new(sql.as_bytes(), b""))
    }

    /// A definition with `other`'s hash but its own text: what a hash collision looks like.
    fn colliding(other: &StatementDef, sql: &str) -> Arc<StatementDef> {
        let mut d = StatementDef::new(sql.as_bytes(), b"");
        d.hash = other.hash;
        d.server_name = other.server_name.clone();
        Arc::new(d)
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut c = StatementCache::new(2);
        let (a, b, d) = (def("SELECT 1"), def("SELECT 2"), def("SELECT 3"));
        assert_eq!(c.insert(&a), None);
        assert_eq!(c.insert(&b), None);
        assert_eq!(c.touch(&a), Lookup::Hit);
        assert_eq!(c.insert(&d), Some(b.hash));
        assert_eq!(
            (c.touch(&a), c.touch(&d), c.touch(&b)),
            (Lookup::Hit, Lookup::Hit, Lookup::Miss)
        );
        c.remove(d.hash);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn statements_are_pending_until_confirmed() {
        let mut c = StatementCache::new(4);
        let a = def("SELECT 1");
        c.insert(&a);
        assert!(c.touch(&a) == Lookup::Hit && !c.is_confirmed(a.hash));
        assert_eq!(c.confirm(a.hash).as_deref(), Some(&*a));
        assert!(c.is_confirmed(a.hash));
        c.remove(a.hash);
        assert!(!c.is_confirmed(a.hash) && c.touch(&a) == Lookup::Miss);
    }

    #[test]
    fn an_equal_hash_with_another_text_is_never_a_hit() {
        let mut c = StatementCache::new(4);
        let mine = def("SELECT balance FROM accounts WHERE id = $1");
        let theirs = colliding(&mine, "DELETE FROM accounts");
        c.insert(&mine);
        c.confirm(mine.hash);
        assert_eq!(c.touch(&theirs), Lookup::Taken);
        // Forgotten: the owner's next use prepares its own text again.
        assert_eq!(c.touch(&mine), Lookup::Miss);
        c.insert(&theirs);
        assert!(
            !c.is_confirmed(theirs.hash),
            "confirmation belonged to the other text"
        );

        let known = KnownStatements::new(2);
        known.remember(Arc::clone(&mine));
        assert!(known.knows(&mine) && !known.knows(&theirs));
    }

    #[test]
    fn known_statements_are_bounded() {
        let known = KnownStatements::new(3);
        for i in 0..10 {
            known.remember(def(&format!("SELECT {i}")));
        }
        assert_eq!(known.len(), 3);
        assert!(known.knows(&def("SELECT 9")));
    }
}
