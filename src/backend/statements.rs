//! Which prepared statements exist on one server connection. Client statements are renamed to a name derived from
//! their text (see `frontend::prepared`), so two clients preparing the same text share one server-side statement. The
//! cache is bounded: past its capacity the least recently used statement is closed on the server.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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

#[derive(Debug, Default)]
pub struct StatementCache {
    capacity: usize,
    tick: u64,
    /// Statement hash -> last use tick, and whether the server confirmed it (ParseComplete) or its Parse is still
    /// on its way.
    entries: HashKeyed<(u64, bool)>,
}

impl StatementCache {
    pub fn new(capacity: usize) -> StatementCache {
        StatementCache {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashKeyed::default(),
        }
    }

    /// True if the statement is (or is being) prepared on this server; marks it used.
    pub fn touch(&mut self, hash: u64) -> bool {
        self.tick += 1;
        match self.entries.get_mut(&hash) {
            Some((t, _)) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// True once the server answered the statement's Parse with ParseComplete.
    pub fn is_confirmed(&self, hash: u64) -> bool {
        self.entries.get(&hash).is_some_and(|(_, c)| *c)
    }

    /// The server answered the statement's Parse with ParseComplete.
    pub fn confirm(&mut self, hash: u64) {
        if let Some((_, c)) = self.entries.get_mut(&hash) {
            *c = true;
        }
    }

    /// Records a statement about to be prepared. Returns the statement to close first if the cache is full.
    pub fn insert(&mut self, hash: u64) -> Option<u64> {
        self.tick += 1;
        let evicted = if self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            let victim = self
                .entries
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(h, _)| *h);
            if let Some(v) = victim {
                self.entries.remove(&v);
            }
            victim
        } else {
            None
        };
        let confirmed = self.entries.get(&hash).is_some_and(|(_, c)| *c);
        self.entries.insert(hash, (self.tick, confirmed));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut c = StatementCache::new(2);
        assert_eq!(c.insert(1), None);
        assert_eq!(c.insert(2), None);
        assert!(c.touch(1));
        assert_eq!(c.insert(3), Some(2));
        assert!(c.touch(1) && c.touch(3) && !c.touch(2));
        c.remove(3);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn statements_are_pending_until_confirmed() {
        let mut c = StatementCache::new(4);
        c.insert(1);
        assert!(c.touch(1) && !c.is_confirmed(1));
        c.confirm(1);
        assert!(c.is_confirmed(1));
        c.remove(1);
        assert!(!c.is_confirmed(1) && !c.touch(1));
    }
}
