//! What a restart restores: the last counter snapshot, and every EIP's series from its latest
//! checkpoint brought up to date by replaying the rounds committed after it.

use std::{collections::HashMap, net::IpAddr};

use rusqlite::OptionalExtension;

use super::{
    SNAPSHOT_RECORD, Store, StoreError, pair_rows,
    records::{decode_checkpoints, decode_groups, decode_samples, read_records},
    sql,
};
use crate::billing::{calendar::Calendar, samples::Snapshot, series::Series};

impl Store {
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
            let eip = self.address_of(id).ok_or_else(|| StoreError::Corrupt {
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
            let s = s
                .with_calendar(calendar)
                .checked()
                .map_err(|e| corrupt(id, e))?;
            series.insert(id, s);
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
                if self.checkpoint_seq.get(id) == Some(seq) {
                    let s = postcard::from_bytes::<Series>(payload)
                        .map_err(|e| corrupt(id, e.to_string()))?;
                    let s = s
                        .with_calendar(calendar)
                        .checked()
                        .map_err(|e| corrupt(id, e))?;
                    series.insert(id, s);
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
        // In id order (the order rounds registered them, which is how readings usually come):
        // the first round after a restart then walks the states in order instead of moving
        // them all.
        let mut series: Vec<(u32, Series)> = series.into_iter().collect();
        series.sort_unstable_by_key(|(id, _)| *id);
        let mut out = Vec::with_capacity(series.len());
        for (id, mut s) in series {
            // Anything that closed during the replay was committed when it first closed.
            let _ = s.take_closed();
            let eip = self.address_of(id).ok_or_else(|| StoreError::Corrupt {
                what: "checkpoint",
                eip: id.to_string(),
                detail: "unknown EIP id".into(),
            })?;
            out.push((eip, s));
        }
        Ok(out)
    }

    /// The shared bandwidths' series as the last round that had any left them.
    pub fn load_groups(&self, calendar: Calendar) -> Result<Vec<(String, Series)>, StoreError> {
        let row: Option<(i64, i64)> = self
            .conn
            .query_row("SELECT seq, bytes FROM group_state WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql("read group state"))?;
        let Some((seq, bytes)) = row else {
            return Ok(Vec::new());
        };
        let path = self.groups_file(seq);
        let blob = read_records(&path, bytes)?;
        let corrupt = |who: &str, detail: String| StoreError::Corrupt {
            what: "group series",
            eip: who.to_owned(),
            detail,
        };
        decode_groups(&blob)
            .map_err(|detail| corrupt(&path.display().to_string(), detail))?
            .into_iter()
            .map(|(name, payload)| {
                let series = postcard::from_bytes::<Series>(payload)
                    .map_err(|e| corrupt(&name, e.to_string()))?;
                let series = series
                    .with_calendar(calendar)
                    .checked()
                    .map_err(|e| corrupt(&name, e))?;
                Ok((name, series))
            })
            .collect()
    }
}
