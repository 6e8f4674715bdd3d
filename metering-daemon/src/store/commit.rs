//! Committing a round: its record files are written and fsynced first, then one SQLite
//! transaction makes them part of the store, so a crash at any moment leaves the previous
//! round or this one, never half of it.

use std::{collections::HashMap, net::IpAddr};

use rusqlite::{OptionalExtension, params};

use super::{
    Store, StoreError,
    records::{encode_checkpoint, encode_groups, write_durable},
    sql,
};
use crate::{
    FastMap,
    billing::series::{Closed, Series},
};

/// What one commit writes: the round's sample records ([`super::encode_sample`]), the full
/// counter snapshot they were computed against ([`super::encode_snapshot`]), the EIPs it
/// registers, closed figures and series checkpoints, and the shared bandwidths' series.
#[derive(Default)]
pub struct RoundRecords<'a> {
    pub host: &'a str,
    pub boundary: i64,
    pub samples: &'a [u8],
    pub snapshot: &'a [u8],
    pub new_eips: &'a [(u32, IpAddr)],
    pub closed: &'a [(IpAddr, Closed)],
    pub checkpoints: &'a [(IpAddr, &'a Series)],
    /// Every shared bandwidth's series as of this round (a few, written whole each round so a
    /// restart resumes them exactly); `None` leaves the stored ones as they are.
    pub groups: Option<&'a [(&'a str, &'a Series)]>,
    /// Shared bandwidths' days and months that closed this round.
    pub closed_groups: &'a [(String, Closed)],
    /// What the round is, for the billing store.
    pub kind: RoundKind,
    /// Start of the earliest interval the round's samples cover (several when the round spread
    /// an outage's delta); the boundary minus one interval otherwise.
    pub first_start: i64,
    /// EIPs that entered the inventory with this round: id and first interval start.
    pub presence_opened: &'a [(u32, i64)],
    /// EIPs that left it: id and the end of their last interval.
    pub presence_closed: &'a [(u32, i64)],
}

/// What a committed round stands for in the billing store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoundKind {
    /// A sampling round of every EIP, every uplink metered throughout.
    #[default]
    Complete,
    /// A sampling round during which an uplink was not metered for a while.
    Incomplete,
    /// The last samples of a removed EIP (not a round of the host's inventory).
    Removal,
}

impl RoundKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoundKind::Complete => "complete",
            RoundKind::Incomplete => "incomplete",
            RoundKind::Removal => "removal",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "incomplete" => RoundKind::Incomplete,
            "removal" => RoundKind::Removal,
            _ => RoundKind::Complete,
        }
    }
}

impl Store {
    /// Commits one round atomically. On error nothing is written.
    pub fn commit_round(&mut self, round: RoundRecords<'_>) -> Result<(), StoreError> {
        self.commit(round, &[])
    }

    /// Commits an EIP's last round (its final samples and figures, and the snapshot of every
    /// other EIP) and forgets its checkpoint, in one transaction.
    pub fn commit_removal(
        &mut self,
        round: RoundRecords<'_>,
        eips: &[IpAddr],
    ) -> Result<(), StoreError> {
        self.commit(round, eips)
    }

    fn commit(&mut self, round: RoundRecords<'_>, forget: &[IpAddr]) -> Result<(), StoreError> {
        let RoundRecords {
            host,
            boundary,
            samples,
            snapshot,
            new_eips,
            closed,
            checkpoints,
            groups,
            closed_groups,
            kind,
            first_start,
            presence_opened,
            presence_closed,
        } = round;
        let mut fresh: FastMap<IpAddr, u32> = FastMap::default();
        fresh.reserve(new_eips.len());
        fresh.extend(new_eips.iter().map(|(id, eip)| (*eip, *id)));
        let id = |eip: &IpAddr| -> u32 {
            self.ids
                .get(eip)
                .or_else(|| fresh.get(eip))
                .copied()
                .expect("every EIP of a round is registered")
        };
        // The records go to files first (durable), then one transaction makes them part of the
        // store: a crash before the commit leaves only files no row refers to.
        let seq = self.next_seq;
        let mut checkpoint_blob = Vec::new();
        for (eip, series) in checkpoints {
            encode_checkpoint(&mut checkpoint_blob, id(eip), series);
        }
        if !samples.is_empty() {
            write_durable(&self.samples_file(seq), samples)?;
        }
        write_durable(&self.snapshot_file(seq), snapshot)?;
        if !checkpoints.is_empty() {
            write_durable(&self.checkpoints_file(seq), &checkpoint_blob)?;
        }
        let groups_blob = groups.map(encode_groups);
        if let Some(blob) = &groups_blob {
            write_durable(&self.groups_file(seq), blob)?;
        }
        std::fs::File::open(&self.files)?.sync_all()?;
        let previous_snapshot: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM snapshot WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(sql("read snapshot"))?;
        let previous_groups: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM group_state WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(sql("read group state"))?;
        let tx = self.conn.transaction().map_err(sql("begin round"))?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO eips (id, address) VALUES (?1, ?2)")
                .map_err(sql("register EIP"))?;
            for (eid, eip) in new_eips {
                stmt.execute(params![eid, eip.to_string()])
                    .map_err(sql("register EIP"))?;
            }
        }
        if !samples.is_empty() {
            tx.execute(
                "INSERT INTO rounds (seq, boundary, host, bytes, kind, first_start)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    seq,
                    boundary,
                    host,
                    samples.len() as i64,
                    kind.as_str(),
                    first_start
                ],
            )
            .map_err(sql("write samples"))?;
        }
        {
            let mut open = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO presence (eip, from_s, opened_seq) VALUES (?1, ?2, ?3)",
                )
                .map_err(sql("write presence"))?;
            for (eid, from) in presence_opened {
                open.execute(params![eid, from, seq])
                    .map_err(sql("write presence"))?;
            }
            let mut close = tx
                .prepare_cached(
                    "UPDATE presence SET to_s = ?2, closed_seq = ?3 WHERE eip = ?1 AND to_s IS NULL",
                )
                .map_err(sql("write presence"))?;
            for (eid, to) in presence_closed {
                close
                    .execute(params![eid, to, seq])
                    .map_err(sql("write presence"))?;
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO snapshot (id, seq, boundary, bytes) VALUES (1, ?1, ?2, ?3)",
            params![seq, boundary, snapshot.len() as i64],
        )
        .map_err(sql("write snapshot"))?;
        write_closed(&tx, &id, closed)?;
        write_closed_groups(&tx, closed_groups)?;
        if let Some(blob) = &groups_blob {
            tx.execute(
                "INSERT OR REPLACE INTO group_state (id, seq, bytes) VALUES (1, ?1, ?2)",
                params![seq, blob.len() as i64],
            )
            .map_err(sql("write group state"))?;
        }
        if !checkpoints.is_empty() {
            tx.execute(
                "INSERT INTO checkpoint_files (seq, bytes) VALUES (?1, ?2)",
                params![seq, checkpoint_blob.len() as i64],
            )
            .map_err(sql("write checkpoints"))?;
            let mut refs = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO checkpoint_refs (turn, eip, seq) VALUES (?1, ?2, ?3)",
                )
                .map_err(sql("write checkpoints"))?;
            let mut legacy = tx
                .prepare_cached("DELETE FROM checkpoints WHERE eip = ?1")
                .map_err(sql("write checkpoints"))?;
            // In key order: a million new EIPs' rows are then appended page by page instead
            // of inserted all over the table (4.5 s -> well under 1 s).
            let mut keys: Vec<(u32, u32)> = checkpoints
                .iter()
                .map(|(eip, _)| {
                    let eid = id(eip);
                    (eid % self.rotation, eid)
                })
                .collect();
            keys.sort_unstable();
            for (turn, eid) in keys {
                refs.execute(params![turn, eid, seq])
                    .map_err(sql("write checkpoints"))?;
                if self.legacy_checkpoints {
                    legacy.execute([eid]).map_err(sql("write checkpoints"))?;
                }
            }
        }
        for eip in forget {
            let eid = id(eip);
            tx.execute(
                "DELETE FROM checkpoint_refs WHERE turn = ?1 AND eip = ?2",
                params![eid % self.rotation, eid],
            )
            .map_err(sql("forget removed EIP"))?;
            tx.execute("DELETE FROM checkpoints WHERE eip = ?1", [eid])
                .map_err(sql("forget removed EIP"))?;
        }
        // Where each EIP's latest checkpoint now is (None: forgotten), and the files that no
        // EIP's latest checkpoint is in any more: dropped in this transaction, deleted after it.
        let moves: Vec<(u32, Option<i64>)> = checkpoints
            .iter()
            .map(|(eip, _)| (id(eip), Some(seq)))
            .chain(forget.iter().map(|eip| (id(eip), None)))
            .collect();
        let mut live: HashMap<i64, i64> = HashMap::new();
        for &(eid, to) in &moves {
            if let Some(from) = self.checkpoint_seq.get(&eid) {
                *live.entry(*from).or_default() -= 1;
            }
            if let Some(to) = to {
                *live.entry(to).or_default() += 1;
            }
        }
        let unused: Vec<i64> = live
            .iter()
            .filter(|&(file, delta)| {
                self.checkpoint_live.get(file).copied().unwrap_or(0) as i64 + delta == 0
            })
            .map(|(file, _)| *file)
            .collect();
        for file in &unused {
            tx.execute("DELETE FROM checkpoint_files WHERE seq = ?1", [file])
                .map_err(sql("drop unused checkpoint files"))?;
        }
        tx.commit().map_err(sql("commit round"))?;
        self.checkpoint_seq.reserve(checkpoints.len());
        self.ids.reserve(new_eips.len());
        self.addresses.reserve(new_eips.len());
        for (eid, to) in moves {
            match to {
                Some(to) => self.checkpoint_seq.insert(eid, to),
                None => self.checkpoint_seq.remove(&eid),
            };
        }
        for (file, delta) in live {
            let count = self.checkpoint_live.entry(file).or_default();
            *count = (*count as i64 + delta) as u64;
        }
        for file in &unused {
            self.checkpoint_live.remove(file);
        }
        for file in unused {
            let _ = std::fs::remove_file(self.checkpoints_file(file));
        }
        self.next_seq += 1;
        if let Some(old) = previous_snapshot.filter(|&old| old != seq) {
            let _ = std::fs::remove_file(self.snapshot_file(old));
        }
        if groups_blob.is_some()
            && let Some(old) = previous_groups.filter(|&old| old != seq)
        {
            let _ = std::fs::remove_file(self.groups_file(old));
        }
        self.last_commit_bytes = (samples.len()
            + snapshot.len()
            + checkpoint_blob.len()
            + groups_blob.as_ref().map_or(0, Vec::len)) as u64;
        for (eid, eip) in new_eips {
            self.ids.insert(*eip, *eid);
            self.addresses.insert(*eid, *eip);
        }
        Ok(())
    }
}

fn write_closed(
    tx: &rusqlite::Transaction<'_>,
    id_of: &dyn Fn(&IpAddr) -> u32,
    closed: &[(IpAddr, Closed)],
) -> Result<(), StoreError> {
    let mut day = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO daily_figures (eip, day, figures) VALUES (?1, ?2, ?3)",
        )
        .map_err(sql("write daily figures"))?;
    let mut month = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO monthly_figures (eip, month, figures) VALUES (?1, ?2, ?3)",
        )
        .map_err(sql("write monthly figures"))?;
    for (eip, c) in closed {
        let id = id_of(eip);
        for (d, f) in &c.days {
            let json = serde_json::to_string(f).expect("figures serialize");
            day.execute(params![id, d.to_string(), json])
                .map_err(sql("write daily figures"))?;
        }
        for (m, f) in &c.months {
            let json = serde_json::to_string(f).expect("figures serialize");
            month
                .execute(params![id, m.to_string(), json])
                .map_err(sql("write monthly figures"))?;
        }
    }
    Ok(())
}

fn write_closed_groups(
    tx: &rusqlite::Transaction<'_>,
    closed: &[(String, Closed)],
) -> Result<(), StoreError> {
    let mut day = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO group_daily_figures (grp, day, figures) VALUES (?1, ?2, ?3)",
        )
        .map_err(sql("write daily figures"))?;
    let mut month = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO group_monthly_figures (grp, month, figures) VALUES (?1, ?2, ?3)",
        )
        .map_err(sql("write monthly figures"))?;
    for (group, c) in closed {
        for (d, f) in &c.days {
            let json = serde_json::to_string(f).expect("figures serialize");
            day.execute(params![group, d.to_string(), json])
                .map_err(sql("write daily figures"))?;
        }
        for (m, f) in &c.months {
            let json = serde_json::to_string(f).expect("figures serialize");
            month
                .execute(params![group, m.to_string(), json])
                .map_err(sql("write monthly figures"))?;
        }
    }
    Ok(())
}
