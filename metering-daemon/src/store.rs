//! The local sample store (SQLite): raw samples, the last counter snapshot per EIP, series
//! checkpoints, and closed daily and monthly figures.
//!
//! Each sampling round is one transaction: its samples and the snapshots they were computed from
//! are committed together, so after a crash (even `kill -9` mid-round) the next round starts
//! from the last committed snapshot: no byte is lost (the kernel kept counting) and no sample is
//! written twice (the primary key `(eip, interval_start, host)` would refuse it anyway).
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
CREATE TABLE IF NOT EXISTS samples (
    eip TEXT NOT NULL, interval_start INTEGER NOT NULL, host TEXT NOT NULL,
    bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (eip, interval_start, host)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    eip TEXT PRIMARY KEY, at INTEGER NOT NULL, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (eip TEXT PRIMARY KEY, series TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS daily_figures (
    eip TEXT NOT NULL, day TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (eip, day));
CREATE TABLE IF NOT EXISTS monthly_figures (
    eip TEXT NOT NULL, month TEXT NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (eip, month));
";

pub struct Store {
    conn: Connection,
}

fn state_name(s: SampleState) -> &'static str {
    match s {
        SampleState::Measured => "measured",
        SampleState::Partial => "partial",
    }
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
        Ok(Self { conn })
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

    pub fn load_snapshots(&self) -> Result<HashMap<IpAddr, Snapshot>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT eip, at, bytes_in, bytes_out FROM snapshots")
            .map_err(sql("read snapshots"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(sql("read snapshots"))?;
        let mut out = HashMap::new();
        for row in rows {
            let (eip, at, i, o) = row.map_err(sql("read snapshots"))?;
            out.insert(
                parse_eip(&eip)?,
                Snapshot {
                    at,
                    inbound_bytes: i as u64,
                    outbound_bytes: o as u64,
                },
            );
        }
        Ok(out)
    }

    /// Every checkpointed series, brought up to date with the samples committed after it.
    pub fn load_series(&self, calendar: Calendar) -> Result<Vec<(IpAddr, Series)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT eip, series FROM checkpoints")
            .map_err(sql("read checkpoints"))?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql("read checkpoints"))?
            .collect::<Result<_, _>>()
            .map_err(sql("read checkpoints"))?;
        let mut replay = self
            .conn
            .prepare("SELECT interval_start, SUM(bytes_in), SUM(bytes_out), MAX(state = 'partial') FROM samples WHERE eip = ?1 AND interval_start > ?2 GROUP BY interval_start ORDER BY interval_start")
            .map_err(sql("replay samples"))?;
        let mut out = Vec::new();
        for (eip_text, json) in rows {
            let eip = parse_eip(&eip_text)?;
            let mut series: Series = serde_json::from_str::<Series>(&json)
                .map_err(|e| StoreError::Corrupt {
                    what: "checkpoint",
                    eip: eip_text.clone(),
                    detail: e.to_string(),
                })?
                .with_calendar(calendar);
            let after = series.last_start().unwrap_or(i64::MIN);
            let samples = replay
                .query_map(params![eip_text, after], |r| {
                    Ok(Sample {
                        start: r.get(0)?,
                        inbound_bytes: r.get::<_, i64>(1)? as u64,
                        outbound_bytes: r.get::<_, i64>(2)? as u64,
                        state: if r.get::<_, bool>(3)? {
                            SampleState::Partial
                        } else {
                            SampleState::Measured
                        },
                    })
                })
                .map_err(sql("replay samples"))?;
            for s in samples {
                let s = s.map_err(sql("replay samples"))?;
                series.push(s).map_err(|e| StoreError::Corrupt {
                    what: "sample",
                    eip: eip_text.clone(),
                    detail: e.to_string(),
                })?;
            }
            // Anything that closed during the replay was committed when it first closed.
            let _ = series.take_closed();
            out.push((eip, series));
        }
        Ok(out)
    }

    /// Commits one round atomically.
    pub fn commit_round(
        &mut self,
        host: &str,
        samples: &[(IpAddr, Sample)],
        snapshots: &[(IpAddr, Snapshot)],
        closed: &[(IpAddr, Closed)],
        checkpoints: &[(IpAddr, &Series)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin round"))?;
        write_samples(&tx, host, samples)?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO snapshots (eip, at, bytes_in, bytes_out) VALUES (?1, ?2, ?3, ?4)")
                .map_err(sql("write snapshots"))?;
            for (eip, s) in snapshots {
                stmt.execute(params![
                    eip.to_string(),
                    s.at,
                    s.inbound_bytes as i64,
                    s.outbound_bytes as i64
                ])
                .map_err(sql("write snapshots"))?;
            }
        }
        write_closed(&tx, closed)?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO checkpoints (eip, series) VALUES (?1, ?2)")
                .map_err(sql("write checkpoints"))?;
            for (eip, series) in checkpoints {
                let json = serde_json::to_string(series).expect("series serializes");
                stmt.execute(params![eip.to_string(), json])
                    .map_err(sql("write checkpoints"))?;
            }
        }
        tx.commit().map_err(sql("commit round"))
    }

    /// Commits an EIP's last samples and figures and forgets its live state.
    pub fn commit_removal(
        &mut self,
        host: &str,
        eip: IpAddr,
        samples: &[(IpAddr, Sample)],
        closed: &Closed,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin removal"))?;
        write_samples(&tx, host, samples)?;
        write_closed(&tx, &[(eip, closed.clone())])?;
        for table in ["snapshots", "checkpoints"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE eip = ?1"),
                [eip.to_string()],
            )
            .map_err(sql("forget removed EIP"))?;
        }
        tx.commit().map_err(sql("commit removal"))
    }

    /// Writes every sample as `eip,interval_start,bytes_in,bytes_out,host` (the input of
    /// `eip-meter compute`), ordered by EIP and time.
    pub fn export_samples(&self, mut out: impl Write) -> Result<u64, StoreError> {
        writeln!(out, "eip,interval_start,bytes_in,bytes_out,host")?;
        let mut stmt = self
            .conn
            .prepare("SELECT eip, interval_start, bytes_in, bytes_out, host FROM samples ORDER BY eip, interval_start, host")
            .map_err(sql("export samples"))?;
        let mut rows = stmt.query([]).map_err(sql("export samples"))?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(sql("export samples"))? {
            let start: i64 = r.get(1).map_err(sql("export samples"))?;
            let at = chrono::DateTime::from_timestamp(start, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            writeln!(
                out,
                "{},{at},{},{},{}",
                r.get::<_, String>(0).map_err(sql("export samples"))?,
                r.get::<_, i64>(2).map_err(sql("export samples"))?,
                r.get::<_, i64>(3).map_err(sql("export samples"))?,
                r.get::<_, String>(4).map_err(sql("export samples"))?,
            )?;
            n += 1;
        }
        Ok(n)
    }

    /// Total bytes of all samples of one EIP (for tests and quick checks).
    pub fn sample_totals(&self, eip: IpAddr) -> Result<(u64, u64, u64), StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes_in), 0), COALESCE(SUM(bytes_out), 0) FROM samples WHERE eip = ?1",
                [eip.to_string()],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)),
            )
            .map_err(sql("sum samples"))
    }
}

fn write_samples(
    tx: &rusqlite::Transaction<'_>,
    host: &str,
    samples: &[(IpAddr, Sample)],
) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached("INSERT INTO samples (eip, interval_start, host, bytes_in, bytes_out, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .map_err(sql("write samples"))?;
    for (eip, s) in samples {
        stmt.execute(params![
            eip.to_string(),
            s.start,
            host,
            s.inbound_bytes as i64,
            s.outbound_bytes as i64,
            state_name(s.state)
        ])
        .map_err(sql("write samples"))?;
    }
    Ok(())
}

fn write_closed(
    tx: &rusqlite::Transaction<'_>,
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
        for (d, f) in &c.days {
            let json = serde_json::to_string(f).expect("figures serialize");
            day.execute(params![eip.to_string(), d.to_string(), json])
                .map_err(sql("write daily figures"))?;
        }
        for (m, f) in &c.months {
            let json = serde_json::to_string(f).expect("figures serialize");
            month
                .execute(params![eip.to_string(), m.to_string(), json])
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
