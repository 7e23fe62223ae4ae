//! Walking whole statements: queries, INSERT (its rows' keys), UPDATE and DELETE (their targets and WHERE), DDL,
//! and SET lists that would move a row to another shard.

use super::*;

impl<'a, 's> Walker<'a, 's> {
    pub(in crate::sharding::keys) fn statement(&mut self, st: &'a Statement, top: bool) {
        match st {
            Statement::Query(q) => {
                if top {
                    self.out.kind = StatementKind::Read;
                }
                self.query(q, None);
            }
            Statement::Insert(i) => self.insert(i),
            Statement::Update(u) => self.update(u),
            Statement::Delete(d) => self.delete(d),
            Statement::Merge(m) => {
                self.wrote();
                self.unanalyzed("MERGE");
                self.open_block();
                self.table_factor(&m.table, false);
                self.table_factor(&m.source, false);
                self.visit(&m.on);
                self.close_block();
            }
            Statement::Explain { statement, .. } => self.statement(statement, top),
            Statement::Copy { source, to, .. } => {
                if *to {
                    self.out.kind = StatementKind::Read;
                } else {
                    self.wrote();
                }
                match source {
                    sqlparser::ast::CopySource::Table { table_name, .. } => {
                        self.open_block();
                        self.write_target(table_name, !*to);
                        self.close_block();
                    }
                    sqlparser::ast::CopySource::Query(q) => {
                        self.query(q, None);
                    }
                }
            }
            Statement::Truncate(t) => {
                self.ddl(t.table_names.iter().map(|t| &t.name));
            }
            Statement::CreateTable(c) => self.ddl(std::iter::once(&c.name)),
            Statement::AlterTable(a) => self.ddl(std::iter::once(&a.name)),
            Statement::CreateIndex(c) => self.ddl(std::iter::once(&c.table_name)),
            Statement::Drop {
                object_type: sqlparser::ast::ObjectType::Table,
                names,
                ..
            } => self.ddl(names.iter()),
            _ => {}
        }
    }

    /// DDL names tables without touching rows: record what they are, no keys.
    pub(super) fn ddl(&mut self, names: impl Iterator<Item = &'a ObjectName>) {
        self.out.kind = StatementKind::Ddl;
        for name in names {
            match self.resolve(name) {
                Resolved::Sharded(t) => add_table(&mut self.out.sharded, &t),
                Resolved::Reference => self.out.writes_reference = true,
                Resolved::Unsharded | Resolved::Cte => self.note_unsharded(name),
                Resolved::Unknown => self.unanalyzed("table name"),
            }
        }
    }

    pub(super) fn insert(&mut self, ins: &'a Insert) {
        self.wrote();
        self.open_main_block();
        let TableObject::TableName(name) = &ins.table else {
            self.unanalyzed("INSERT target");
            self.close_block();
            return;
        };
        let target = self.write_target(name, true);
        let key_pos = target.and_then(|i| {
            let table = &self.insts[i].table;
            if ins.columns.is_empty() && ins.source.is_some() {
                // No column list: values go to the table's columns in order, which only the database knows.
                let pos = self.columns.key_position(table);
                if pos.is_none() && self.out.insert_columns_unknown.is_none() {
                    self.out.insert_columns_unknown = Some(table.name.clone());
                }
                return pos;
            }
            ins.columns
                .iter()
                .position(|c| last_ident(c).is_some_and(|id| ident_is(id, &table.key)))
        });
        let mut rows: Option<Vec<KeyRef>> = None;
        if let Some(src) = &ins.source {
            match (&*src.body, &src.with) {
                (SetExpr::Values(values), None) => {
                    let ty = target.map(|i| self.insts[i].table.key_type);
                    let mut keys = Some(Vec::with_capacity(values.rows.len()));
                    for row in &values.rows {
                        let k = match (key_pos, ty) {
                            (Some(p), Some(ty)) => row.content.get(p).and_then(|e| key_ref(e, ty)),
                            _ => None,
                        };
                        match (&mut keys, k) {
                            (Some(v), Some(k)) => v.push(k),
                            _ => keys = None,
                        }
                        for e in &row.content {
                            self.visit(e);
                        }
                    }
                    rows = keys;
                }
                _ => {
                    let p = self.query(src, key_pos);
                    if let Some(t) = target {
                        let pin = self.projected_keys(p, t);
                        self.frame().conds.push(pin);
                    }
                }
            }
        }
        if let (Some(t), Some(rows)) = (target, rows) {
            if !rows.is_empty() {
                self.out.insert_null_key |= rows.contains(&KeyRef::Literal(KeyValue::Null));
                // One target per statement: a second INSERT (in a CTE) keeps only the first one's rows.
                if self.out.insert_table.is_none() {
                    self.out.insert_table = Some(self.insts[t].table.clone());
                    self.out.insert_rows.clone_from(&rows);
                }
                self.frame().conds.push(Cond::Pin(t, rows));
            }
        }
        // ON CONFLICT and RETURNING see the target.
        let alias = ins.table_alias.as_ref().map(|a| &a.alias);
        self.frame().items.push(Item {
            name: alias.or_else(|| last_ident(name)),
            inst: target,
        });
        match &ins.on {
            Some(OnInsert::OnConflict(oc)) => {
                if let OnConflictAction::DoUpdate(du) = &oc.action {
                    self.assignments(&du.assignments, target);
                    if let Some(e) = &du.selection {
                        self.visit(e);
                    }
                }
            }
            Some(OnInsert::DuplicateKeyUpdate(a)) => self.assignments(a, target),
            Some(_) => self.unanalyzed("INSERT ... ON"),
            None => {}
        }
        self.select_items(ins.returning.iter().flatten(), None);
        self.close_block();
    }

    /// The pin an `INSERT ... SELECT` puts on its target, from the SELECT's key column; ties their units.
    pub(super) fn projected_keys(&mut self, p: Projected<'a>, target: usize) -> Cond {
        match p {
            Projected::Key(y) => {
                // Read the SELECT's own limits before its unit joins the target's.
                let keys = self.constraint_of(y);
                // Rows computed over every shard's rows (a window, a global DISTINCT) are not rows by key: the
                // SELECT stays its own unit, so the statement can only run where both are pinned to one shard.
                match self.blocks[self.insts[y].block].needs_all_rows() {
                    Some(what) => {
                        self.needs_all_hint.get_or_insert(what);
                    }
                    None => self.attach(y, target),
                }
                match keys {
                    Some(keys)
                        if self.insts[y]
                            .table
                            .colocated_with(&self.insts[target].table) =>
                    {
                        Cond::Pin(target, keys)
                    }
                    _ => Cond::True,
                }
            }
            Projected::Expr(e) => match key_ref(e, self.insts[target].table.key_type) {
                Some(k) => Cond::Pin(target, vec![k]),
                None => Cond::True,
            },
            Projected::Unknown => Cond::True,
        }
    }

    pub(super) fn update(&mut self, u: &'a Update) {
        self.wrote();
        self.open_main_block();
        let target = match &u.table.relation {
            TableFactor::Table { name, alias, .. } => {
                let t = self.write_target(name, true);
                self.frame().items.push(Item {
                    name: alias.as_ref().map(|a| &a.name).or_else(|| last_ident(name)),
                    inst: t,
                });
                t
            }
            _ => {
                self.unanalyzed("UPDATE target");
                None
            }
        };
        self.joins(&u.table.joins, 0, true);
        if let Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) =
            &u.from
        {
            for twj in from {
                self.table_with_joins(twj, true);
            }
        }
        self.assignments(&u.assignments, target);
        if let Some(w) = &u.selection {
            let c = self.cond(w, true);
            self.frame().conds.push(c);
        }
        self.select_items(u.returning.iter().flatten(), None);
        if u.limit.is_some() || !u.order_by.is_empty() {
            self.unanalyzed("UPDATE ... LIMIT");
        }
        self.close_block();
    }

    pub(super) fn delete(&mut self, d: &'a Delete) {
        self.wrote();
        self.open_main_block();
        if !d.tables.is_empty() || d.limit.is_some() || !d.order_by.is_empty() {
            self.unanalyzed("multi-table DELETE");
        }
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
        for (n, twj) in from.iter().enumerate() {
            match (&twj.relation, n) {
                (TableFactor::Table { name, alias, .. }, 0) => {
                    let alias = alias.as_ref().map(|a| &a.name);
                    let t = self.write_target(name, true);
                    self.frame().items.push(Item {
                        name: alias.or_else(|| last_ident(name)),
                        inst: t,
                    });
                    self.joins(&twj.joins, 0, true);
                }
                _ => self.table_with_joins(twj, true),
            }
        }
        for twj in d.using.iter().flatten() {
            self.table_with_joins(twj, true);
        }
        if let Some(w) = &d.selection {
            let c = self.cond(w, true);
            self.frame().conds.push(c);
        }
        self.select_items(d.returning.iter().flatten(), None);
        self.close_block();
    }

    /// SET targets: assigning the key of a sharded target moves rows between shards.
    pub(super) fn assignments(&mut self, assignments: &'a [Assignment], target: Option<usize>) {
        for a in assignments {
            if let Some(t) = target {
                let key = &self.insts[t].table.key;
                let hits = |n: &ObjectName| last_ident(n).is_some_and(|id| ident_is(id, key));
                self.out.changes_key |= match &a.target {
                    AssignmentTarget::ColumnName(n) => hits(n),
                    AssignmentTarget::Tuple(ns) => ns.iter().any(hits),
                };
            }
            self.visit(&a.value);
        }
    }
}
