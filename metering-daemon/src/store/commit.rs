//! Committing a round: its record files are written and fsynced first, then one SQLite
//! transaction makes them part of the store, so a crash at any moment leaves the previous
//! round or this one, never half of it.

use std::{collections::HashMap, net::IpAddr};

use rusqlite::{OptionalExtension, params};

use super::spool::FiguresSpool;
use super::{
    Store, StoreError,
    records::{encode_checkpoint, encode_groups, write_durable},
    registrations::{EIP_RECORD, encode_registration},
    sql,
};
use crate::billing::series::{Closed, Series};

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
    /// The figures of the days and months that closed, encoded by the sampler as they closed:
    /// a month end closes two of them per EIP, and holding two million small vectors until the
    /// commit (then freeing them) was a fifth of that round.
    pub figures: Figures<'a>,
    /// Series checkpoints, by the EIP's store id (the sampler keeps it: no lookup by address
    /// for a million EIPs).
    pub checkpoints: &'a [(u32, &'a Series)],
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

/// A commit's closed figures.
#[derive(Clone, Copy)]
pub enum Figures<'a> {
    /// Encoded with [`super::encode_figures`] (empty: none closed).
    Encoded(&'a [u8]),
    /// Being written by a spool, closed ([`FiguresSpool::close`]).
    Spooled(&'a FiguresSpool),
}

impl Default for Figures<'_> {
    fn default() -> Self {
        Self::Encoded(&[])
    }
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
        eips: &[u32],
    ) -> Result<(), StoreError> {
        self.commit(round, eips)
    }

    fn commit(&mut self, round: RoundRecords<'_>, forget: &[u32]) -> Result<(), StoreError> {
        let new_eips = round.new_eips;
        let first_new = self.next_id();
        if new_eips
            .iter()
            .zip(first_new..)
            .any(|((id, _), expected)| *id != expected)
        {
            return Err(StoreError::Corrupt {
                what: "registration",
                eip: format!("{} new EIPs", new_eips.len()),
                detail: format!("ids are not consecutive from {first_new}"),
            });
        }
        // The new EIPs are added to the index by address beside the commit (a million hash
        // inserts), and taken out again if it fails.
        let mut ids = std::mem::take(&mut self.ids);
        let (result, mut ids) = std::thread::scope(|scope| {
            let indexer = scope.spawn(move || {
                ids.reserve(new_eips.len());
                ids.extend(new_eips.iter().map(|(eid, eip)| (*eip, *eid)));
                ids
            });
            let result = self.commit_registered(round, forget, first_new);
            (result, indexer.join().expect("the indexer does not panic"))
        });
        match result {
            Ok(()) => self.addresses.extend(new_eips.iter().map(|(_, eip)| *eip)),
            Err(_) => {
                for (_, eip) in new_eips {
                    ids.remove(eip);
                }
            }
        }
        self.ids = ids;
        result
    }

    fn commit_registered(
        &mut self,
        round: RoundRecords<'_>,
        forget: &[u32],
        first_new: u32,
    ) -> Result<(), StoreError> {
        let RoundRecords {
            host,
            boundary,
            samples,
            snapshot,
            new_eips,
            figures,
            checkpoints,
            groups,
            closed_groups,
            kind,
            first_start,
            presence_opened,
            presence_closed,
        } = round;
        let is_new = |eid: u32| (first_new..first_new + new_eips.len() as u32).contains(&eid);
        let seq = self.next_seq;
        // New EIPs' presence ranges go into their registration file; others' are rows.
        let mut opened_new: Vec<Option<i64>> = vec![None; new_eips.len()];
        for (eid, from) in presence_opened.iter().filter(|(eid, _)| is_new(*eid)) {
            opened_new[(eid - first_new) as usize] = Some(*from);
        }
        let mut registrations = Vec::with_capacity(new_eips.len() * EIP_RECORD);
        for ((_, eip), from) in new_eips.iter().zip(&opened_new) {
            encode_registration(&mut registrations, *eip, *from);
        }
        let groups_blob = groups.map(encode_groups);
        // The records go to files first (durable), then one transaction makes them part of the
        // store: a crash before the commit leaves only files no row refers to. The checkpoints
        // (the most to encode: a million new series) are encoded and written on a thread of
        // their own beside the rest; that thread also writes the closed figures, or, when a
        // spool already wrote them during the round (a month end's 2,000,000, about 110 MB),
        // waits for its fsync and renames its file into place.
        let checkpoints_path = self.checkpoints_file(seq);
        let figures_path = self.figures_file(seq);
        let committed = std::thread::scope(|scope| {
            let bulk_writer = scope.spawn(|| -> std::io::Result<BulkFiles> {
                let mut written = BulkFiles::default();
                if !checkpoints.is_empty() {
                    let mut blob = Vec::new();
                    for (eid, series) in checkpoints {
                        encode_checkpoint(&mut blob, *eid, series);
                    }
                    write_durable(&checkpoints_path, &blob)?;
                    written.checkpoints = blob.len();
                }
                match figures {
                    Figures::Encoded(blob) if !blob.is_empty() => {
                        write_durable(&figures_path, blob)?;
                        written.figures = blob.len();
                    }
                    Figures::Encoded(_) => {}
                    Figures::Spooled(spool) => written.figures = spool.move_to(&figures_path)?,
                }
                Ok(written)
            });
            self.write_files_and_rows(RowsOfCommit {
                seq,
                host,
                boundary,
                samples,
                snapshot,
                registrations: &registrations,
                first_new,
                new_count: new_eips.len(),
                groups: groups_blob.as_deref(),
                closed_groups,
                kind,
                first_start,
                presence_opened: presence_opened
                    .iter()
                    .filter(|(eid, _)| !is_new(*eid))
                    .copied()
                    .collect(),
                opened_new: &opened_new,
                presence_closed,
                checkpointed: checkpoints.iter().map(|(eid, _)| *eid).collect(),
                forget,
                bulk_files: Box::new(move || {
                    bulk_writer
                        .join()
                        .expect("the checkpoint and figures writer does not panic")
                }),
            })
        });
        let Commit {
            moves,
            live,
            unused,
            previous_snapshot,
            previous_groups,
            bulk,
        } = committed?;
        for (eid, to) in moves {
            self.checkpoint_seq.set(eid, to);
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
            + registrations.len()
            + bulk.checkpoints
            + bulk.figures
            + groups_blob.as_ref().map_or(0, Vec::len)) as u64;
        Ok(())
    }

    /// Writes a commit's record files (but the checkpoints and figures) and, once the bulk
    /// writer has made its files durable too, commits the rows that make them part of the
    /// store.
    fn write_files_and_rows(&mut self, c: RowsOfCommit<'_>) -> Result<Commit, StoreError> {
        let RowsOfCommit {
            seq,
            host,
            boundary,
            samples,
            snapshot,
            registrations,
            first_new,
            new_count,
            groups,
            closed_groups,
            kind,
            first_start,
            presence_opened,
            opened_new,
            presence_closed,
            checkpointed,
            forget,
            bulk_files,
        } = c;
        if !samples.is_empty() {
            write_durable(&self.samples_file(seq), samples)?;
        }
        write_durable(&self.snapshot_file(seq), snapshot)?;
        if !registrations.is_empty() {
            write_durable(&self.registrations_file(seq), registrations)?;
        }
        if let Some(blob) = groups {
            write_durable(&self.groups_file(seq), blob)?;
        }
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
        // A closed range opened by a registration file has no row yet: where it started.
        let mut closed_from_files = Vec::new();
        for (eid, to) in presence_closed {
            let opened_now = eid
                .checked_sub(first_new)
                .and_then(|i| opened_new.get(i as usize));
            let opened = match opened_now {
                Some(from) => from.map(|from| (from, seq)),
                None => self.registration_presence(*eid)?,
            };
            if let Some((from, opened_seq)) = opened {
                closed_from_files.push((*eid, from, *to, opened_seq));
            }
        }
        let tx = self.conn.transaction().map_err(sql("begin round"))?;
        if !registrations.is_empty() {
            tx.execute(
                "INSERT INTO eip_files (seq, first_id, count, bytes) VALUES (?1, ?2, ?3, ?4)",
                params![seq, first_new, new_count as i64, registrations.len() as i64],
            )
            .map_err(sql("register EIPs"))?;
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
            for (eid, from) in &presence_opened {
                open.execute(params![eid, from, seq])
                    .map_err(sql("write presence"))?;
            }
            let mut close = tx
                .prepare_cached(
                    "UPDATE presence SET to_s = ?2, closed_seq = ?3 WHERE eip = ?1 AND to_s IS NULL",
                )
                .map_err(sql("write presence"))?;
            let mut close_registered = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO presence (eip, from_s, to_s, opened_seq, closed_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql("write presence"))?;
            for (eid, to) in presence_closed {
                let changed = close
                    .execute(params![eid, to, seq])
                    .map_err(sql("write presence"))?;
                if changed == 0
                    && let Some((_, from, to, opened_seq)) =
                        closed_from_files.iter().find(|(e, ..)| e == eid)
                {
                    close_registered
                        .execute(params![eid, from, to, opened_seq, seq])
                        .map_err(sql("write presence"))?;
                }
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO snapshot (id, seq, boundary, bytes) VALUES (1, ?1, ?2, ?3)",
            params![seq, boundary, snapshot.len() as i64],
        )
        .map_err(sql("write snapshot"))?;
        write_closed_groups(&tx, closed_groups)?;
        if let Some(blob) = groups {
            tx.execute(
                "INSERT OR REPLACE INTO group_state (id, seq, bytes) VALUES (1, ?1, ?2)",
                params![seq, blob.len() as i64],
            )
            .map_err(sql("write group state"))?;
        }
        let mut checkpointed = checkpointed;
        checkpointed.sort_unstable();
        if !checkpointed.is_empty() {
            write_checkpoint_refs(
                &tx,
                seq,
                &checkpointed,
                self.rotation,
                self.legacy_checkpoints,
            )?;
        }
        for eid in forget {
            // A forgetting row: it outranks any range that still names the EIP.
            tx.execute(
                "INSERT OR REPLACE INTO checkpoint_refs (turn, eip, seq) VALUES (?1, ?2, ?3)",
                params![eid % self.rotation, eid, -seq],
            )
            .map_err(sql("forget removed EIP"))?;
            tx.execute("DELETE FROM checkpoints WHERE eip = ?1", [eid])
                .map_err(sql("forget removed EIP"))?;
        }
        // Where each EIP's latest checkpoint now is (None: forgotten), and the files that no
        // EIP's latest checkpoint is in any more: dropped in this transaction, deleted after it.
        let moves: Vec<(u32, Option<i64>)> = checkpointed
            .iter()
            .map(|eid| (*eid, Some(seq)))
            .chain(forget.iter().map(|eid| (*eid, None)))
            .collect();
        let mut live: HashMap<i64, i64> = HashMap::new();
        for &(eid, to) in &moves {
            if let Some(from) = self.checkpoint_seq.get(eid) {
                *live.entry(from).or_default() -= 1;
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
            tx.execute("DELETE FROM checkpoint_ranges WHERE seq = ?1", [file])
                .map_err(sql("drop unused checkpoint files"))?;
        }
        // The bulk files must be durable before the rows that refer to them commit.
        let bulk = bulk_files()?;
        if bulk.checkpoints > 0 {
            tx.execute(
                "INSERT INTO checkpoint_files (seq, bytes) VALUES (?1, ?2)",
                params![seq, bulk.checkpoints as i64],
            )
            .map_err(sql("write checkpoints"))?;
        }
        if bulk.figures > 0 {
            tx.execute(
                "INSERT INTO figure_files (seq, bytes) VALUES (?1, ?2)",
                params![seq, bulk.figures as i64],
            )
            .map_err(sql("write figures"))?;
        }
        std::fs::File::open(&self.files)?.sync_all()?;
        tx.commit().map_err(sql("commit round"))?;
        Ok(Commit {
            moves,
            live,
            unused,
            previous_snapshot,
            previous_groups,
            bulk,
        })
    }
}

/// What [`Store::write_files_and_rows`] is given.
struct RowsOfCommit<'a> {
    seq: i64,
    host: &'a str,
    boundary: i64,
    samples: &'a [u8],
    snapshot: &'a [u8],
    registrations: &'a [u8],
    first_new: u32,
    new_count: usize,
    groups: Option<&'a [u8]>,
    closed_groups: &'a [(String, Closed)],
    kind: RoundKind,
    first_start: i64,
    /// Presence ranges opened by EIPs registered earlier (rows).
    presence_opened: Vec<(u32, i64)>,
    /// Presence ranges opened by this commit's new EIPs (in their registration file), by
    /// id from `first_new`.
    opened_new: &'a [Option<i64>],
    presence_closed: &'a [(u32, i64)],
    checkpointed: Vec<u32>,
    forget: &'a [u32],
    /// Waits for the checkpoint and figures files (written beside this) to be durable.
    bulk_files: Box<dyn FnOnce() -> std::io::Result<BulkFiles> + 'a>,
}

/// What the transaction changed, for the store's in-memory view once it committed.
struct Commit {
    moves: Vec<(u32, Option<i64>)>,
    live: HashMap<i64, i64>,
    unused: Vec<i64>,
    previous_snapshot: Option<i64>,
    previous_groups: Option<i64>,
    bulk: BulkFiles,
}

/// Bytes of the checkpoint and figures files a commit wrote (0: none).
#[derive(Default)]
struct BulkFiles {
    checkpoints: usize,
    figures: usize,
}

/// Runs of at least this many consecutive ids are recorded as one `checkpoint_ranges` row.
const RANGE_MIN: usize = 16;

/// Records that the EIPs `ids` (sorted) have their latest checkpoint in file `seq`: long runs
/// of consecutive ids as ranges, the rest (the daily rotation's, 288 apart) as rows.
fn write_checkpoint_refs(
    tx: &rusqlite::Transaction<'_>,
    seq: i64,
    ids: &[u32],
    rotation: u32,
    legacy: bool,
) -> Result<(), StoreError> {
    let mut refs = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO checkpoint_refs (turn, eip, seq) VALUES (?1, ?2, ?3)",
        )
        .map_err(sql("write checkpoints"))?;
    let mut ranges = tx
        .prepare_cached(
            "INSERT INTO checkpoint_ranges (seq, first_id, last_id) VALUES (?1, ?2, ?3)",
        )
        .map_err(sql("write checkpoints"))?;
    let mut legacy_rows = tx
        .prepare_cached("DELETE FROM checkpoints WHERE eip = ?1")
        .map_err(sql("write checkpoints"))?;
    // Rows in key order (turn, eip): appended page by page rather than all over the table.
    let mut single: Vec<(u32, u32)> = Vec::new();
    for run in ids.chunk_by(|a, b| a + 1 == *b) {
        if run.len() >= RANGE_MIN {
            ranges
                .execute(params![seq, run[0], run[run.len() - 1]])
                .map_err(sql("write checkpoints"))?;
        } else {
            single.extend(run.iter().map(|eid| (eid % rotation, *eid)));
        }
    }
    single.sort_unstable();
    for (turn, eid) in single {
        refs.execute(params![turn, eid, seq])
            .map_err(sql("write checkpoints"))?;
    }
    if legacy {
        for eid in ids {
            legacy_rows
                .execute([eid])
                .map_err(sql("write checkpoints"))?;
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
