//! Blocks and units: a union-find over table occurrences tied by key equalities, the pins each block's conditions
//! put on its units, and the final verdict of [`Walker::finish`].

use super::*;

impl<'a, 's> Walker<'a, 's> {
    pub(super) fn frame(&mut self) -> &mut Frame<'a> {
        let n = self.frames.len();
        &mut self.frames[n.saturating_sub(1)]
    }

    pub(super) fn open_block(&mut self) -> usize {
        let depth = self
            .frames
            .last()
            .map_or(0, |f| self.blocks[f.block].depth + 1);
        let b = self.blocks.len();
        self.blocks.push(Block {
            depth,
            constraints: Vec::new(),
            needs_all: None,
            aggregates: false,
            grouped_by_key: false,
            opaque_input: false,
        });
        self.frames.push(Frame {
            block: b,
            items: Vec::new(),
            ties: Vec::new(),
            conds: Vec::new(),
        });
        b
    }

    /// Opens the block of a data-modifying statement, which is the main one unless it sits in the top query's CTEs.
    pub(super) fn open_main_block(&mut self) -> usize {
        let b = self.open_block();
        if self.main.is_none() {
            self.main = Some(b);
        }
        b
    }

    pub(super) fn new_inst(&mut self, table: Arc<ShardedTable>) -> usize {
        add_table(&mut self.out.sharded, &table);
        let block = self.frames.last().map_or(0, |f| f.block);
        let i = self.insts.len();
        self.insts.push(Inst { table, block });
        self.parent.push(i);
        i
    }

    /// Ends a block: ties its own tables, records what its conditions pin, then attaches its units to the outer
    /// tables they are tied to. Attaching comes last, and a unit attaches once, so a subquery never ties two outer
    /// tables to each other (under NOT EXISTS that would be wrong).
    pub(super) fn close_block(&mut self) {
        if self.frames.len() <= 1 {
            return;
        }
        let Some(f) = self.frames.pop() else { return };
        let b = f.block;
        for &(x, y) in &f.ties {
            if self.insts[x].block == b && self.insts[y].block == b {
                let (rx, ry) = (self.find(x), self.find(y));
                if rx != ry {
                    self.parent[ry] = rx;
                }
            }
        }
        let cond = match f.conds.len() {
            0 => Cond::True,
            1 => f.conds.into_iter().next().unwrap_or(Cond::True),
            _ => Cond::And(f.conds),
        };
        let constraints = self.eval(cond);
        self.blocks[b].constraints = constraints;
        for &(x, y) in &f.ties {
            match (self.insts[x].block == b, self.insts[y].block == b) {
                (true, false) => self.attach(x, y),
                (false, true) => self.attach(y, x),
                _ => {}
            }
        }
    }

    /// Makes the unit of `inner` (a table of a finished inner block) part of the unit of `outer`.
    pub(super) fn attach(&mut self, inner: usize, outer: usize) {
        let r = self.find(inner);
        if self.insts[r].block != self.insts[inner].block {
            return; // already attached
        }
        let o = self.find(outer);
        if o != r {
            self.parent[r] = o;
        }
    }

    pub(super) fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    pub(super) fn constraint_of(&mut self, i: usize) -> Option<Vec<KeyRef>> {
        let r = self.find(i);
        let b = self.insts[i].block;
        match self.limit_of(r, b)? {
            Limit::Values(v) => Some(v.clone()),
            Limit::Range(_) => None,
        }
    }

    /// The key range block-level conditions put on the unit of `i`, when that is a range.
    pub(super) fn range_of(&mut self, i: usize) -> Option<KeyRange> {
        let r = self.find(i);
        let b = self.insts[i].block;
        match self.limit_of(r, b)? {
            Limit::Range(range) => Some(range.clone()),
            Limit::Values(_) => None,
        }
    }

    fn limit_of(&self, root: usize, block: usize) -> Option<&Limit> {
        self.blocks[block]
            .constraints
            .iter()
            .find(|(u, _)| *u == root)
            .map(|(_, l)| l)
    }

    pub(super) fn eval(&mut self, c: Cond) -> Vec<(usize, Limit)> {
        match c {
            Cond::True => Vec::new(),
            Cond::Pin(i, keys) => vec![(self.find(i), Limit::Values(keys))],
            Cond::Range(i, range) => vec![(self.find(i), Limit::Range(range))],
            Cond::And(cs) => {
                let mut acc: Vec<(usize, Limit)> = Vec::new();
                for c in cs {
                    for (u, limit) in self.eval(c) {
                        match acc.iter_mut().find(|(v, _)| *v == u) {
                            Some((_, mine)) => {
                                let old = std::mem::replace(mine, Limit::Values(Vec::new()));
                                *mine = both(old, limit);
                            }
                            None => acc.push((u, limit)),
                        }
                    }
                }
                acc
            }
            Cond::Or(cs) => {
                let mut it = cs.into_iter();
                let mut acc = it.next().map(|c| self.eval(c)).unwrap_or_default();
                for c in it {
                    let next = self.eval(c);
                    acc.retain_mut(
                        |(u, mine)| match (mine, next.iter().find(|(v, _)| v == u)) {
                            (Limit::Values(mine), Some((_, Limit::Values(theirs)))) => {
                                // Duplicates are harmless (the router dedupes shards); skip them only when cheap.
                                let dedupe = mine.len() * theirs.len() <= QUADRATIC_LIMIT;
                                for k in theirs {
                                    if !dedupe || !mine.contains(k) {
                                        mine.push(k.clone());
                                    }
                                }
                                true
                            }
                            // A range on either side: the union is not worth describing; the unit goes unlimited.
                            _ => false,
                        },
                    );
                }
                acc
            }
        }
    }

    pub(in crate::sharding::keys) fn finish(mut self) -> StatementShards {
        // (root, first occurrence) per unit, in the order tables appear.
        let mut units: Vec<(usize, usize)> = Vec::new();
        for i in 0..self.insts.len() {
            let r = self.find(i);
            if !units.iter().any(|&(u, _)| u == r) {
                units.push((r, i));
            }
        }
        let mut values = Vec::new();
        let mut pinned = true;
        let mut ranges = Vec::new();
        let mut all_ranged = true;
        let mut root_blocks = Vec::with_capacity(units.len());
        let mut cross = self.unanalyzed.map(CrossShard::Unanalyzed);
        for &(u, first) in &units {
            // The unit's outermost block decides its keys (inner blocks only limit their own rows).
            let mut top = first;
            for i in 0..self.insts.len() {
                if self.find(i) != u {
                    continue;
                }
                if self.blocks[self.insts[i].block].depth < self.blocks[self.insts[top].block].depth
                {
                    top = i;
                }
                if cross.is_none() && !self.insts[i].table.colocated_with(&self.insts[first].table)
                {
                    cross = Some(CrossShard::DifferentMaps {
                        left: self.insts[first].table.name.clone(),
                        right: self.insts[i].table.name.clone(),
                    });
                }
            }
            root_blocks.push(self.insts[top].block);
            match self.constraint_of(top) {
                Some(keys) => values.extend(keys.into_iter().map(|key| KeyUse {
                    table: self.insts[first].table.clone(),
                    key,
                })),
                None => pinned = false,
            }
            match self.range_of(top) {
                Some(range) => ranges.push(RangeUse {
                    table: self.insts[first].table.clone(),
                    range,
                }),
                None => all_ranged = false,
            }
        }
        // One keyless unit runs on every shard: each block other than the main one must then work on per-shard rows.
        if let (None, false, [_]) = (&cross, pinned, units.as_slice()) {
            let root = root_blocks.first().copied();
            for (b, block) in self.blocks.iter().enumerate() {
                if Some(b) == self.main || !(Some(b) == root || block.opaque_input) {
                    continue;
                }
                if let Some(what) = block.needs_all_rows() {
                    cross = Some(CrossShard::NeedsAllRows(what));
                    break;
                }
            }
        }
        if cross.is_none() && units.len() > 1 {
            cross = Some(match self.needs_all_hint {
                Some(what) => CrossShard::NeedsAllRows(what),
                None => CrossShard::NotJoinedOnKey {
                    left: self.insts[units[0].1].table.name.clone(),
                    right: self.insts[units[1].1].table.name.clone(),
                },
            });
        }
        if let (None, Some(unsharded), Some(&(_, u))) = (&cross, &self.out.unsharded, units.first())
        {
            cross = Some(CrossShard::WithUnsharded {
                sharded: self.insts[u].table.name.clone(),
                unsharded: unsharded.clone(),
            });
        }
        if let (None, Some(reference)) = (&cross, &self.reference_written) {
            let other = units
                .first()
                .map(|&(_, u)| self.insts[u].table.name.clone())
                .or_else(|| self.out.unsharded.clone());
            if let Some(other) = other {
                cross = Some(CrossShard::ReferenceWriteReads {
                    reference: reference.clone(),
                    other,
                });
            }
        }
        self.out.keys = if pinned && !units.is_empty() && self.unanalyzed.is_none() {
            Keys::Values(values)
        } else {
            Keys::None
        };
        if !pinned && all_ranged && self.unanalyzed.is_none() {
            self.out.ranges = ranges;
        }
        self.out.cross_shard = cross;
        self.out
    }
}

const QUADRATIC_LIMIT: usize = 4096;

/// Two conditions on one unit both hold: keep the values both allow when both are literals; otherwise either side
/// is a correct (wider) answer, so keep the narrower.
fn intersect(a: Vec<KeyRef>, b: Vec<KeyRef>) -> Vec<KeyRef> {
    let literal = |v: &[KeyRef]| v.iter().all(|k| matches!(k, KeyRef::Literal(_)));
    // Quadratic, so only for lists of ordinary size: a hostile `IN` of thousands stays linear.
    if a.len() * b.len() <= QUADRATIC_LIMIT && literal(&a) && literal(&b) {
        let both: Vec<KeyRef> = a.into_iter().filter(|k| b.contains(k)).collect();
        if both.is_empty() {
            return vec![KeyRef::Literal(KeyValue::Null)];
        }
        return both;
    }
    if b.len() < a.len() {
        b
    } else {
        a
    }
}

/// Two limits on one unit both hold. Values ANDed with a range stay the values (a correct, wider answer than
/// filtering them, which parameters would not allow anyway).
fn both(a: Limit, b: Limit) -> Limit {
    match (a, b) {
        (Limit::Values(a), Limit::Values(b)) => Limit::Values(intersect(a, b)),
        (Limit::Values(v), Limit::Range(_)) | (Limit::Range(_), Limit::Values(v)) => {
            Limit::Values(v)
        }
        (Limit::Range(a), Limit::Range(b)) => Limit::Range(a.and(b)),
    }
}
