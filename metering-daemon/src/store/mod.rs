//! The local sample store (SQLite): raw samples, the last counter snapshot per EIP, series
//! checkpoints, and closed daily and monthly figures.
//!
//! Each sampling round is one transaction: its samples, the full counter snapshot they were
//! computed from, the EIPs it registers, the series checkpoints due that round and the figures
//! that closed are written as records to fsynced files beside the database
//! (`rounds/<seq>.samples`, `.snapshot`, `.eips`, `.checkpoints`, `.figures`) and made part of
//! the store by one SQLite transaction that records them. Only small rows go through SQLite,
//! never one per EIP on the paths that touch every EIP: a million new EIPs' registrations,
//! presence and checkpoint references were 3,000,000 rows (2.5 s of their first round), and a
//! month end's figures 2,000,000 JSON rows (4 s); as files each is one sequential write, and the
//! checkpoints are encoded and written on a thread beside the rest; closed figures are spooled
//! to their file by a thread while the round still computes (`spool.rs`). After a crash
//! (even `kill -9` mid-round) the next round starts from the last committed snapshot: no byte
//! is lost (the kernel kept counting) and no sample is written twice; files of an uncommitted
//! round are removed at open.
//! `eip-meter samples` exports the raw samples in the CSV format `eip-meter compute` reads.
//!
//! | file         | job                                                                    |
//! |--------------|------------------------------------------------------------------------|
//! | `records.rs` | the fixed-size sample and snapshot records, checkpoint and figure records, files |
//! | `commit.rs`  | one round (or an EIP's removal) in one transaction                      |
//! | `load.rs`    | what a restart restores: snapshots, series (checkpoints + replay), groups |
//! | `figures.rs` | closed daily and monthly figures, for reports                           |
//! | `export.rs`  | the samples as CSV (the input of `eip-meter compute`)                   |
//! | `gaps.rs`    | the uplinks' metering gaps                                              |
//! | `inventory.rs` | the inventory as applied, its history and the audit trail             |
//! | `registrations.rs` | the EIPs a commit registers, and the presence ranges they opened   |
//! | `spool.rs`   | closed figures written while their round still computes                 |

mod commit;
mod export;
mod figures;
mod gaps;
mod inventory;
mod load;
pub mod postgres;
pub mod read_back;
mod records;
mod registrations;
mod ship;
mod spool;
pub mod staging;
#[cfg(test)]
mod tests;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use rusqlite::{Connection, OptionalExtension};

pub use commit::{Figures, RoundKind, RoundRecords};
pub use figures::{StoredFigures, Subject};
pub use gaps::GapRecord;
pub use inventory::{AuditRow, InventoryChange, InventoryEntry, InventoryRecord, InventoryRow};
pub use read_back::{ReadBack, RecordFile, read_back};
pub use records::{SAMPLE_RECORD, SNAPSHOT_RECORD, encode_figures, encode_sample, encode_snapshot};
pub use ship::{CommittedRound, PresenceRange};
pub use spool::FiguresSpool;

use crate::{FastMap, billing::calendar::Calendar};

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

pub(crate) fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
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
-- rows: a round dirties a page or two, not every page of the table. A negative seq: the
-- EIP's checkpoint was forgotten by that commit (it overrides a range below).
CREATE TABLE IF NOT EXISTS checkpoint_refs (
    turn INTEGER NOT NULL, eip INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (turn, eip)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoint_files (seq INTEGER PRIMARY KEY, bytes INTEGER NOT NULL);
-- A run of consecutive ids all checkpointed in one file (a million new EIPs, a shutdown):
-- one row instead of a row each. An EIP's latest checkpoint is in the highest seq that a
-- `checkpoint_refs` row or a range gives it.
CREATE TABLE IF NOT EXISTS checkpoint_ranges (
    seq INTEGER NOT NULL, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL,
    PRIMARY KEY (seq, first_id));
-- EIPs registered by a commit: rounds/<seq>.eips holds the addresses of ids
-- first_id .. first_id + count - 1, each with the presence range it opened (which then has no
-- `presence` row until it closes). `eips` holds those registered before these files.
CREATE TABLE IF NOT EXISTS eip_files (
    seq INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, count INTEGER NOT NULL,
    bytes INTEGER NOT NULL);
-- Closed figures of EIPs: rounds/<seq>.figures, one file per round that closed any (a later
-- record of the same EIP and period replaces an earlier one). The two tables after it hold
-- those of stores written before figure files, still read.
CREATE TABLE IF NOT EXISTS figure_files (seq INTEGER PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS daily_figures (
    eip INTEGER NOT NULL, day TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (day, eip));
CREATE TABLE IF NOT EXISTS monthly_figures (
    eip INTEGER NOT NULL, month TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (month, eip));
-- The shared bandwidths' series, all of them as of the round in rounds/<seq>.groups.
CREATE TABLE IF NOT EXISTS group_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS group_daily_figures (
    grp TEXT NOT NULL, day TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (day, grp));
CREATE TABLE IF NOT EXISTS group_monthly_figures (
    grp TEXT NOT NULL, month TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (month, grp));
-- When an uplink was not metered: [from_s, to_s) in UNIX seconds, to_s NULL while it lasts.
-- Kept for audits; the gaps that reach past the last round also survive a restart, so the
-- samples of every interval they touch are marked partial whichever daemon commits them.
CREATE TABLE IF NOT EXISTS metering_gaps (
    id INTEGER PRIMARY KEY, uplink TEXT NOT NULL, cause TEXT NOT NULL,
    from_s REAL NOT NULL, to_s REAL);
-- When each EIP was in this host's inventory: interval starts [from_s, to_s), to_s NULL while
-- it is. The commit that opens or closes a range records its seq, so the billing store gets
-- the range with that round.
CREATE TABLE IF NOT EXISTS presence (
    eip INTEGER NOT NULL, from_s INTEGER NOT NULL, to_s INTEGER,
    opened_seq INTEGER NOT NULL, closed_seq INTEGER, PRIMARY KEY (eip, from_s));
-- Every change of an EIP's or shared bandwidth's bandwidth, group or state, with the time it
-- took effect; seq: the commit it is shipped with.
CREATE TABLE IF NOT EXISTS inventory_history (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL,
    effective_from INTEGER NOT NULL, bandwidth_mbps INTEGER, grp TEXT, state TEXT NOT NULL,
    seq INTEGER NOT NULL);
-- The inventory as last applied, each subject with its owner (`file` or `api`): the API's
-- subjects come back from here after a restart; the file's are compared with the file at start.
CREATE TABLE IF NOT EXISTS inventory (
    kind TEXT NOT NULL, subject TEXT NOT NULL, source TEXT NOT NULL,
    bandwidth_mbps INTEGER, inbound_mbps INTEGER, outbound_mbps INTEGER, grp TEXT,
    state TEXT NOT NULL, effective_from INTEGER NOT NULL,
    PRIMARY KEY (kind, subject)) WITHOUT ROWID;
-- Every change of the inventory: when it was applied (ms) and took effect (s), by whom
-- (source, the caller's uid), the subject before and after (JSON); seq: the commit it is
-- shipped with.
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, effective_from INTEGER NOT NULL,
    source TEXT NOT NULL, uid INTEGER, kind TEXT NOT NULL, subject TEXT NOT NULL,
    before TEXT, after TEXT, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_subject ON audit (subject, id);
CREATE INDEX IF NOT EXISTS audit_by_seq ON audit (seq);
CREATE INDEX IF NOT EXISTS inventory_history_by_seq ON inventory_history (seq);
-- The last round the billing store acknowledged (its own watermark is the truth).
CREATE TABLE IF NOT EXISTS ship_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, at INTEGER NOT NULL);
";

/// Columns added to `rounds` after its first version: what kind of round, its coverage and
/// earliest interval (for the billing store). Old rows read as complete sampling rounds.
const ROUND_COLUMNS: [(&str, &str); 2] = [
    ("kind", "TEXT NOT NULL DEFAULT 'complete'"),
    ("first_start", "INTEGER"),
];

pub struct Store {
    conn: Connection,
    /// `<state_dir>/rounds/`: `<seq>.samples` and `<seq>.snapshot` files, referenced by rows.
    files: PathBuf,
    next_seq: i64,
    ids: FastMap<IpAddr, u32>,
    /// Every registered EIP by id: ids are dense from 1, so the address of id `n` is at `n - 1`.
    addresses: Vec<IpAddr>,
    /// Whether JSON checkpoint rows of the earlier format remain (each is dropped when its
    /// EIP is next checkpointed).
    legacy_checkpoints: bool,
    /// The file (seq) holding each EIP's latest checkpoint, as `checkpoint_refs` says.
    checkpoint_seq: CheckpointIndex,
    /// How many EIPs' latest checkpoint each file holds: a file at zero is deleted.
    checkpoint_live: std::collections::BTreeMap<i64, u64>,
    /// Rounds per day: the checkpoint rotation's length (the `turn` of `checkpoint_refs`).
    rotation: u32,
    /// Bytes the last commit wrote to its record files.
    last_commit_bytes: u64,
    /// The database file, for its size.
    path: PathBuf,
}

impl Store {
    /// Opens the store as its owner (the daemon): files a crashed round left behind are removed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, true)
    }

    /// Opens the store to read it while a daemon may be writing it (`samples`, `report`,
    /// `plot`): nothing is removed, since a file without its row may be a round being committed.
    pub fn open_reader(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, owner: bool) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // The daemon's rounds, the shipper's acknowledgements and pruning, and `report` each
        // have a connection: a writer waits for another's short transaction instead of failing.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        // WAL + synchronous=FULL: a committed round survives power loss.
        // 64 KiB pages: a round is a few large blobs, and big pages mean short overflow chains.
        // (Takes effect only when the file is created.)
        conn.execute_batch(
            "PRAGMA page_size = 65536; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
        )
        .map_err(open_err)?;
        let fresh_inventory: bool = conn
            .query_row(
                "SELECT count(*) = 0 FROM sqlite_master WHERE name = 'inventory'",
                [],
                |r| r.get(0),
            )
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let inventory_columns = pair_rows::<i64, String>(
            &conn,
            "SELECT cid, name FROM pragma_table_info('inventory')",
            "read inventory columns",
        )?;
        for (name, kind) in inventory::INVENTORY_COLUMNS {
            if !inventory_columns.iter().any(|(_, c)| c == name) {
                conn.execute_batch(&format!("ALTER TABLE inventory ADD COLUMN {name} {kind}"))
                    .map_err(open_err)?;
            }
        }
        let history_columns = pair_rows::<i64, String>(
            &conn,
            "SELECT cid, name FROM pragma_table_info('inventory_history')",
            "read history columns",
        )?;
        for (name, kind) in inventory::HISTORY_COLUMNS {
            if !history_columns.iter().any(|(_, c)| c == name) {
                conn.execute_batch(&format!(
                    "ALTER TABLE inventory_history ADD COLUMN {name} {kind}"
                ))
                .map_err(open_err)?;
            }
        }
        if fresh_inventory {
            conn.execute_batch(inventory::SEED_INVENTORY)
                .map_err(open_err)?;
        }
        let columns = pair_rows::<i64, String>(
            &conn,
            "SELECT cid, name FROM pragma_table_info('rounds')",
            "read round columns",
        )?;
        for (name, kind) in ROUND_COLUMNS {
            if !columns.iter().any(|(_, c)| c == name) {
                conn.execute_batch(&format!("ALTER TABLE rounds ADD COLUMN {name} {kind}"))
                    .map_err(open_err)?;
            }
        }
        let files = path.with_file_name("rounds");
        std::fs::create_dir_all(&files)?;
        let snapshot_seq: Option<i64> = conn
            .query_row("SELECT seq FROM snapshot WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(open_err)?;
        let groups_seq: Option<i64> = conn
            .query_row("SELECT seq FROM group_state WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(open_err)?;
        // Past every committed sequence number, of rounds *and* of the snapshot (a commit without
        // samples, such as the shutdown checkpoint, has only the latter): a new round must never
        // write over a file a committed row refers to.
        let last_round: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM rounds", [], |r| r.get(0))
            .map_err(open_err)?;
        let figure_files = file_seqs(&conn, "figure_files", "read figure files")?;
        let eip_files = file_seqs(&conn, "eip_files", "read registration files")?;
        let next_seq = last_round
            .max(eip_files.last().copied().unwrap_or(0))
            .max(snapshot_seq.unwrap_or(0))
            .max(figure_files.last().copied().unwrap_or(0))
            + 1;
        let mut checkpoint_live: std::collections::BTreeMap<i64, u64> = pair_rows::<i64, i64>(
            &conn,
            "SELECT seq, bytes FROM checkpoint_files",
            "read checkpoint files",
        )?
        .into_iter()
        .map(|(seq, _)| (seq, 0))
        .collect();
        let checkpoint_seq = CheckpointIndex::from(latest_checkpoints(&conn)?);
        for seq in checkpoint_seq.files() {
            *checkpoint_live.entry(seq).or_default() += 1;
        }
        let legacy_checkpoints: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM checkpoints)", [], |r| {
                r.get(0)
            })
            .map_err(open_err)?;
        // Files no committed row refers to were written by a round that crashed before its
        // commit: remove them.
        for entry in std::fs::read_dir(&files)?.flatten().filter(|_| owner) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = match name.split_once('.') {
                Some((seq, "samples")) => seq.parse::<i64>().map_or(true, |s| s >= next_seq),
                Some((seq, "snapshot")) => seq.parse::<i64>().ok() != snapshot_seq,
                Some((seq, "checkpoints")) => seq
                    .parse::<i64>()
                    .map_or(true, |s| !checkpoint_live.contains_key(&s)),
                Some((seq, "groups")) => seq.parse::<i64>().ok() != groups_seq,
                Some((seq, "eips")) => seq.parse::<i64>().map_or(true, |s| !eip_files.contains(&s)),
                Some((seq, "figures")) => seq
                    .parse::<i64>()
                    .map_or(true, |s| !figure_files.contains(&s)),
                Some((_, "spool")) => true,
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
            ids: FastMap::default(),
            addresses: Vec::new(),
            legacy_checkpoints,
            checkpoint_seq,
            checkpoint_live,
            rotation: 288,
            last_commit_bytes: 0,
            path: path.to_owned(),
        };
        store.load_addresses()?;
        Ok(store)
    }

    /// Reads the EIP ids added since this connection last looked (all of them at open): a
    /// reader kept open beside the daemon sees the EIPs the daemon adds later.
    pub fn load_addresses(&mut self) -> Result<(), StoreError> {
        let known = self.addresses.len() as i64;
        let registered = self.registered_after(known)?;
        self.ids.reserve(registered.len());
        self.addresses.reserve(registered.len());
        for (id, eip) in registered {
            if i64::from(id) != self.addresses.len() as i64 + 1 {
                return Err(StoreError::Corrupt {
                    what: "registration",
                    eip: eip.to_string(),
                    detail: format!("id {id} after {} registered EIPs", self.addresses.len()),
                });
            }
            self.ids.insert(eip, id);
            self.addresses.push(eip);
        }
        Ok(())
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

    /// This store's identity, generated once: the billing store tells two machines that claim
    /// the same host name apart by it.
    pub fn instance(&self) -> Result<String, StoreError> {
        let stored: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql("read instance"))?;
        if let Some(id) = stored {
            return Ok(id);
        }
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?1)",
                [&id],
            )
            .map_err(sql("write instance"))?;
        self.instance()
    }

    pub(super) fn samples_file(&self, seq: i64) -> PathBuf {
        self.files.join(format!("{seq:012}.samples"))
    }

    pub(super) fn snapshot_file(&self, seq: i64) -> PathBuf {
        self.files.join(format!("{seq:012}.snapshot"))
    }

    pub(super) fn registrations_file(&self, seq: i64) -> PathBuf {
        self.files.join(format!("{seq:012}.eips"))
    }

    /// A spool for the next commit's closed figures, written while the round computes.
    pub fn figures_spool(&self) -> FiguresSpool {
        FiguresSpool::start(self.files.join("figures.spool"))
    }

    pub(super) fn figures_file(&self, seq: i64) -> PathBuf {
        self.files.join(format!("{seq:012}.figures"))
    }

    pub(super) fn groups_file(&self, seq: i64) -> PathBuf {
        self.files.join(format!("{seq:012}.groups"))
    }

    /// Bytes the store holds on disk: the database and its log, and every record file
    /// (samples, snapshot, checkpoints, groups, figures).
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        let live: i64 = self
            .conn
            .query_row(
                // Summed each time: the shipper prunes rounds through a connection of its own.
                "SELECT (SELECT COALESCE(SUM(bytes), 0) FROM rounds)
                      + (SELECT COALESCE(SUM(bytes), 0) FROM snapshot)
                      + (SELECT COALESCE(SUM(bytes), 0) FROM checkpoint_files)
                      + (SELECT COALESCE(SUM(bytes), 0) FROM group_state)
                      + (SELECT COALESCE(SUM(bytes), 0) FROM figure_files)
                      + (SELECT COALESCE(SUM(bytes), 0) FROM eip_files)",
                [],
                |r| r.get(0),
            )
            .map_err(sql("read store size"))?;
        let file_len = |suffix: &str| {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            std::fs::metadata(p).map_or(0, |m| m.len())
        };
        Ok(live as u64 + file_len("") + file_len("-wal"))
    }

    /// Bytes the last commit wrote to its record files.
    pub fn last_commit_bytes(&self) -> u64 {
        self.last_commit_bytes
    }

    pub(super) fn checkpoints_file(&self, seq: i64) -> PathBuf {
        self.files.join(format!("{seq:012}.checkpoints"))
    }

    /// The store's id of `eip`, if a committed round has registered it.
    pub fn id_of(&self, eip: &IpAddr) -> Option<u32> {
        self.ids.get(eip).copied()
    }

    /// The address of EIP `id`.
    pub(super) fn address_of(&self, id: u32) -> Option<IpAddr> {
        self.addresses.get((id as usize).checked_sub(1)?).copied()
    }

    /// The id the next new EIP gets.
    pub fn next_id(&self) -> u32 {
        self.ids.len() as u32 + 1
    }
}

/// The file (seq) holding each EIP's latest checkpoint, by id: ids are dense from 1, so a vector
/// (a million new EIPs are a million appends, not a million hash inserts).
#[derive(Debug, Default)]
pub(super) struct CheckpointIndex(Vec<i64>);

impl CheckpointIndex {
    pub(super) fn get(&self, id: u32) -> Option<i64> {
        self.0.get(id as usize).copied().filter(|&seq| seq > 0)
    }

    pub(super) fn set(&mut self, id: u32, seq: Option<i64>) {
        let i = id as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] = seq.unwrap_or(0);
    }

    /// The file of every EIP that has a checkpoint.
    pub(super) fn files(&self) -> impl Iterator<Item = i64> + '_ {
        self.0.iter().copied().filter(|&seq| seq > 0)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.files().count()
    }
}

impl From<FastMap<u32, i64>> for CheckpointIndex {
    fn from(latest: FastMap<u32, i64>) -> Self {
        let mut index = Self::default();
        index
            .0
            .reserve(latest.keys().max().map_or(0, |&id| id as usize + 1));
        for (id, seq) in latest {
            index.set(id, Some(seq));
        }
        index
    }
}

/// Where each EIP's latest checkpoint is: the highest seq its `checkpoint_refs` row or a
/// `checkpoint_ranges` row gives it; none when that is a forgetting (negative) row.
fn latest_checkpoints(conn: &Connection) -> Result<FastMap<u32, i64>, StoreError> {
    let mut latest: FastMap<u32, i64> = pair_rows::<u32, i64>(
        conn,
        "SELECT eip, seq FROM checkpoint_refs",
        "read checkpoint refs",
    )?
    .into_iter()
    .collect();
    let mut stmt = conn
        .prepare("SELECT seq, first_id, last_id FROM checkpoint_ranges")
        .map_err(sql("read checkpoint ranges"))?;
    let ranges = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, u32>(2)?,
            ))
        })
        .map_err(sql("read checkpoint ranges"))?;
    for range in ranges {
        let (seq, first, last) = range.map_err(sql("read checkpoint ranges"))?;
        latest.reserve((last - first + 1) as usize);
        for id in first..=last {
            let at = latest.entry(id).or_insert(seq);
            if at.abs() < seq {
                *at = seq;
            }
        }
    }
    latest.retain(|_, seq| *seq > 0);
    Ok(latest)
}

/// The commits whose record files a `<table>` (seq, .., bytes) refers to.
fn file_seqs(
    conn: &Connection,
    table: &str,
    op: &'static str,
) -> Result<std::collections::BTreeSet<i64>, StoreError> {
    Ok(
        pair_rows::<i64, i64>(conn, &format!("SELECT seq, bytes FROM {table}"), op)?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect(),
    )
}

/// Every row of a two-column query.
pub(super) fn pair_rows<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
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

pub(super) fn parse_eip(s: &str) -> Result<IpAddr, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        what: "address",
        eip: s.to_owned(),
        detail: "not an IP address".into(),
    })
}
