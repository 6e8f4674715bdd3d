//! What the billing store is shipped from: the committed rounds in order, each with the EIPs'
//! samples, and the presence ranges and inventory changes committed with them; where shipping
//! stands; and removing shipped rounds past the local retention.

use std::{collections::BTreeMap, net::IpAddr};

use rusqlite::{OptionalExtension, params};

use super::{
    RoundKind, Store, StoreError,
    records::{decode_samples, read_records},
    sql,
};
use crate::billing::series::Sample;

/// A committed round, as the shipper reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct CommittedRound {
    pub seq: i64,
    pub boundary: i64,
    pub kind: RoundKind,
    /// Earliest interval start its samples cover (None: written before this was recorded).
    pub first_start: Option<i64>,
    /// Bytes of its sample file.
    pub bytes: i64,
}

/// A presence range opened or closed by a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRange {
    pub eip: IpAddr,
    pub from: i64,
    pub to: Option<i64>,
}

impl Store {
    /// Up to `limit` rounds committed after `seq`, oldest first.
    pub fn rounds_after(&self, seq: i64, limit: usize) -> Result<Vec<CommittedRound>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, boundary, kind, first_start, bytes FROM rounds
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(sql("read rounds"))?;
        let rows = stmt
            .query_map(params![seq, limit as i64], |r| {
                Ok(CommittedRound {
                    seq: r.get(0)?,
                    boundary: r.get(1)?,
                    kind: RoundKind::parse(&r.get::<_, String>(2)?),
                    first_start: r.get(3)?,
                    bytes: r.get(4)?,
                })
            })
            .map_err(sql("read rounds"))?;
        rows.collect::<Result<_, _>>().map_err(sql("read rounds"))
    }

    /// The samples of a committed round, with their EIP.
    pub fn round_samples(
        &self,
        round: &CommittedRound,
    ) -> Result<Vec<(IpAddr, Sample)>, StoreError> {
        let blob = read_records(&self.samples_file(round.seq), round.bytes)?;
        decode_samples(&blob, round.boundary)
            .map(|(id, s)| {
                let eip = self.address_of(id).ok_or_else(|| StoreError::Corrupt {
                    what: "sample",
                    eip: id.to_string(),
                    detail: "unknown EIP id".into(),
                })?;
                Ok((eip, s))
            })
            .collect()
    }

    /// Presence ranges opened or closed by commits `(after, up_to]`, as they stand now.
    pub fn presence_changes(
        &self,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<PresenceRange>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT eip, from_s, to_s FROM presence
                 WHERE (opened_seq > ?1 AND opened_seq <= ?2)
                    OR (closed_seq > ?1 AND closed_seq <= ?2)",
            )
            .map_err(sql("read presence"))?;
        let rows = stmt
            .query_map(params![after, up_to], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
            })
            .map_err(sql("read presence"))?;
        let mut ranges: BTreeMap<(u32, i64), Option<i64>> = BTreeMap::new();
        for row in rows {
            let (id, from, to) = row.map_err(sql("read presence"))?;
            ranges.insert((id, from), to);
        }
        // Ranges opened by registration files have a row only once they closed.
        for (id, from) in self.registered_presence(after, up_to)? {
            ranges.entry((id, from)).or_insert(None);
        }
        ranges
            .into_iter()
            .map(|((id, from), to)| {
                let eip = self.address_of(id).ok_or_else(|| StoreError::Corrupt {
                    what: "presence",
                    eip: id.to_string(),
                    detail: "unknown EIP id".into(),
                })?;
                Ok(PresenceRange { eip, from, to })
            })
            .collect()
    }

    /// The last commit the billing store acknowledged, and when (UNIX seconds).
    pub fn shipped(&self) -> Result<Option<(i64, i64)>, StoreError> {
        self.conn
            .query_row("SELECT seq, at FROM ship_state WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql("read ship state"))
    }

    /// Records that the billing store holds everything up to commit `seq`.
    pub fn set_shipped(&self, seq: i64, at: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO ship_state (id, seq, at) VALUES (1, ?1, ?2)",
                params![seq, at],
            )
            .map_err(sql("write ship state"))?;
        Ok(())
    }

    /// Rounds committed after `seq` (not shipped yet), and the boundary of the oldest.
    pub fn unshipped(&self, seq: i64) -> Result<(u64, Option<i64>), StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), MIN(boundary) FROM rounds WHERE seq > ?1",
                [seq],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .map_err(sql("count unshipped rounds"))
    }

    /// Removes the rounds (rows and sample files) the billing store holds (`seq <= shipped`)
    /// whose boundary is before `before`. Never an unshipped round. Returns how many.
    pub fn prune_shipped(&mut self, shipped: i64, before: i64) -> Result<usize, StoreError> {
        let doomed: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT seq FROM rounds WHERE seq <= ?1 AND boundary < ?2")
                .map_err(sql("prune rounds"))?;
            let rows = stmt
                .query_map(params![shipped, before], |r| r.get(0))
                .map_err(sql("prune rounds"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sql("prune rounds"))?
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        self.conn
            .execute(
                "DELETE FROM rounds WHERE seq <= ?1 AND boundary < ?2",
                params![shipped, before],
            )
            .map_err(sql("prune rounds"))?;
        for seq in &doomed {
            let _ = std::fs::remove_file(self.samples_file(*seq));
        }
        Ok(doomed.len())
    }
}
