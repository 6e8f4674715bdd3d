//! The raw samples out of the store: CSV for audits and `eip-meter compute`.

use std::{io::Write, net::IpAddr};

use super::{
    Store, StoreError,
    records::{decode_samples, read_records},
    sql,
};
use crate::billing::{SampleState, series::Sample};

impl Store {
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

    /// The samples of `eip` whose interval starts in `[from, to)`, in time order. Reads every
    /// round committed after `from` (a round can hold a late, spread sample of an earlier
    /// interval).
    pub fn samples_of(&self, eip: IpAddr, from: i64, to: i64) -> Result<Vec<Sample>, StoreError> {
        let Some(&id) = self.ids.get(&eip) else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare("SELECT seq, bytes, boundary FROM rounds WHERE boundary > ?1 ORDER BY seq")
            .map_err(sql("read samples"))?;
        let rounds: Vec<(i64, i64, i64)> = stmt
            .query_map([from], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql("read samples"))?
            .collect::<Result<_, _>>()
            .map_err(sql("read samples"))?;
        let mut out = Vec::new();
        for (seq, bytes, boundary) in rounds {
            let blob = read_records(&self.samples_file(seq), bytes)?;
            out.extend(
                decode_samples(&blob, boundary)
                    .filter(|(i, s)| *i == id && (from..to).contains(&s.start))
                    .map(|(_, s)| s),
            );
        }
        out.sort_by_key(|s| s.start);
        Ok(out)
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
                let eip = self.address_of(id).ok_or_else(|| StoreError::Corrupt {
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
