//! Conditions reduced to key pins: `key = v`, `IN`, `= ANY`, `OR`/`AND` of them, key equalities between tables
//! (ties), and `key IN (SELECT key ...)` semi-joins.

use super::*;

impl<'a, 's> Walker<'a, 's> {
    /// Reduces a condition to key pins; `conj` says whether it is in a conjunctive position of its block (where a
    /// key equality ties two tables' rows).
    pub(super) fn cond(&mut self, e: &'a Expr, conj: bool) -> Cond {
        match e {
            Expr::Nested(inner) => self.cond(inner, conj),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                let l = self.cond(left, conj);
                let r = self.cond(right, conj);
                and(l, r)
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Or,
                right,
            } => {
                let l = self.cond(left, false);
                let r = self.cond(right, false);
                or(l, r)
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            }
            | Expr::IsNotDistinctFrom(left, right) => self.equality(left, right, conj),
            Expr::InList {
                expr,
                list,
                negated: false,
            } => self.in_list(expr, list),
            Expr::BinaryOp {
                left,
                op:
                    op @ (BinaryOperator::Gt
                    | BinaryOperator::GtEq
                    | BinaryOperator::Lt
                    | BinaryOperator::LtEq),
                right,
            } => {
                self.visit(e);
                self.comparison(left, op, right)
            }
            Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } => {
                self.visit(e);
                match (self.ranged_key(expr, low), self.ranged_key(expr, high)) {
                    (Some((x, low)), Some((_, high))) => Cond::Range(
                        x,
                        KeyRange {
                            lower: vec![Bound {
                                key: low,
                                inclusive: true,
                            }],
                            upper: vec![Bound {
                                key: high,
                                inclusive: true,
                            }],
                        },
                    ),
                    _ => Cond::True,
                }
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => match strip_nested(right) {
                Expr::Array(a) => self.in_list(left, &a.elem),
                Expr::Subquery(q) => {
                    let x = self.key_column(left);
                    if x.is_none() {
                        self.visit(left);
                    }
                    self.key_subquery(x, q, true)
                }
                _ => {
                    self.visit(left);
                    self.visit(right);
                    Cond::True
                }
            },
            Expr::InSubquery {
                expr,
                subquery,
                negated,
            } => {
                let x = self.key_column(expr);
                if x.is_none() {
                    self.visit(expr);
                }
                self.key_subquery(x, subquery, !*negated)
            }
            _ => {
                self.visit(e);
                Cond::True
            }
        }
    }

    pub(super) fn equality(&mut self, l: &'a Expr, r: &'a Expr, conj: bool) -> Cond {
        match (self.key_column(l), self.key_column(r)) {
            (Some(x), Some(y)) => {
                if conj {
                    self.frame().ties.push((x, y));
                }
                Cond::True
            }
            (Some(x), None) => self.key_equals(x, r),
            (None, Some(y)) => self.key_equals(y, l),
            (None, None) => {
                self.visit(l);
                self.visit(r);
                Cond::True
            }
        }
    }

    /// `key > v`, `v <= key`...: a range on an integer or uuid key (the caller has visited both sides).
    pub(super) fn comparison(&mut self, l: &'a Expr, op: &BinaryOperator, r: &'a Expr) -> Cond {
        // Written with the key on the left: `5 < key` is `key > 5`.
        let (x, bound, op) = match (self.ranged_key(l, r), self.ranged_key(r, l)) {
            (Some((x, k)), _) => (x, k, op.clone()),
            (None, Some((x, k))) => (
                x,
                k,
                match op {
                    BinaryOperator::Gt => BinaryOperator::Lt,
                    BinaryOperator::GtEq => BinaryOperator::LtEq,
                    BinaryOperator::Lt => BinaryOperator::Gt,
                    _ => BinaryOperator::GtEq,
                },
            ),
            (None, None) => return Cond::True,
        };
        let inclusive = matches!(op, BinaryOperator::GtEq | BinaryOperator::LtEq);
        let b = vec![Bound {
            key: bound,
            inclusive,
        }];
        let range = match op {
            BinaryOperator::Gt | BinaryOperator::GtEq => KeyRange {
                lower: b,
                upper: Vec::new(),
            },
            _ => KeyRange {
                lower: Vec::new(),
                upper: b,
            },
        };
        Cond::Range(x, range)
    }

    /// `key` is a bare key column of an integer or uuid key and `value` a key value of its type: the pair a range
    /// condition needs. Text keys never qualify (collation order is not the map's byte order).
    fn ranged_key(&self, key: &Expr, value: &Expr) -> Option<(usize, KeyRef)> {
        let x = self.key_column(key)?;
        let ty = self.insts[x].table.key_type;
        if ty == KeyType::Text {
            return None;
        }
        Some((x, key_ref(value, ty)?))
    }

    /// `key = other`.
    pub(super) fn key_equals(&mut self, x: usize, other: &'a Expr) -> Cond {
        if let Some(k) = key_ref(other, self.insts[x].table.key_type) {
            return Cond::Pin(x, vec![k]);
        }
        match strip_nested(other) {
            Expr::Subquery(q) => self.key_subquery(Some(x), q, true),
            _ => {
                self.visit(other);
                Cond::True
            }
        }
    }

    pub(super) fn in_list(&mut self, expr: &'a Expr, list: &'a [Expr]) -> Cond {
        if let Some(x) = self.key_column(expr) {
            let ty = self.insts[x].table.key_type;
            let keys: Option<Vec<KeyRef>> = list.iter().map(|e| key_ref(e, ty)).collect();
            if let Some(keys) = keys.filter(|k| !k.is_empty()) {
                return Cond::Pin(x, keys);
            }
        } else {
            self.visit(expr);
        }
        for e in list {
            self.visit(e);
        }
        Cond::True
    }

    /// `key IN (SELECT k ...)` / `key = (SELECT k ...)`: when the subquery outputs a co-located key, its rows for a
    /// given outer row sit on that row's shard (a semi-join on the key), and its key pins become the outer key's.
    pub(super) fn key_subquery(&mut self, x: Option<usize>, q: &'a Query, pins: bool) -> Cond {
        let p = self.query(q, Some(0));
        let (Some(x), Projected::Key(y)) = (x, p) else {
            return Cond::True;
        };
        if !single_column(q) {
            return Cond::True;
        }
        let keys = self.constraint_of(y);
        self.attach(y, x);
        match keys {
            Some(keys) if pins && self.insts[y].table.colocated_with(&self.insts[x].table) => {
                Cond::Pin(x, keys)
            }
            _ => Cond::True,
        }
    }

    /// The sharded-table occurrence whose shard key this expression is, if it is a bare key column.
    pub(super) fn key_column(&self, e: &Expr) -> Option<usize> {
        match e {
            Expr::Nested(inner) => self.key_column(inner),
            // Unqualified: the one sharded table of the innermost block with a key of that name (several count as
            // one when already tied by key equality, as `JOIN ... USING (key)` merges them into one column).
            Expr::Identifier(col) => {
                let f = self.frames.last()?;
                let mut found = None;
                for inst in f.items.iter().filter_map(|it| it.inst) {
                    if !ident_is(col, &self.insts[inst].table.key) {
                        continue;
                    }
                    match found {
                        None => found = Some(inst),
                        Some(first)
                            if f.ties.contains(&(first, inst))
                                || f.ties.contains(&(inst, first)) => {}
                        Some(_) => return None,
                    }
                }
                found
            }
            // Qualified: the innermost table or alias of that name decides.
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let col = &parts[parts.len() - 1];
                let qual = &parts[parts.len() - 2];
                for f in self.frames.iter().rev() {
                    if let Some(it) = f
                        .items
                        .iter()
                        .find(|it| it.name.is_some_and(|n| same_ident(n, qual)))
                    {
                        let inst = it.inst?;
                        return ident_is(col, &self.insts[inst].table.key).then_some(inst);
                    }
                }
                None
            }
            _ => None,
        }
    }
}
