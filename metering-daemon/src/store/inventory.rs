//! The history of every EIP's and shared bandwidth's bandwidth, group and state, with the time
//! each change took effect: the billing store's baseline and in-use time come from it.

use rusqlite::params;

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

impl Store {
    /// Records every entry of `inventory` (the whole inventory now) that differs from what was
    /// last recorded for it, and every subject no longer in it as `removed`, effective `at`.
    /// Returns how many changes were recorded. One transaction.
    pub fn record_inventory(
        &mut self,
        inventory: &[InventoryEntry],
        at: i64,
    ) -> Result<usize, StoreError> {
        if self.inventory.is_none() {
            self.inventory = Some(self.load_latest_inventory()?);
        }
        let latest = self.inventory.as_mut().expect("loaded");
        let mut changes: Vec<InventoryEntry> = inventory
            .iter()
            .filter(|e| latest.get(&(e.kind, e.subject.clone())) != Some(*e))
            .cloned()
            .collect();
        let present: std::collections::HashSet<(&str, &str)> = inventory
            .iter()
            .map(|e| (e.kind, e.subject.as_str()))
            .collect();
        for ((kind, subject), e) in latest.iter() {
            if e.state != "removed" && !present.contains(&(*kind, subject.as_str())) {
                changes.push(InventoryEntry {
                    kind,
                    subject: subject.clone(),
                    bandwidth_mbps: None,
                    group: None,
                    state: "removed".to_owned(),
                });
            }
        }
        if changes.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.transaction().map_err(sql("record inventory"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO inventory_history
                     (kind, subject, effective_from, bandwidth_mbps, grp, state, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql("record inventory"))?;
            for e in &changes {
                insert
                    .execute(params![
                        e.kind,
                        e.subject,
                        at,
                        e.bandwidth_mbps.map(|b| b as i64),
                        e.group,
                        e.state,
                        self.next_seq
                    ])
                    .map_err(sql("record inventory"))?;
            }
        }
        tx.commit().map_err(sql("record inventory"))?;
        for e in &changes {
            latest.insert((e.kind, e.subject.clone()), e.clone());
        }
        Ok(changes.len())
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
                "SELECT kind, subject, effective_from, bandwidth_mbps, grp, state, seq
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
                    },
                    effective_from: r.get(2)?,
                    seq: r.get(6)?,
                })
            })
            .map_err(sql("read inventory"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("read inventory"))
    }

    fn load_latest_inventory(
        &self,
    ) -> Result<std::collections::HashMap<(&'static str, String), InventoryEntry>, StoreError> {
        Ok(self
            .inventory_changes(i64::MIN, i64::MAX)?
            .into_iter()
            .map(|c| ((c.entry.kind, c.entry.subject.clone()), c.entry))
            .collect())
    }
}

fn kind_of(s: &str) -> &'static str {
    if s == "group" { "group" } else { "eip" }
}
