//! Statement text -> classification, shared by all sessions. Applications send the same few hundred statement texts
//! over and over (the ORM's queries with `$n` parameters, or literal-free simple queries), and a parse costs
//! micro-seconds where a lookup costs tens of nanoseconds.
//!
//! Keyed by xxh3 of the text, but the text is stored and compared on every hit, so a hash collision is a miss,
//! never a wrong answer. Memory is bounded by an entry count and a byte budget; eviction is CLOCK (second chance),
//! O(1) amortised. Lock striping: the hash picks one of N independently locked shards, so sessions on different
//! threads rarely wait on each other. Each shard remembers the `FunctionVolatility` generation its entries were
//! computed under and drops them when a newer table arrives (catalog reload or new overrides).
//!
//! The machinery is generic ([`StripedCache`]): the sharding router keeps its shard analyses in one too.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use xxhash_rust::xxh3::xxh3_64;

use super::classify::{classify, Analysis, FunctionVolatility};

/// Defaults sized for "every distinct statement of a few applications".
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
pub const DEFAULT_MAX_BYTES: usize = 32 * 1024 * 1024;
const SHARDS: usize = 16;
/// Charged per entry on top of its text: slot, index entry, `Analysis` behind its `Arc`.
const ENTRY_OVERHEAD: usize = 160;

pub struct AnalysisCache {
    cache: StripedCache<Analysis>,
}

/// Text -> `Arc<V>`, lock-striped, bounded, CLOCK-evicted, with a generation that invalidates: the machinery of
/// [`AnalysisCache`], shared with the sharding router's cache of shard analyses.
pub struct StripedCache<V> {
    shards: Box<[Stripe<V>]>,
}

/// One shard per cache line pair, so threads locking neighbouring shards do not bounce a shared line.
#[repr(align(128))]
struct Stripe<V>(Mutex<Shard<V>>);

/// Counters summed over shards, for SHOW and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

impl Default for AnalysisCache {
    fn default() -> AnalysisCache {
        AnalysisCache::new(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }
}

impl AnalysisCache {
    /// At most `max_entries` analyses and about `max_bytes` of text plus overhead (split evenly over the shards).
    pub fn new(max_entries: usize, max_bytes: usize) -> AnalysisCache {
        AnalysisCache::with_shards(max_entries, max_bytes, SHARDS)
    }

    /// As `new` with a chosen number of lock shards (at least 1); for measuring lock contention.
    pub fn with_shards(max_entries: usize, max_bytes: usize, shards: usize) -> AnalysisCache {
        AnalysisCache {
            cache: StripedCache::with_shards(max_entries, max_bytes, shards),
        }
    }

    /// The analysis of `sql`, from the cache or classified now (and remembered).
    pub fn analyse(&self, sql: &str, functions: &FunctionVolatility) -> Arc<Analysis> {
        self.cache
            .get_or_insert_with(sql, functions.generation(), || classify(sql, functions))
    }

    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

impl<V> StripedCache<V> {
    /// At most `max_entries` values and about `max_bytes` of text plus overhead (split evenly over the shards).
    pub fn new(max_entries: usize, max_bytes: usize) -> StripedCache<V> {
        StripedCache::with_shards(max_entries, max_bytes, SHARDS)
    }

    /// As `new` with a chosen number of lock shards (at least 1).
    pub fn with_shards(max_entries: usize, max_bytes: usize, shards: usize) -> StripedCache<V> {
        let n = shards.max(1);
        let shards = (0..n)
            .map(|_| {
                Stripe(Mutex::new(Shard {
                    max_entries: max_entries.div_ceil(n),
                    max_bytes: max_bytes.div_ceil(n),
                    ..Shard::default()
                }))
            })
            .collect();
        StripedCache { shards }
    }

    /// The value cached for `text` under `generation`, or `make()` (run outside any lock, then remembered). A value
    /// made under an older generation than a shard has seen is returned but not kept.
    pub fn get_or_insert_with(
        &self,
        text: &str,
        generation: u64,
        make: impl FnOnce() -> V,
    ) -> Arc<V> {
        let hash = xxh3_64(text.as_bytes());
        let shard = self.shard(hash);
        if let Some(hit) = shard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash, text, generation)
        {
            return hit;
        }
        // Compute outside the lock: a parse takes microseconds and other sessions share the shard.
        let value = Arc::new(make());
        shard.lock().unwrap_or_else(PoisonError::into_inner).insert(
            hash,
            text,
            generation,
            Arc::clone(&value),
        );
        value
    }

    pub fn stats(&self) -> CacheStats {
        let mut total = CacheStats::default();
        for shard in self.shards.iter() {
            let s = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            total.entries += s.slots.len();
            total.bytes += s.bytes;
            total.hits += s.hits;
            total.misses += s.misses;
            total.evictions += s.evictions;
        }
        total
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard<V>> {
        // High bits pick the shard; the shard's map uses the low bits.
        &self.shards[(hash >> 32) as usize % self.shards.len()].0
    }
}

struct Shard<V> {
    max_entries: usize,
    max_bytes: usize,
    generation: u64,
    index: HashMap<u64, usize, BuildHasherDefault<PrehashedKey>>,
    slots: Vec<Slot<V>>,
    /// The CLOCK hand: next slot considered for eviction.
    hand: usize,
    bytes: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
}

struct Slot<V> {
    hash: u64,
    text: Box<str>,
    analysis: Arc<V>,
    /// Set on every hit, cleared as the hand passes: an entry is evicted only if unused for a whole turn.
    referenced: bool,
}

fn cost(text: &str) -> usize {
    text.len() + ENTRY_OVERHEAD
}

// Not derived: a derive would demand `V: Default`.
impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard {
            max_entries: 0,
            max_bytes: 0,
            generation: 0,
            index: HashMap::default(),
            slots: Vec::new(),
            hand: 0,
            bytes: 0,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }
}

impl<V> Shard<V> {
    fn get(&mut self, hash: u64, text: &str, generation: u64) -> Option<Arc<V>> {
        self.adopt(generation);
        let found = self
            .index
            .get(&hash)
            .filter(|_| generation == self.generation)
            .and_then(|&i| self.slots.get_mut(i))
            .filter(|slot| *slot.text == *text);
        match found {
            Some(slot) => {
                slot.referenced = true;
                self.hits += 1;
                Some(Arc::clone(&slot.analysis))
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    fn insert(&mut self, hash: u64, text: &str, generation: u64, analysis: Arc<V>) {
        self.adopt(generation);
        // An analysis made under an older table than this shard holds is stale: use it once, do not keep it.
        let cost = cost(text);
        if generation != self.generation || cost > self.max_bytes || self.max_entries == 0 {
            return;
        }
        let slot = Slot {
            hash,
            text: text.into(),
            analysis,
            referenced: false,
        };
        if let Some(&i) = self.index.get(&hash) {
            // Same text computed concurrently by another session, or a colliding text: replace.
            if let Some(old) = self.slots.get_mut(i) {
                self.bytes = self.bytes - cost_of(old) + cost;
                *old = slot;
                return;
            }
        }
        while !self.slots.is_empty()
            && (self.slots.len() >= self.max_entries || self.bytes + cost > self.max_bytes)
        {
            self.evict_one();
        }
        self.index.insert(hash, self.slots.len());
        self.slots.push(slot);
        self.bytes += cost;
    }

    /// Entries computed under an older function table are dropped when a newer one is first seen.
    fn adopt(&mut self, generation: u64) {
        if generation > self.generation {
            self.generation = generation;
            self.index.clear();
            self.slots.clear();
            self.bytes = 0;
            self.hand = 0;
        }
    }

    fn evict_one(&mut self) {
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let Some(slot) = self.slots.get_mut(self.hand) else {
                return;
            };
            if slot.referenced {
                slot.referenced = false;
                self.hand += 1;
                continue;
            }
            let victim = self.slots.swap_remove(self.hand);
            self.index.remove(&victim.hash);
            self.bytes -= cost_of(&victim);
            self.evictions += 1;
            if let Some(moved) = self.slots.get(self.hand) {
                self.index.insert(moved.hash, self.hand);
            }
            return;
        }
    }
}

fn cost_of<V>(slot: &Slot<V>) -> usize {
    cost(&slot.text)
}

/// The keys are already xxh3 hashes: hashing them again would only cost time.
#[derive(Default)]
struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if a key type other than u64 were used; stay correct anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::Access;

    #[test]
    fn hits_return_the_same_analysis() {
        let cache = AnalysisCache::default();
        let f = FunctionVolatility::unknown();
        let a = cache.analyse("SELECT * FROM t WHERE id = $1", &f);
        let b = cache.analyse("SELECT * FROM t WHERE id = $1", &f);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.access, Access::Read);
        let c = cache.analyse("UPDATE t SET a = 1", &f);
        assert_eq!(c.access, Access::Write);
        let s = cache.stats();
        assert_eq!((s.entries, s.hits, s.misses), (2, 1, 2));
    }

    #[test]
    fn a_colliding_hash_is_a_miss_not_a_wrong_answer() {
        let f = FunctionVolatility::unknown();
        let mut shard = Shard {
            max_entries: 10,
            max_bytes: 1 << 20,
            ..Shard::default()
        };
        let g = f.generation();
        let read = Arc::new(classify("SELECT 1", &f));
        shard.insert(7, "SELECT 1", g, read);
        assert!(
            shard.get(7, "DELETE FROM t", g).is_none(),
            "same hash, other text"
        );
        let write = Arc::new(classify("DELETE FROM t", &f));
        shard.insert(7, "DELETE FROM t", g, write);
        assert_eq!(shard.slots.len(), 1);
        assert_eq!(
            shard.get(7, "DELETE FROM t", g).map(|a| a.access),
            Some(Access::Write)
        );
        assert!(shard.get(7, "SELECT 1", g).is_none());
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let f = FunctionVolatility::unknown();
        let cache = AnalysisCache::new(160, 1 << 30);
        for i in 0..5_000 {
            cache.analyse(&format!("SELECT {i}"), &f);
        }
        let s = cache.stats();
        assert!(s.entries <= 160, "{s:?}");
        assert!(s.entries >= 100, "shards fill up: {s:?}");
        assert_eq!(s.evictions as usize, 5_000 - s.entries);

        let cache = AnalysisCache::new(1_000_000, 16 * 4096);
        let long = "x".repeat(3000);
        for i in 0..1_000 {
            cache.analyse(&format!("SELECT '{long}', {i}"), &f);
        }
        let s = cache.stats();
        assert!(s.bytes <= 16 * 4096, "{s:?}");
        assert!(s.entries > 0);
        // Larger than a shard's whole budget: classified, never stored.
        let huge = format!("SELECT '{}'", "x".repeat(8192));
        assert_eq!(cache.analyse(&huge, &f).access, Access::Read);
        assert_eq!(cache.stats().entries, s.entries);
    }

    #[test]
    fn clock_keeps_entries_in_use() {
        let f = FunctionVolatility::unknown();
        let g = f.generation();
        let mut shard = Shard {
            max_entries: 4,
            max_bytes: 1 << 20,
            ..Shard::default()
        };
        let hot = Arc::new(classify("SELECT hot", &f));
        shard.insert(1, "SELECT hot", g, hot);
        for i in 2..100u64 {
            assert!(
                shard.get(1, "SELECT hot", g).is_some(),
                "hot entry evicted at {i}"
            );
            let text = format!("SELECT {i}");
            let a = Arc::new(classify(&text, &f));
            shard.insert(i, &text, g, a);
            assert!(shard.slots.len() <= 4);
            // The index always points at the right slot.
            for (pos, slot) in shard.slots.iter().enumerate() {
                assert_eq!(shard.index.get(&slot.hash), Some(&pos));
            }
        }
    }

    #[test]
    fn a_new_function_table_invalidates() {
        let cache = AnalysisCache::default();
        let unknown = FunctionVolatility::unknown();
        let sql = "SELECT my_func(1)";
        assert_eq!(cache.analyse(sql, &unknown).access, Access::Write);
        let loaded = FunctionVolatility::from_catalog([("public", "my_func", false)]);
        assert_eq!(cache.analyse(sql, &loaded).access, Access::Read);
        assert_eq!(cache.analyse(sql, &loaded).access, Access::Read);
        // A session still holding the old table gets a correct answer for it, and the cache keeps the new one.
        assert_eq!(cache.analyse(sql, &unknown).access, Access::Write);
        assert_eq!(cache.analyse(sql, &loaded).access, Access::Read);
        let s = cache.stats();
        assert_eq!((s.entries, s.hits), (1, 2));
    }

    #[test]
    fn shared_across_threads() {
        let cache = Arc::new(AnalysisCache::new(64, 1 << 20));
        let f = Arc::new(FunctionVolatility::unknown());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (cache, f) = (Arc::clone(&cache), Arc::clone(&f));
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let sql = format!("SELECT {}", (i * 7 + t) % 100);
                        assert_eq!(cache.analyse(&sql, &f).access, Access::Read);
                        let w = format!("DELETE FROM t{}", i % 50);
                        assert_eq!(cache.analyse(&w, &f).access, Access::Write);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = cache.stats();
        assert!(s.entries <= 64 + SHARDS, "{s:?}");
        assert_eq!(s.hits + s.misses, 16_000);
    }
}
