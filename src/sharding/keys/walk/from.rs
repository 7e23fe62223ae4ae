//! Walking FROM lists and write targets: table occurrences, joins and the key equalities USING/NATURAL imply, and
//! how a table name resolves (sharded, reference, unsharded, a CTE).

use super::*;

impl<'a, 's> Walker<'a, 's> {
    pub(super) fn table_with_joins(&mut self, twj: &'a TableWithJoins, pins_ok: bool) {
        let pins_ok = pins_ok && twj.joins.iter().all(|j| is_inner(&j.join_operator));
        let start = self.frame().items.len();
        self.table_factor(&twj.relation, pins_ok);
        self.joins(&twj.joins, start, pins_ok);
    }

    /// Joins after a first relation whose items start at `start` in the current frame.
    pub(super) fn joins(&mut self, joins: &'a [sqlparser::ast::Join], start: usize, pins_ok: bool) {
        let pins_ok = pins_ok && joins.iter().all(|j| is_inner(&j.join_operator));
        for j in joins {
            let right = self.frame().items.len();
            self.table_factor(&j.relation, pins_ok);
            let constraint = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::StraightJoin(c) => c,
                _ => {
                    self.unanalyzed("join kind");
                    continue;
                }
            };
            match constraint {
                // Key equalities in ON tie rows whatever the join kind (unmatched rows are NULL-extended, not fetched
                // from elsewhere); other conditions only limit rows of an inner join.
                JoinConstraint::On(e) => {
                    let c = self.cond(e, true);
                    if pins_ok {
                        self.frame().conds.push(c);
                    }
                }
                JoinConstraint::Using(cols) => {
                    for col in cols {
                        if let Some(col) = last_ident(col) {
                            self.tie_common(start, right, Some(col));
                        }
                    }
                }
                JoinConstraint::Natural => self.tie_common(start, right, None),
                JoinConstraint::None => {}
            }
        }
    }

    /// USING (col) / NATURAL: ties sharded tables on both sides whose key is that (or a shared) column name.
    pub(super) fn tie_common(&mut self, start: usize, right: usize, col: Option<&Ident>) {
        let f = self.frames.len() - 1;
        let key_of = |w: &Self, i: usize| -> Option<usize> {
            let inst = w.frames[f].items[i].inst?;
            let key = &w.insts[inst].table.key;
            match col {
                Some(c) if !ident_is(c, key) => None,
                _ => Some(inst),
            }
        };
        let end = self.frames[f].items.len();
        for r in right..end {
            let Some(y) = key_of(self, r) else { continue };
            for l in start..right {
                let Some(x) = key_of(self, l) else { continue };
                if self.insts[x].table.key == self.insts[y].table.key {
                    self.frames[f].ties.push((x, y));
                }
            }
        }
    }

    pub(super) fn table_factor(&mut self, tf: &'a TableFactor, pins_ok: bool) {
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let alias = alias.as_ref().map(|a| &a.name);
                if let Some(args) = args {
                    self.function_args(&args.args);
                    self.frame().items.push(Item {
                        name: alias,
                        inst: None,
                    });
                    return;
                }
                let inst = match self.resolve(name) {
                    Resolved::Sharded(t) => Some(self.new_inst(t)),
                    Resolved::Reference => {
                        self.out.reads_reference = true;
                        None
                    }
                    Resolved::Unsharded => {
                        self.note_unsharded(name);
                        None
                    }
                    Resolved::Cte => {
                        let b = self.frame().block;
                        self.blocks[b].opaque_input = true;
                        None
                    }
                    Resolved::Unknown => {
                        self.unanalyzed("table name");
                        None
                    }
                };
                self.frame().items.push(Item {
                    name: alias.or_else(|| last_ident(name)),
                    inst,
                });
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                self.query(subquery, None);
                let b = self.frame().block;
                self.blocks[b].opaque_input = true;
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name),
                    inst: None,
                });
            }
            TableFactor::Function { args, alias, .. } => {
                self.function_args(args);
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name),
                    inst: None,
                });
            }
            TableFactor::TableFunction { expr, alias } => {
                self.visit(expr);
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name),
                    inst: None,
                });
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                for e in array_exprs {
                    self.visit(e);
                }
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name),
                    inst: None,
                });
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    self.unanalyzed("aliased join");
                }
                self.table_with_joins(table_with_joins, pins_ok);
            }
            _ => self.unanalyzed("FROM item"),
        }
    }

    /// Registers the target of a write (or COPY); returns its occurrence when sharded.
    pub(super) fn write_target(&mut self, name: &'a ObjectName, writes: bool) -> Option<usize> {
        match self.resolve(name) {
            Resolved::Sharded(t) => Some(self.new_inst(t)),
            Resolved::Reference => {
                if writes {
                    self.out.writes_reference = true;
                    if self.reference_written.is_none() {
                        self.reference_written = Some(name.to_string());
                    }
                } else {
                    self.out.reads_reference = true;
                }
                None
            }
            Resolved::Unsharded => {
                self.note_unsharded(name);
                None
            }
            Resolved::Cte | Resolved::Unknown => {
                self.unanalyzed("write target");
                None
            }
        }
    }

    pub(super) fn resolve(&self, name: &'a ObjectName) -> Resolved {
        let mut parts = name.0.iter().rev();
        let Some(ObjectNamePart::Identifier(last)) = parts.next() else {
            return Resolved::Unknown;
        };
        let ns = match parts.next() {
            Some(ObjectNamePart::Identifier(ns)) => Some(ns),
            Some(_) => return Resolved::Unknown,
            None => {
                if self.ctes.iter().any(|c| same_ident(c, last)) {
                    return Resolved::Cte;
                }
                None
            }
        };
        match self.schema.lookup(ns, last) {
            Some(TableKind::Sharded(t)) => Resolved::Sharded(t.clone()),
            Some(TableKind::Reference) => Resolved::Reference,
            None => Resolved::Unsharded,
        }
    }

    pub(super) fn note_unsharded(&mut self, name: &ObjectName) {
        if self.out.unsharded.is_none() {
            self.out.unsharded = Some(name.to_string());
        }
    }
}
