//! The local sample store (SQLite): raw samples, the last counter snapshot per EIP, series
//! checkpoints, and closed daily and monthly figures.
//!
//! Each sampling round is one transaction: its samples (one compact row for the whole round) and
//! the full counter snapshot they were computed from are committed together, so after a crash
//! (even `kill -9` mid-round) the next round starts from the last committed snapshot: no byte is
//! lost (the kernel kept counting) and no sample is written twice.
//! `eip-meter samples` exports the raw samples in the CSV format `eip-meter compute` reads.

use std::{collections::HashMap, io::Write, net::IpAddr, path::Path};

use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    billing::{
        SampleState,
        calendar::Calendar,
        series::{Closed, Sample, Series},
    },
    sampler::Snapshot,
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
    #[error("sample store export: {0}")]
    Export(#[from] std::io::Error),
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { op, source }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS eips (id INTEGER PRIMARY KEY, address TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS rounds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, boundary INTEGER NOT NULL, host TEXT NOT NULL,
    samples BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (eip INTEGER PRIMARY KEY, series TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS daily_figures (
    eip INTEGER NOT NULL, day TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (day, eip));
CREATE TABLE IF NOT EXISTS monthly_figures (
    eip INTEGER NOT NULL, month TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (month, eip));
";

/// Fixed-size little-endian records, so a round of 1,000,000 EIPs is one 33 MB row rather than
/// 1,000,000 rows (a round stays well under a second).
const SAMPLE_RECORD: usize = 4 + 8 + 8 + 8 + 1;
const SNAPSHOT_RECORD: usize = 4 + 8 + 8 + 8;

pub struct Store {
    conn: Connection,
    ids: HashMap<IpAddr, u32>,
    addresses: HashMap<u32, IpAddr>,
}

/// Ids of committed EIPs plus those registered by the round being committed.
struct IdLookup<'a> {
    old: &'a HashMap<IpAddr, u32>,
    fresh: &'a HashMap<IpAddr, u32>,
}

impl IdLookup<'_> {
    fn get(&self, eip: &IpAddr) -> u32 {
        self.old
            .get(eip)
            .or_else(|| self.fresh.get(eip))
            .copied()
            .expect("every EIP of a round is registered first")
    }
}

fn encode_samples(ids: &IdLookup<'_>, samples: &[(IpAddr, Sample)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * SAMPLE_RECORD);
    for (eip, s) in samples {
        out.extend_from_slice(&ids.get(eip).to_le_bytes());
        out.extend_from_slice(&s.start.to_le_bytes());
        out.extend_from_slice(&s.inbound_bytes.to_le_bytes());
        out.extend_from_slice(&s.outbound_bytes.to_le_bytes());
        out.push(match s.state {
            SampleState::Measured => 0,
            SampleState::Partial => 1,
        });
    }
    out
}

fn decode_samples(blob: &[u8]) -> impl Iterator<Item = (u32, Sample)> + '_ {
    blob.chunks_exact(SAMPLE_RECORD).map(|r| {
        let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
        (
            u32::from_le_bytes(r[0..4].try_into().expect("4 bytes")),
            Sample {
                start: u64_at(4) as i64,
                inbound_bytes: u64_at(12),
                outbound_bytes: u64_at(20),
                state: if r[28] == 1 {
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
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let mut store = Self {
            conn,
            ids: HashMap::new(),
            addresses: HashMap::new(),
        };
        let rows: Vec<(u32, String)> = {
            let mut stmt = store
                .conn
                .prepare("SELECT id, address FROM eips")
                .map_err(sql("read EIP ids"))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql("read EIP ids"))?
                .collect::<Result<_, _>>()
                .map_err(sql("read EIP ids"))?
        };
        for (id, address) in rows {
            let eip = parse_eip(&address)?;
            store.ids.insert(eip, id);
            store.addresses.insert(id, eip);
        }
        Ok(store)
    }

    /// Records the interval, time zone and host on first use and refuses different ones later:
    /// samples of different intervals or zones must never mix.
    pub fn check_settings(&self, calendar: &Calendar, host: &str) -> Result<(), StoreError> {
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
        let blob: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT data FROM snapshot WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(sql("read snapshot"))?;
        let mut out = HashMap::new();
        for r in blob.unwrap_or_default().chunks_exact(SNAPSHOT_RECORD) {
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
                    at: u64_at(4) as i64,
                    inbound_bytes: u64_at(12),
                    outbound_bytes: u64_at(20),
                },
            );
        }
        Ok(out)
    }

    /// Every checkpointed series, brought up to date with the samples committed after it.
    pub fn load_series(&self, calendar: Calendar) -> Result<Vec<(IpAddr, Series)>, StoreError> {
        let rows: Vec<(u32, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT eip, series FROM checkpoints")
                .map_err(sql("read checkpoints"))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql("read checkpoints"))?
                .collect::<Result<_, _>>()
                .map_err(sql("read checkpoints"))?
        };
        let mut series: HashMap<u32, Series> = HashMap::new();
        let mut oldest = i64::MAX;
        for (id, json) in rows {
            let s = serde_json::from_str::<Series>(&json)
                .map_err(|e| StoreError::Corrupt {
                    what: "checkpoint",
                    eip: id.to_string(),
                    detail: e.to_string(),
                })?
                .with_calendar(calendar);
            oldest = oldest.min(s.last_start().unwrap_or(i64::MIN));
            series.insert(id, s);
        }
        // Replay the rounds since the oldest checkpoint (at most about a day: checkpoints are
        // staggered daily). A sample at or before a series' checkpoint is already in it.
        if !series.is_empty() {
            let mut stmt = self
                .conn
                .prepare("SELECT samples FROM rounds WHERE boundary > ?1 ORDER BY seq")
                .map_err(sql("replay samples"))?;
            let mut rows = stmt.query([oldest]).map_err(sql("replay samples"))?;
            while let Some(row) = rows.next().map_err(sql("replay samples"))? {
                let blob: Vec<u8> = row.get(0).map_err(sql("replay samples"))?;
                for (id, sample) in decode_samples(&blob) {
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

    /// Commits one round atomically: its samples, the full counter snapshot they were computed
    /// against, closed figures and checkpoints. On error nothing is written.
    pub fn commit_round(
        &mut self,
        host: &str,
        boundary: i64,
        samples: &[(IpAddr, Sample)],
        snapshots: &HashMap<IpAddr, Snapshot>,
        closed: &[(IpAddr, Closed)],
        checkpoints: &[(IpAddr, &Series)],
    ) -> Result<(), StoreError> {
        // New EIPs get ids inside this transaction; the id tables change only if it commits.
        let new: std::collections::HashSet<IpAddr> = snapshots
            .keys()
            .chain(samples.iter().map(|(e, _)| e))
            .filter(|e| !self.ids.contains_key(e))
            .copied()
            .collect();
        let base = self.ids.len() as u32 + 1;
        let fresh: HashMap<IpAddr, u32> = new
            .into_iter()
            .enumerate()
            .map(|(i, eip)| (eip, base + i as u32))
            .collect();
        let ids = IdLookup {
            old: &self.ids,
            fresh: &fresh,
        };
        let tx = self.conn.transaction().map_err(sql("begin round"))?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO eips (id, address) VALUES (?1, ?2)")
                .map_err(sql("register EIP"))?;
            for (eip, id) in &fresh {
                stmt.execute(params![id, eip.to_string()])
                    .map_err(sql("register EIP"))?;
            }
        }
        if !samples.is_empty() {
            tx.execute(
                "INSERT INTO rounds (boundary, host, samples) VALUES (?1, ?2, ?3)",
                params![boundary, host, encode_samples(&ids, samples)],
            )
            .map_err(sql("write samples"))?;
        }
        let mut snap = Vec::with_capacity(snapshots.len() * SNAPSHOT_RECORD);
        for (eip, s) in snapshots {
            snap.extend_from_slice(&ids.get(eip).to_le_bytes());
            snap.extend_from_slice(&s.at.to_le_bytes());
            snap.extend_from_slice(&s.inbound_bytes.to_le_bytes());
            snap.extend_from_slice(&s.outbound_bytes.to_le_bytes());
        }
        tx.execute(
            "INSERT OR REPLACE INTO snapshot (id, data) VALUES (1, ?1)",
            [snap],
        )
        .map_err(sql("write snapshot"))?;
        write_closed(&tx, &ids, closed)?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO checkpoints (eip, series) VALUES (?1, ?2)")
                .map_err(sql("write checkpoints"))?;
            for (eip, series) in checkpoints {
                let json = serde_json::to_string(series).expect("series serializes");
                stmt.execute(params![ids.get(eip), json])
                    .map_err(sql("write checkpoints"))?;
            }
        }
        tx.commit().map_err(sql("commit round"))?;
        self.addresses
            .extend(fresh.iter().map(|(eip, id)| (*id, *eip)));
        self.ids.extend(fresh);
        Ok(())
    }

    /// Commits an EIP's last samples and figures and forgets its live state (the snapshot
    /// passed is the one without it).
    pub fn commit_removal(
        &mut self,
        host: &str,
        eip: IpAddr,
        boundary: i64,
        samples: &[(IpAddr, Sample)],
        closed: &Closed,
        snapshots: &HashMap<IpAddr, Snapshot>,
    ) -> Result<(), StoreError> {
        self.commit_round(
            host,
            boundary,
            samples,
            snapshots,
            &[(eip, closed.clone())],
            &[],
        )?;
        if let Some(id) = self.ids.get(&eip) {
            self.conn
                .execute("DELETE FROM checkpoints WHERE eip = ?1", [id])
                .map_err(sql("forget removed EIP"))?;
        }
        Ok(())
    }

    /// Writes every sample as `eip,interval_start,bytes_in,bytes_out,host` (the input of
    /// `eip-meter compute`), round by round; each EIP's rows are in time order.
    pub fn export_samples(&self, mut out: impl Write) -> Result<u64, StoreError> {
        writeln!(out, "eip,interval_start,bytes_in,bytes_out,host")?;
        let mut n = 0;
        self.for_each_sample(|eip, s, host| {
            let at = chrono::DateTime::from_timestamp(s.start, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            writeln!(
                out,
                "{eip},{at},{},{},{host}",
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
            .prepare("SELECT host, samples FROM rounds ORDER BY seq")
            .map_err(sql("read samples"))?;
        let mut rows = stmt.query([]).map_err(sql("read samples"))?;
        while let Some(row) = rows.next().map_err(sql("read samples"))? {
            let host: String = row.get(0).map_err(sql("read samples"))?;
            let blob: Vec<u8> = row.get(1).map_err(sql("read samples"))?;
            for (id, s) in decode_samples(&blob) {
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
    ids: &IdLookup<'_>,
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
        let id = ids.get(eip);
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
    use crate::{billing::series::SeriesOptions, sampler::Sampler};

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
        assert!(String::from_utf8(csv).unwrap().starts_with("eip,interval_start,bytes_in,bytes_out,host\n203.0.113.10,2026-10-31T16:00:00+00:00,1000,10,r1\n"));
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
