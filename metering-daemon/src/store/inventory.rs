//! The inventory in the local store: every subject as last applied with its owner (the API's
//! come back from here after a restart), the history of bandwidth, group and state with the
//! time each change took effect (the billing store's baselines and in-use time), and the audit
//! trail of who changed what. One transaction per change or batch; history and audit rows
//! carry the seq of the next round, with which they are shipped.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, sql};

/// What a subject is in the inventory at some moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryEntry {
    /// `eip` or `group`.
    pub kind: &'static str,
    /// The EIP's address or the group's name.
    pub subject: String,
    pub bandwidth_mbps: Option<u64>,
    pub group: Option<String>,
    /// `active`, `expired`, `arrears`, `frozen`, or `removed`.
    pub state: String,
    /// Its billing plan (`monthly` with start and length, `hourly`, ...), if any.
    pub plan: Option<String>,
    pub plan_start: Option<i64>,
    pub plan_months: Option<u32>,
}

/// One recorded change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryChange {
    pub entry: InventoryEntry,
    /// UNIX seconds.
    pub effective_from: i64,
    /// The commit it goes to the billing store with.
    pub seq: i64,
}

/// A subject as held now, with its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryRow {
    /// `eip` or `group`.
    pub kind: &'static str,
    pub subject: String,
    /// `file` or `api`.
    pub source: String,
    pub bandwidth_mbps: Option<u64>,
    pub inbound_mbps: Option<u64>,
    pub outbound_mbps: Option<u64>,
    pub group: Option<String>,
    pub state: String,
    /// UNIX seconds of the change that made it so.
    pub effective_from: i64,
    /// Since when it is in its state (UNIX seconds, effective).
    pub state_since: i64,
    /// `monthly`, `hourly`, `traffic`, `enhanced95`, `p95`.
    pub plan: Option<String>,
    /// A monthly package's start and length.
    pub plan_start: Option<i64>,
    pub plan_months: Option<u32>,
}

/// One change in the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// The row's id in the local store (0 before it is recorded).
    pub id: i64,
    /// When the daemon applied it, UNIX milliseconds.
    pub at_ms: i64,
    /// When it took effect (the caller's time), UNIX seconds.
    pub effective_from: i64,
    /// `file` (start or reload), `api` or `sync`.
    pub source: String,
    /// The caller's uid (unix socket), when known.
    pub uid: Option<u32>,
    pub kind: &'static str,
    pub subject: String,
    /// The subject before and after, as JSON (`None`: absent).
    pub before: Option<String>,
    pub after: Option<String>,
    /// The commit it goes to the billing store with (0 when read for display).
    pub seq: i64,
}

/// A batch of changes to record: subjects now held (`Ok`) or removed (`Err`: kind, subject,
/// effective time), and their audit rows.
#[derive(Default)]
pub struct InventoryRecord<'a> {
    pub upserts: &'a [InventoryRow],
    pub removals: &'a [(&'static str, String, i64)],
    pub audit: &'a [AuditRow],
}

/// Columns the history got after its first version (added to older stores at open).
pub(super) const HISTORY_COLUMNS: [(&str, &str); 3] = [
    ("plan", "TEXT"),
    ("plan_start", "INTEGER"),
    ("plan_months", "INTEGER"),
];

/// Columns the inventory table got after its first version (added to older stores at open).
pub(super) const INVENTORY_COLUMNS: [(&str, &str); 4] = [
    ("state_since", "INTEGER"),
    ("plan", "TEXT"),
    ("plan_start", "INTEGER"),
    ("plan_months", "INTEGER"),
];

/// Creates the inventory table of a store written before it existed, from the latest history
/// of each subject (all owned by the file then), so the first start records no change.
pub(super) const SEED_INVENTORY: &str = "
INSERT INTO inventory (kind, subject, source, bandwidth_mbps, grp, state, effective_from)
SELECT h.kind, h.subject, 'file', h.bandwidth_mbps, h.grp, h.state, h.effective_from
FROM inventory_history h
WHERE h.id = (SELECT MAX(id) FROM inventory_history x WHERE x.kind = h.kind AND x.subject = h.subject)
  AND h.state <> 'removed'";

impl Store {
    /// Every subject as last applied, groups first.
    pub fn load_inventory(&self) -> Result<Vec<InventoryRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kind, subject, source, bandwidth_mbps, inbound_mbps, outbound_mbps, grp,
                        state, effective_from, state_since, plan, plan_start, plan_months
                 FROM inventory ORDER BY kind DESC, subject",
            )
            .map_err(sql("read inventory"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(InventoryRow {
                    kind: kind_of(&r.get::<_, String>(0)?),
                    subject: r.get(1)?,
                    source: r.get(2)?,
                    bandwidth_mbps: r.get::<_, Option<i64>>(3)?.map(|b| b as u64),
                    inbound_mbps: r.get::<_, Option<i64>>(4)?.map(|b| b as u64),
                    outbound_mbps: r.get::<_, Option<i64>>(5)?.map(|b| b as u64),
                    group: r.get(6)?,
                    state: r.get(7)?,
                    effective_from: r.get(8)?,
                    state_since: r.get::<_, Option<i64>>(9)?.unwrap_or(r.get(8)?),
                    plan: r.get(10)?,
                    plan_start: r.get(11)?,
                    plan_months: r.get(12)?,
                })
            })
            .map_err(sql("read inventory"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("read inventory"))
    }

    /// The owner of one subject as last applied (`None`: not in the inventory).
    pub fn source_of(&self, kind: &str, subject: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT source FROM inventory WHERE kind = ?1 AND subject = ?2",
                params![kind, subject],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read inventory"))
    }

    /// Records a batch of changes in one transaction: the inventory rows, their history
    /// (shipped with the next round) and the audit trail.
    pub fn record_inventory(&mut self, record: &InventoryRecord<'_>) -> Result<(), StoreError> {
        if record.upserts.is_empty() && record.removals.is_empty() && record.audit.is_empty() {
            return Ok(());
        }
        let seq = self.next_seq;
        let tx = self.conn.transaction().map_err(sql("record inventory"))?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO inventory
                     (kind, subject, source, bandwidth_mbps, inbound_mbps, outbound_mbps, grp,
                      state, effective_from, state_since, plan, plan_start, plan_months)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(sql("record inventory"))?;
            let mut delete = tx
                .prepare_cached("DELETE FROM inventory WHERE kind = ?1 AND subject = ?2")
                .map_err(sql("record inventory"))?;
            let mut history = tx
                .prepare_cached(
                    "INSERT INTO inventory_history
                     (kind, subject, effective_from, bandwidth_mbps, grp, state, seq, plan,
                      plan_start, plan_months)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(sql("record inventory"))?;
            let mut audit = tx
                .prepare_cached(
                    "INSERT INTO audit
                     (at_ms, effective_from, source, uid, kind, subject, before, after, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(sql("record audit"))?;
            let mb = |b: Option<u64>| b.map(|b| b as i64);
            for r in record.upserts {
                upsert
                    .execute(params![
                        r.kind,
                        r.subject,
                        r.source,
                        mb(r.bandwidth_mbps),
                        mb(r.inbound_mbps),
                        mb(r.outbound_mbps),
                        r.group,
                        r.state,
                        r.effective_from,
                        r.state_since,
                        r.plan,
                        r.plan_start,
                        r.plan_months
                    ])
                    .map_err(sql("record inventory"))?;
                history
                    .execute(params![
                        r.kind,
                        r.subject,
                        r.effective_from,
                        mb(r.bandwidth_mbps),
                        r.group,
                        r.state,
                        seq,
                        r.plan,
                        r.plan_start,
                        r.plan_months
                    ])
                    .map_err(sql("record inventory"))?;
            }
            for (kind, subject, at) in record.removals {
                delete
                    .execute(params![kind, subject])
                    .map_err(sql("record inventory"))?;
                history
                    .execute(params![
                        kind,
                        subject,
                        at,
                        None::<i64>,
                        None::<String>,
                        "removed",
                        seq,
                        None::<String>,
                        None::<i64>,
                        None::<u32>
                    ])
                    .map_err(sql("record inventory"))?;
            }
            for a in record.audit {
                audit
                    .execute(params![
                        a.at_ms,
                        a.effective_from,
                        a.source,
                        a.uid,
                        a.kind,
                        a.subject,
                        a.before,
                        a.after,
                        seq
                    ])
                    .map_err(sql("record audit"))?;
            }
        }
        tx.commit().map_err(sql("record inventory"))
    }

    /// Changes recorded for commits `(after, up_to]`, oldest first.
    pub fn inventory_changes(
        &self,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<InventoryChange>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT kind, subject, effective_from, bandwidth_mbps, grp, state, seq, plan,
                        plan_start, plan_months
                 FROM inventory_history WHERE seq > ?1 AND seq <= ?2 ORDER BY id",
            )
            .map_err(sql("read inventory"))?;
        let rows = stmt
            .query_map(params![after, up_to], |r| {
                Ok(InventoryChange {
                    entry: InventoryEntry {
                        kind: kind_of(&r.get::<_, String>(0)?),
                        subject: r.get(1)?,
                        bandwidth_mbps: r.get::<_, Option<i64>>(3)?.map(|b| b as u64),
                        group: r.get(4)?,
                        state: r.get(5)?,
                        plan: r.get(7)?,
                        plan_start: r.get(8)?,
                        plan_months: r.get(9)?,
                    },
                    effective_from: r.get(2)?,
                    seq: r.get(6)?,
                })
            })
            .map_err(sql("read inventory"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("read inventory"))
    }

    /// Audit rows recorded for commits `(after, up_to]`, oldest first (for shipping).
    pub fn audit_changes(&self, after: i64, up_to: i64) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_query(
            "WHERE seq > ?1 AND seq <= ?2 ORDER BY id",
            params![after, up_to],
        )
    }

    /// The audit trail, oldest first: of one subject (an address as the store spells it, or a
    /// group name) or all, applied at or after `since_ms`, at most `limit` rows (the newest).
    pub fn audit_trail(
        &self,
        subject: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut rows = match subject {
            Some(s) => self.audit_query(
                "WHERE subject = ?1 AND at_ms >= ?2 ORDER BY id DESC LIMIT ?3",
                params![s, since_ms, limit as i64],
            )?,
            None => self.audit_query(
                "WHERE at_ms >= ?1 ORDER BY id DESC LIMIT ?2",
                params![since_ms, limit as i64],
            )?,
        };
        rows.reverse();
        Ok(rows)
    }

    /// The audit rows of one source (`lifecycle`, ...) effective in `[from, to)`, oldest first.
    pub fn audit_by_source(
        &self,
        source: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_query(
            "WHERE source = ?1 AND effective_from >= ?2 AND effective_from < ?3 ORDER BY id",
            params![source, from, to],
        )
    }

    fn audit_query(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT at_ms, effective_from, source, uid, kind, subject, before, after, seq, id
                 FROM audit {filter}"
            ))
            .map_err(sql("read audit"))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok(AuditRow {
                    at_ms: r.get(0)?,
                    effective_from: r.get(1)?,
                    source: r.get(2)?,
                    uid: r.get(3)?,
                    kind: kind_of(&r.get::<_, String>(4)?),
                    subject: r.get(5)?,
                    before: r.get(6)?,
                    after: r.get(7)?,
                    seq: r.get(8)?,
                    id: r.get(9)?,
                })
            })
            .map_err(sql("read audit"))?;
        rows.collect::<Result<_, _>>().map_err(sql("read audit"))
    }
}

fn kind_of(s: &str) -> &'static str {
    if s == "group" { "group" } else { "eip" }
}
