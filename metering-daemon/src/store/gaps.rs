//! The uplinks' metering gaps, kept for audits and so that a restart still marks the intervals
//! they touched.

use rusqlite::params;

use super::{Store, StoreError, sql};

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

impl Store {
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
}
