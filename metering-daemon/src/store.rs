//! The local sample store (SQLite): raw samples, the last counter snapshot per EIP, series
//! checkpoints, and closed daily and monthly figures.
//!
//! Each sampling round is one transaction: its samples, the full counter snapshot they were
//! computed from and the series checkpoints due that round are written as records to fsynced
//! files beside the database (`rounds/<seq>.samples`, `rounds/<seq>.snapshot`,
//! `rounds/<seq>.checkpoints`) and made part of the store by one SQLite transaction that records
//! them. Only small rows go through SQLite: at 1,000,000 EIPs a round checkpoints about 3,500
//! series of a few KiB each, which as rows rewrote whole B-tree pages and cost more than the
//! rest of the round; as one sequential file they cost one write. After a crash (even `kill -9` mid-round) the next round starts
//! from the last committed snapshot: no byte is lost (the kernel kept counting) and no sample is
//! written twice; files of an uncommitted round are removed at open.
//! `eip-meter samples` exports the raw samples in the CSV format `eip-meter compute` reads.

use std::{
    collections::HashMap,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

use rusqlite::{Connection, OptionalExtension, params};

use crate::billing::{
    SampleState,
    calendar::Calendar,
    samples::Snapshot,
    series::{Closed, Sample, Series},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sample store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("sample store: {op}: {source}")]
    Sql {
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error(
        "sample store was written with {key} = {stored}, the config says {configured}; use another state_dir or the old setting"
    )]
    SettingChanged {
        key: &'static str,
        stored: String,
        configured: String,
    },
    #[error("sample store holds an unreadable {what} for {eip}: {detail}")]
    Corrupt {
        what: &'static str,
        eip: String,
        detail: String,
    },
    #[error("sample store files: {0}")]
    Io(#[from] std::io::Error),
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { op, source }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS eips (id INTEGER PRIMARY KEY, address TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS rounds (
    seq INTEGER PRIMARY KEY, boundary INTEGER NOT NULL, host TEXT NOT NULL,
    bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, boundary INTEGER NOT NULL,
    bytes INTEGER NOT NULL);
-- Series checkpoints as JSON rows: the format before checkpoint files. Still read, and each
-- row is dropped when its EIP's next checkpoint is written to a file.
CREATE TABLE IF NOT EXISTS checkpoints (eip INTEGER PRIMARY KEY, series TEXT NOT NULL);
-- Each EIP's latest checkpoint is in rounds/<seq>.checkpoints. Keyed by the EIP's turn in the
-- daily checkpoint rotation first, so the ~1/288 of the EIPs a round checkpoints are adjacent
-- rows: a round dirties a page or two, not every page of the table.
CREATE TABLE IF NOT EXISTS checkpoint_refs (
    turn INTEGER NOT NULL, eip INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (turn, eip)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoint_files (seq INTEGER PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS daily_figures (
    eip INTEGER NOT NULL, day TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (day, eip));
CREATE TABLE IF NOT EXISTS monthly_figures (
    eip INTEGER NOT NULL, month TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (month, eip));
-- When an uplink was not metered: [from_s, to_s) in UNIX seconds, to_s NULL while it lasts.
-- Kept for audits; the gaps that reach past the last round also survive a restart, so the
-- samples of every interval they touch are marked partial whichever daemon commits them.
CREATE TABLE IF NOT EXISTS metering_gaps (
    id INTEGER PRIMARY KEY, uplink TEXT NOT NULL, cause TEXT NOT NULL,
    from_s REAL NOT NULL, to_s REAL);
";

/// One recorded metering gap of an uplink.
#[derive(Clone, Debug, PartialEq)]
pub struct GapRecord {
    pub uplink: String,
    pub cause: String,
    /// UNIX seconds.
    pub from: f64,
    /// UNIX seconds; `None` while the uplink is still not metered.
    pub to: Option<f64>,
}

/// Fixed-size little-endian records, so a round of 1,000,000 EIPs is one 33 MB row rather than
/// 1,000,000 rows (a round stays well under a second).
pub const SAMPLE_RECORD: usize = 4 + 4 + 8 + 8 + 1;
pub const SNAPSHOT_RECORD: usize = 4 + 4 + 8 + 8;

/// Appends one sample record (`id, seconds before the round's boundary, bytes in, bytes out,
/// state`): intervals are labelled relative to the round, which stores the boundary once.
pub fn encode_sample(out: &mut Vec<u8>, id: u32, boundary: i64, s: &Sample) {
    out.extend_from_slice(&id.to_le_bytes());
    let before = u32::try_from(boundary - s.start)
        .expect("a sample starts within 136 years before its round");
    out.extend_from_slice(&before.to_le_bytes());
    out.extend_from_slice(&s.inbound_bytes.to_le_bytes());
    out.extend_from_slice(&s.outbound_bytes.to_le_bytes());
    out.push(match s.state {
        SampleState::Measured => 0,
        SampleState::Partial => 1,
    });
}

/// Appends one snapshot record (`id, at relative to the snapshot's boundary, bytes in, bytes
/// out`).
pub fn encode_snapshot(out: &mut Vec<u8>, id: u32, boundary: i64, s: &Snapshot) {
    out.extend_from_slice(&id.to_le_bytes());
    let offset =
        i32::try_from(s.at - boundary).expect("snapshots of one round lie within 68 years");
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&s.inbound_bytes.to_le_bytes());
    out.extend_from_slice(&s.outbound_bytes.to_le_bytes());
}

/// Appends one checkpoint record: `id`, payload length (both u32 LE) and the series in
/// postcard's compact binary form (about a third of its JSON, and several times faster).
pub fn encode_checkpoint(out: &mut Vec<u8>, id: u32, series: &Series) {
    let start = out.len();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    *out = postcard::to_extend(series, std::mem::take(out)).expect("series serializes");
    let len = u32::try_from(out.len() - start - 8).expect("a checkpoint is under 4 GiB");
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
}

/// The records of a checkpoint file: `(id, payload)`.
fn decode_checkpoints(blob: &[u8]) -> Result<Vec<(u32, &[u8])>, String> {
    let mut out = Vec::new();
    let mut rest = blob;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(format!("{} trailing bytes", rest.len()));
        }
        let id = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
        let payload = rest
            .get(8..8 + len)
            .ok_or_else(|| format!("record of EIP id {id} is cut short"))?;
        out.push((id, payload));
        rest = &rest[8 + len..];
    }
    Ok(out)
}

/// What one commit writes: the round's sample records ([`encode_sample`]), the full counter
/// snapshot they were computed against ([`encode_snapshot`]), the EIPs it registers, closed
/// figures and series checkpoints.
pub struct RoundRecords<'a> {
    pub host: &'a str,
    pub boundary: i64,
    pub samples: &'a [u8],
    pub snapshot: &'a [u8],
    pub new_eips: &'a [(u32, IpAddr)],
    pub closed: &'a [(IpAddr, Closed)],
    pub checkpoints: &'a [(IpAddr, &'a Series)],
}

pub struct Store {
    conn: Connection,
    /// `<state_dir>/rounds/`: `<seq>.samples` and `<seq>.snapshot` files, referenced by rows.
    files: PathBuf,
    next_seq: i64,
    ids: HashMap<IpAddr, u32>,
    addresses: HashMap<u32, IpAddr>,
    /// Whether JSON checkpoint rows of the earlier format remain (each is dropped when its
    /// EIP is next checkpointed).
    legacy_checkpoints: bool,
    /// The file (seq) holding each EIP's latest checkpoint, as `checkpoint_refs` says.
    checkpoint_seq: HashMap<u32, i64>,
    /// How many EIPs' latest checkpoint each file holds: a file at zero is deleted.
    checkpoint_live: std::collections::BTreeMap<i64, u64>,
    /// Rounds per day: the checkpoint rotation's length (the `turn` of `checkpoint_refs`).
    rotation: u32,
}

/// Writes `bytes` to `path` and makes them durable before returning.
fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Reads a record file, checking it has the length its row recorded.
fn read_records(path: &Path, bytes: i64) -> Result<Vec<u8>, StoreError> {
    let data = std::fs::read(path).map_err(|e| StoreError::Corrupt {
        what: "record file",
        eip: path.display().to_string(),
        detail: e.to_string(),
    })?;
    if data.len() as i64 != bytes {
        return Err(StoreError::Corrupt {
            what: "record file",
            eip: path.display().to_string(),
            detail: format!("{} bytes, the store recorded {bytes}", data.len()),
        });
    }
    Ok(data)
}

fn decode_samples(blob: &[u8], boundary: i64) -> impl Iterator<Item = (u32, Sample)> + '_ {
    blob.chunks_exact(SAMPLE_RECORD).map(move |r| {
        let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
        (
            u32::from_le_bytes(r[0..4].try_into().expect("4 bytes")),
            Sample {
                start: boundary
                    - i64::from(u32::from_le_bytes(r[4..8].try_into().expect("4 bytes"))),
                inbound_bytes: u64_at(8),
                outbound_bytes: u64_at(16),
                state: if r[24] == 1 {
                    SampleState::Partial
                } else {
                    SampleState::Measured
                },
            },
        )
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // WAL + synchronous=FULL: a committed round survives power loss.
        // 64 KiB pages: a round is a few large blobs, and big pages mean short overflow chains.
        // (Takes effect only when the file is created.)
        conn.execute_batch(
            "PRAGMA page_size = 65536; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
        )
        .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let files = path.with_file_name("rounds");
        std::fs::create_dir_all(&files)?;
        let snapshot_seq: Option<i64> = conn
            .query_row("SELECT seq FROM snapshot WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(open_err)?;
        // Past every committed sequence number, of rounds *and* of the snapshot (a commit without
        // samples, such as the shutdown checkpoint, has only the latter): a new round must never
        // write over a file a committed row refers to.
        let last_round: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM rounds", [], |r| r.get(0))
            .map_err(open_err)?;
        let next_seq = last_round.max(snapshot_seq.unwrap_or(0)) + 1;
        let mut checkpoint_live: std::collections::BTreeMap<i64, u64> = pair_rows::<i64, i64>(
            &conn,
            "SELECT seq, bytes FROM checkpoint_files",
            "read checkpoint files",
        )?
        .into_iter()
        .map(|(seq, _)| (seq, 0))
        .collect();
        let checkpoint_seq: HashMap<u32, i64> = pair_rows::<u32, i64>(
            &conn,
            "SELECT eip, seq FROM checkpoint_refs",
            "read checkpoint refs",
        )?
        .into_iter()
        .collect();
        for seq in checkpoint_seq.values() {
            *checkpoint_live.entry(*seq).or_default() += 1;
        }
        let legacy_checkpoints: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM checkpoints)", [], |r| {
                r.get(0)
            })
            .map_err(open_err)?;
        // Files no committed row refers to were written by a round that crashed before its
        // commit: remove them.
        for entry in std::fs::read_dir(&files)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = match name.split_once('.') {
                Some((seq, "samples")) => seq.parse::<i64>().map_or(true, |s| s >= next_seq),
                Some((seq, "snapshot")) => seq.parse::<i64>().ok() != snapshot_seq,
                Some((seq, "checkpoints")) => seq
                    .parse::<i64>()
                    .map_or(true, |s| !checkpoint_live.contains_key(&s)),
                _ => false,
            };
            if orphan {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut store = Self {
            conn,
            files,
            next_seq,
            ids: HashMap::new(),
            addresses: HashMap::new(),
            legacy_checkpoints,
            checkpoint_seq,
            checkpoint_live,
            rotation: 288,
        };
        let rows =
            pair_rows::<u32, String>(&store.conn, "SELECT id, address FROM eips", "read EIP ids")?;
        for (id, address) in rows {
            let eip = parse_eip(&address)?;
            store.ids.insert(eip, id);
            store.addresses.insert(id, eip);
        }
        Ok(store)
    }

    /// Records the interval, time zone and host on first use and refuses different ones later:
    /// samples of different intervals or zones must never mix.
    pub fn check_settings(&mut self, calendar: &Calendar, host: &str) -> Result<(), StoreError> {
        self.rotation = calendar.samples_per_day();
        for (key, value) in [
            ("interval_seconds", calendar.interval().to_string()),
            ("timezone", calendar.timezone().to_owned()),
            ("host", host.to_owned()),
        ] {
            let stored: Option<String> = self
                .conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(sql("read settings"))?;
            match stored {
                Some(stored) if stored != value => {
                    return Err(StoreError::SettingChanged {
                        key,
                        stored,
                        configured: value,
                    });
                }
                Some(_) => {}
                None => {
                    self.conn
                        .execute(
                            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                            [key, &value],
                        )
                        .map_err(sql("write settings"))?;
                }
            }
        }
        Ok(())
    }

    /// The counter snapshot of the last committed round.
    pub fn load_snapshots(&self) -> Result<HashMap<IpAddr, Snapshot>, StoreError> {
        let row: Option<(i64, i64, i64)> = self
            .conn
            .query_row(
                "SELECT seq, boundary, bytes FROM snapshot WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql("read snapshot"))?;
        let (boundary, blob) = match row {
            Some((seq, boundary, bytes)) => {
                (boundary, read_records(&self.snapshot_file(seq), bytes)?)
            }
            None => (0, Vec::new()),
        };
        let mut out = HashMap::new();
        for r in blob.chunks_exact(SNAPSHOT_RECORD) {
            let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
            let id = u32::from_le_bytes(r[0..4].try_into().expect("4 bytes"));
            let eip = *self.addresses.get(&id).ok_or_else(|| StoreError::Corrupt {
                what: "snapshot",
                eip: id.to_string(),
                detail: "unknown EIP id".into(),
            })?;
            out.insert(
                eip,
                Snapshot {
                    at: boundary
                        + i64::from(i32::from_le_bytes(r[4..8].try_into().expect("4 bytes"))),
                    inbound_bytes: u64_at(8),
                    outbound_bytes: u64_at(16),
                },
            );
        }
        Ok(out)
    }

    /// Every checkpointed series, brought up to date with the samples committed after it.
    pub fn load_series(&self, calendar: Calendar) -> Result<Vec<(IpAddr, Series)>, StoreError> {
        let corrupt = |id: u32, detail: String| StoreError::Corrupt {
            what: "checkpoint",
            eip: id.to_string(),
            detail,
        };
        let mut series: HashMap<u32, Series> = HashMap::new();
        let legacy = pair_rows::<u32, String>(
            &self.conn,
            "SELECT eip, series FROM checkpoints",
            "read checkpoints",
        )?;
        for (id, json) in legacy {
            let s =
                serde_json::from_str::<Series>(&json).map_err(|e| corrupt(id, e.to_string()))?;
            series.insert(id, s.with_calendar(calendar));
        }
        // File checkpoints are newer than any remaining JSON row of the same EIP.
        let files: Vec<(i64, i64)> = pair_rows(
            &self.conn,
            "SELECT seq, bytes FROM checkpoint_files ORDER BY seq",
            "read checkpoint files",
        )?;
        for (seq, bytes) in files {
            let path = self.checkpoints_file(seq);
            let blob = read_records(&path, bytes)?;
            let records = decode_checkpoints(&blob).map_err(|detail| StoreError::Corrupt {
                what: "checkpoint file",
                eip: path.display().to_string(),
                detail,
            })?;
            for (id, payload) in records {
                if self.checkpoint_seq.get(&id) == Some(&seq) {
                    let s = postcard::from_bytes::<Series>(payload)
                        .map_err(|e| corrupt(id, e.to_string()))?;
                    series.insert(id, s.with_calendar(calendar));
                }
            }
        }
        let oldest = series
            .values()
            .map(|s| s.last_start().unwrap_or(i64::MIN))
            .min()
            .unwrap_or(i64::MAX);
        // Replay the rounds since the oldest checkpoint (at most about a day: checkpoints are
        // staggered daily). A sample at or before a series' checkpoint is already in it.
        if !series.is_empty() {
            let mut stmt = self
                .conn
                .prepare("SELECT boundary, seq, bytes FROM rounds WHERE boundary > ?1 ORDER BY seq")
                .map_err(sql("replay samples"))?;
            let mut rows = stmt.query([oldest]).map_err(sql("replay samples"))?;
            while let Some(row) = rows.next().map_err(sql("replay samples"))? {
                let boundary: i64 = row.get(0).map_err(sql("replay samples"))?;
                let seq: i64 = row.get(1).map_err(sql("replay samples"))?;
                let bytes: i64 = row.get(2).map_err(sql("replay samples"))?;
                let blob = read_records(&self.samples_file(seq), bytes)?;
                for (id, sample) in decode_samples(&blob, boundary) {
                    if let Some(s) = series.get_mut(&id)
                        && s.last_start().is_none_or(|last| sample.start > last)
                    {
                        s.push(sample).map_err(|e| StoreError::Corrupt {
                            what: "sample",
                            eip: id.to_string(),
                            detail: e.to_string(),
                        })?;
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (id, mut s) in series {
            // Anything that closed during the replay was committed when it first closed.
            let _ = s.take_closed();
            out.push((self.addresses[&id], s));
        }
        Ok(out)
    }

    fn samples_file(&self, seq: i64) -> PathBuf {
        self.files.join(format!("{seq:012}.samples"))
    }

    fn snapshot_file(&self, seq: i64) -> PathBuf {
        self.files.join(format!("{seq:012}.snapshot"))
    }

    fn checkpoints_file(&self, seq: i64) -> PathBuf {
        self.files.join(format!("{seq:012}.checkpoints"))
    }

    /// The store's id of `eip`, if a committed round has registered it.
    pub fn id_of(&self, eip: &IpAddr) -> Option<u32> {
        self.ids.get(eip).copied()
    }

    /// The id the next new EIP gets.
    pub fn next_id(&self) -> u32 {
        self.ids.len() as u32 + 1
    }

    /// Commits one round atomically. On error nothing is written.
    pub fn commit_round(&mut self, round: RoundRecords<'_>) -> Result<(), StoreError> {
        self.commit(round, None)
    }

    /// Commits an EIP's last round (its final samples and figures, and the snapshot of every
    /// other EIP) and forgets its checkpoint, in one transaction.
    pub fn commit_removal(
        &mut self,
        round: RoundRecords<'_>,
        eip: IpAddr,
    ) -> Result<(), StoreError> {
        self.commit(round, Some(eip))
    }

    fn commit(
        &mut self,
        round: RoundRecords<'_>,
        forget: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        let RoundRecords {
            host,
            boundary,
            samples,
            snapshot,
            new_eips,
            closed,
            checkpoints,
        } = round;
        let fresh: HashMap<IpAddr, u32> = new_eips.iter().map(|(id, eip)| (*eip, *id)).collect();
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
        std::fs::File::open(&self.files)?.sync_all()?;
        let previous_snapshot: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM snapshot WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(sql("read snapshot"))?;
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
                "INSERT INTO rounds (seq, boundary, host, bytes) VALUES (?1, ?2, ?3, ?4)",
                params![seq, boundary, host, samples.len() as i64],
            )
            .map_err(sql("write samples"))?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO snapshot (id, seq, boundary, bytes) VALUES (1, ?1, ?2, ?3)",
            params![seq, boundary, snapshot.len() as i64],
        )
        .map_err(sql("write snapshot"))?;
        write_closed(&tx, &id, closed)?;
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
            for (eip, _) in checkpoints {
                let eid = id(eip);
                refs.execute(params![eid % self.rotation, eid, seq])
                    .map_err(sql("write checkpoints"))?;
                if self.legacy_checkpoints {
                    legacy
                        .execute([id(eip)])
                        .map_err(sql("write checkpoints"))?;
                }
            }
        }
        if let Some(eip) = forget {
            let eid = id(&eip);
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
            .chain(forget.map(|eip| (id(&eip), None)))
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
        for (eid, eip) in new_eips {
            self.ids.insert(*eip, *eid);
            self.addresses.insert(*eid, *eip);
        }
        Ok(())
    }

    /// Writes every sample as `eip,interval_start,bytes_in,bytes_out,host,state` (the input of
    /// `eip-meter compute`), round by round; each EIP's rows are in time order.
    pub fn export_samples(&self, mut out: impl Write) -> Result<u64, StoreError> {
        writeln!(out, "eip,interval_start,bytes_in,bytes_out,host,state")?;
        let mut n = 0;
        self.for_each_sample(|eip, s, host| {
            let at = chrono::DateTime::from_timestamp(s.start, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            let state = match s.state {
                SampleState::Measured => "measured",
                SampleState::Partial => "partial",
            };
            writeln!(
                out,
                "{eip},{at},{},{},{host},{state}",
                s.inbound_bytes, s.outbound_bytes
            )?;
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    fn for_each_sample(
        &self,
        mut f: impl FnMut(IpAddr, &Sample, &str) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT host, seq, bytes, boundary FROM rounds ORDER BY seq")
            .map_err(sql("read samples"))?;
        let mut rows = stmt.query([]).map_err(sql("read samples"))?;
        while let Some(row) = rows.next().map_err(sql("read samples"))? {
            let host: String = row.get(0).map_err(sql("read samples"))?;
            let seq: i64 = row.get(1).map_err(sql("read samples"))?;
            let bytes: i64 = row.get(2).map_err(sql("read samples"))?;
            let boundary: i64 = row.get(3).map_err(sql("read samples"))?;
            let blob = read_records(&self.samples_file(seq), bytes)?;
            for (id, s) in decode_samples(&blob, boundary) {
                let eip = *self.addresses.get(&id).ok_or_else(|| StoreError::Corrupt {
                    what: "sample",
                    eip: id.to_string(),
                    detail: "unknown EIP id".into(),
                })?;
                f(eip, &s, &host)?;
            }
        }
        Ok(())
    }

    /// Records that `uplink` is not metered from `from` on (an open gap; an uplink has at most
    /// one, whose start only moves earlier).
    pub fn gap_opened(&self, uplink: &str, cause: &str, from: f64) -> Result<(), StoreError> {
        let updated = self
            .conn
            .execute(
                "UPDATE metering_gaps SET from_s = min(from_s, ?2) WHERE uplink = ?1 AND to_s IS NULL",
                params![uplink, from],
            )
            .map_err(sql("record gap"))?;
        if updated == 0 {
            self.conn
                .execute(
                    "INSERT INTO metering_gaps (uplink, cause, from_s) VALUES (?1, ?2, ?3)",
                    params![uplink, cause, from],
                )
                .map_err(sql("record gap"))?;
        }
        Ok(())
    }

    /// Records that `uplink` was not metered during `[from, to)`: closes its open gap (whose
    /// start is the earlier of the two), or records the whole gap if none was open.
    pub fn gap_closed(
        &self,
        uplink: &str,
        cause: &str,
        from: f64,
        to: f64,
    ) -> Result<(), StoreError> {
        let updated = self
            .conn
            .execute(
                "UPDATE metering_gaps SET from_s = min(from_s, ?2), to_s = ?3 WHERE uplink = ?1 AND to_s IS NULL",
                params![uplink, from, to],
            )
            .map_err(sql("record gap"))?;
        if updated == 0 {
            self.conn
                .execute(
                    "INSERT INTO metering_gaps (uplink, cause, from_s, to_s) VALUES (?1, ?2, ?3, ?4)",
                    params![uplink, cause, from, to],
                )
                .map_err(sql("record gap"))?;
        }
        Ok(())
    }

    /// The gaps still open or ending after `after` (UNIX seconds), oldest first.
    pub fn gaps_after(&self, after: f64) -> Result<Vec<GapRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT uplink, cause, from_s, to_s FROM metering_gaps
                 WHERE to_s IS NULL OR to_s > ?1 ORDER BY id",
            )
            .map_err(sql("read gaps"))?;
        let rows = stmt
            .query_map(params![after], |r| {
                Ok(GapRecord {
                    uplink: r.get(0)?,
                    cause: r.get(1)?,
                    from: r.get(2)?,
                    to: r.get(3)?,
                })
            })
            .map_err(sql("read gaps"))?;
        rows.collect::<Result<_, _>>().map_err(sql("read gaps"))
    }

    /// Number of samples and total bytes of one EIP (for tests and quick checks).
    pub fn sample_totals(&self, eip: IpAddr) -> Result<(u64, u64, u64), StoreError> {
        let mut t = (0, 0, 0);
        self.for_each_sample(|e, s, _| {
            if e == eip {
                t = (t.0 + 1, t.1 + s.inbound_bytes, t.2 + s.outbound_bytes);
            }
            Ok(())
        })?;
        Ok(t)
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

/// All `(integer id, text)` rows of a two-column query.
/// Every row of a two-column query.
fn pair_rows<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
    conn: &Connection,
    query: &str,
    op: &'static str,
) -> Result<Vec<(A, B)>, StoreError> {
    let mut stmt = conn.prepare(query).map_err(sql(op))?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql(op))?
        .collect::<Result<_, _>>()
        .map_err(sql(op))
}

fn parse_eip(s: &str) -> Result<IpAddr, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        what: "address",
        eip: s.to_owned(),
        detail: "not an IP address".into(),
    })
}

#[cfg(test)]
mod tests {
    use metering_common::{DirectionCounters, TrafficCounters};

    use super::*;
    use crate::{billing::series::SeriesOptions, sampling::Sampler};

    const T0: i64 = 1_793_462_400; // 2026-11-01T00:00:00+08:00

    fn counters(i: u64, o: u64) -> TrafficCounters {
        TrafficCounters {
            inbound: DirectionCounters {
                bytes: i,
                packets: 0,
            },
            outbound: DirectionCounters {
                bytes: o,
                packets: 0,
            },
        }
    }

    fn sampler(path: &Path) -> Sampler {
        let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
        Sampler::open(
            cal,
            SeriesOptions::default(),
            "r1".into(),
            Store::open(path).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_reopened_store_continues_without_loss_or_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let eip: IpAddr = "203.0.113.10".parse().unwrap();
        {
            let mut s = sampler(&db);
            s.eip_added(eip, T0);
            s.round(T0 + 300, &[(eip, counters(1000, 10))]).unwrap();
            s.round(T0 + 600, &[(eip, counters(3000, 30))]).unwrap();
            // A replayed round is a no-op.
            assert_eq!(
                s.round(T0 + 600, &[(eip, counters(3000, 30))])
                    .unwrap()
                    .samples,
                0
            );
        } // "crash": dropped without checkpoint_all
        let mut s = sampler(&db);
        // Down for two intervals; the kernel kept counting.
        s.round(T0 + 1500, &[(eip, counters(9000, 90))]).unwrap();
        let (n, i, o) = s.store().sample_totals(eip).unwrap();
        assert_eq!((n, i, o), (5, 9000, 90));
        let mut csv = Vec::new();
        assert_eq!(s.store().export_samples(&mut csv).unwrap(), 5);
        assert!(String::from_utf8(csv).unwrap().starts_with("eip,interval_start,bytes_in,bytes_out,host,state\n203.0.113.10,2026-10-31T16:00:00+00:00,1000,10,r1,partial\n"));
    }

    #[test]
    fn files_of_an_uncommitted_round_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let eip: IpAddr = "203.0.113.10".parse().unwrap();
        {
            let mut s = sampler(&db);
            s.eip_added(eip, T0);
            s.round(T0 + 300, &[(eip, counters(1000, 10))]).unwrap();
        }
        // A crash between writing a round's files and committing it leaves these behind.
        let rounds = dir.path().join("rounds");
        std::fs::write(rounds.join("000000000007.samples"), b"junk").unwrap();
        std::fs::write(rounds.join("000000000007.snapshot"), b"junk").unwrap();
        let s = sampler(&db);
        assert!(!rounds.join("000000000007.samples").exists());
        assert!(!rounds.join("000000000007.snapshot").exists());
        assert_eq!(s.store().sample_totals(eip).unwrap(), (1, 1000, 10));
    }

    #[test]
    fn a_restart_after_a_clean_shutdown_never_reuses_the_committed_snapshot_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let eip: IpAddr = "203.0.113.10".parse().unwrap();
        {
            let mut s = sampler(&db);
            s.eip_added(eip, T0);
            s.round(T0 + 300, &[(eip, counters(1000, 10))]).unwrap();
            s.checkpoint_all().unwrap(); // a commit with a snapshot and no samples
        }
        let store = Store::open(&db).unwrap();
        let committed: i64 = store
            .conn
            .query_row("SELECT seq FROM snapshot WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        // The next round writes its files before committing: they must not be the committed ones.
        assert!(
            store.next_seq > committed,
            "next {} <= committed {committed}",
            store.next_seq
        );
        assert!(store.snapshot_file(committed).exists());
    }

    #[test]
    fn removing_an_eip_forgets_its_checkpoint_in_the_same_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let (a, b): (IpAddr, IpAddr) = (
            "203.0.113.10".parse().unwrap(),
            "203.0.113.11".parse().unwrap(),
        );
        let mut s = sampler(&db);
        s.eip_added(a, T0);
        s.eip_added(b, T0);
        s.round(T0 + 300, &[(a, counters(10, 1)), (b, counters(20, 2))])
            .unwrap();
        s.eip_removed(b, T0 + 400, &counters(50, 5)).unwrap();
        let checkpoints: i64 = s
            .store()
            .conn
            .query_row("SELECT COUNT(*) FROM checkpoint_refs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(checkpoints, 1);
        assert_eq!(s.store().sample_totals(b).unwrap().1, 50);
        drop(s);
        assert_eq!(sampler(&db).store().load_snapshots().unwrap().len(), 1);
    }

    fn checkpoint_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("rounds"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".checkpoints"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn checkpoints_are_restored_from_files_and_unused_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let (a, b): (IpAddr, IpAddr) = (
            "203.0.113.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        );
        {
            let mut s = sampler(&db);
            s.eip_added(a, T0);
            s.eip_added(b, T0);
            // New series are checkpointed in their first round.
            s.round(T0 + 300, &[(a, counters(10, 1)), (b, counters(20, 2))])
                .unwrap();
            assert_eq!(checkpoint_files(dir.path()), ["000000000001.checkpoints"]);
            s.round(T0 + 600, &[(a, counters(30, 3)), (b, counters(60, 6))])
                .unwrap();
            // Both EIPs' latest checkpoints move to the shutdown's file; the first is unused.
            s.checkpoint_all().unwrap();
            assert_eq!(checkpoint_files(dir.path()), ["000000000003.checkpoints"]);
        }
        std::fs::write(
            dir.path().join("rounds/000000000009.checkpoints"),
            b"uncommitted",
        )
        .unwrap();
        let store = Store::open(&db).unwrap();
        assert_eq!(checkpoint_files(dir.path()), ["000000000003.checkpoints"]);
        let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
        let mut series = store.load_series(cal).unwrap();
        series.sort_by_key(|(eip, _)| *eip);
        let restored: Vec<(IpAddr, Option<i64>)> = series
            .iter()
            .map(|(eip, s)| (*eip, s.last_start()))
            .collect();
        assert_eq!(restored, [(a, Some(T0 + 300)), (b, Some(T0 + 300))]);
    }

    #[test]
    fn json_checkpoint_rows_of_the_earlier_format_are_read_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let eip: IpAddr = "203.0.113.10".parse().unwrap();
        {
            let mut s = sampler(&db);
            s.eip_added(eip, T0);
            s.round(T0 + 300, &[(eip, counters(10, 1))]).unwrap();
        }
        // Rewrite the store as the earlier format held it: the checkpoint as a JSON row.
        let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
        let store = Store::open(&db).unwrap();
        let (_, series) = store.load_series(cal).unwrap().pop().unwrap();
        let json = serde_json::to_string(&series).unwrap();
        store
            .conn
            .execute_batch("DELETE FROM checkpoint_refs; DELETE FROM checkpoint_files;")
            .unwrap();
        store
            .conn
            .execute(
                "INSERT INTO checkpoints (eip, series) VALUES (1, ?1)",
                [json],
            )
            .unwrap();
        drop(store);

        let mut s = sampler(&db);
        s.round(T0 + 600, &[(eip, counters(30, 3))]).unwrap();
        // The round continued the JSON-restored series (one more sample, none twice)...
        assert_eq!(s.store().sample_totals(eip).unwrap(), (2, 30, 3));
        s.checkpoint_all().unwrap();
        // ...and its next checkpoint replaced the row.
        let rows: i64 = s
            .store()
            .conn
            .query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
        let (_, restored) = s.store().load_series(cal).unwrap().pop().unwrap();
        assert_eq!(restored.last_start(), Some(T0 + 300));
    }

    #[test]
    fn settings_cannot_change_under_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        drop(sampler(&db));
        let cal = Calendar::new("UTC", 300).unwrap();
        let err = Sampler::open(
            cal,
            SeriesOptions::default(),
            "r1".into(),
            Store::open(&db).unwrap(),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .contains("timezone = Asia/Shanghai, the config says UTC"),
            "{err}"
        );
    }
}
