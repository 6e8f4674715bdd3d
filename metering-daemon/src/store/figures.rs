//! Closed daily and monthly figures as the store holds them, for `eip-meter report`: the EIPs'
//! in figure files (and the rows of stores written before them), the shared bandwidths' in rows.

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    Store, StoreError, pair_rows,
    records::{FigureRecord, decode_figures, read_records},
    sql,
};
use crate::billing::series::{DayFigures, MonthFigures};

/// Whose figures: an EIP, or a shared bandwidth by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Eip(IpAddr),
    Group(String),
}

/// The closed figures of one subject and period (`YYYY-MM-DD` or `YYYY-MM`).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredFigures<F> {
    pub subject: Subject,
    pub period: String,
    pub figures: F,
}

/// Figures by subject and period: a later write of the same key replaces an earlier one.
type Latest<F> = BTreeMap<(Subject, String), F>;

impl Store {
    /// Closed daily figures of every EIP and shared bandwidth whose day starts with `period`
    /// (`2026-11` for a month's days, `2026-11-05` for one day, empty for all).
    pub fn closed_days(&self, period: &str) -> Result<Vec<StoredFigures<DayFigures>>, StoreError> {
        let mut latest = Latest::new();
        self.figure_rows(
            "SELECT eip, day, figures FROM daily_figures WHERE day LIKE ?1 || '%'",
            "SELECT grp, day, figures FROM group_daily_figures WHERE day LIKE ?1 || '%'",
            period,
            &mut latest,
        )?;
        self.figure_records(|record| {
            if let FigureRecord::Day(id, date, f) = record {
                let day = date.to_string();
                if day.starts_with(period) {
                    latest.insert((self.subject_of(id)?, day), f);
                }
            }
            Ok(())
        })?;
        Ok(flatten(latest))
    }

    /// Closed monthly figures of every EIP and shared bandwidth whose month starts with
    /// `period` (`2026-11`, or empty for all).
    pub fn closed_months(
        &self,
        period: &str,
    ) -> Result<Vec<StoredFigures<MonthFigures>>, StoreError> {
        let mut latest = Latest::new();
        self.figure_rows(
            "SELECT eip, month, figures FROM monthly_figures WHERE month LIKE ?1 || '%'",
            "SELECT grp, month, figures FROM group_monthly_figures WHERE month LIKE ?1 || '%'",
            period,
            &mut latest,
        )?;
        self.figure_records(|record| {
            if let FigureRecord::Month(id, month, f) = record {
                let month = month.to_string();
                if month.starts_with(period) {
                    latest.insert((self.subject_of(id)?, month), f);
                }
            }
            Ok(())
        })?;
        Ok(flatten(latest))
    }

    fn subject_of(&self, id: u32) -> Result<Subject, StoreError> {
        let eip = self.address_of(id).ok_or_else(|| StoreError::Corrupt {
            what: "figures",
            eip: id.to_string(),
            detail: "unknown EIP id".into(),
        })?;
        Ok(Subject::Eip(eip))
    }

    /// Every figure record of every figures file, oldest file first.
    fn figure_records(
        &self,
        mut each: impl FnMut(FigureRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let files = pair_rows::<i64, i64>(
            &self.conn,
            "SELECT seq, bytes FROM figure_files ORDER BY seq",
            "read figure files",
        )?;
        for (seq, bytes) in files {
            let path = self.figures_file(seq);
            let blob = read_records(&path, bytes)?;
            let records = decode_figures(&blob).map_err(|detail| StoreError::Corrupt {
                what: "figures file",
                eip: path.display().to_string(),
                detail,
            })?;
            records.into_iter().try_for_each(&mut each)?;
        }
        Ok(())
    }

    /// The figures kept as JSON rows: the shared bandwidths', and EIPs' of older stores.
    fn figure_rows<F: serde::de::DeserializeOwned>(
        &self,
        eips: &str,
        groups: &str,
        period: &str,
        latest: &mut Latest<F>,
    ) -> Result<(), StoreError> {
        for (query, is_group) in [(eips, false), (groups, true)] {
            let mut stmt = self.conn.prepare(query).map_err(sql("read figures"))?;
            let rows = stmt
                .query_map([period], |r| {
                    Ok((
                        r.get::<_, rusqlite::types::Value>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(sql("read figures"))?;
            for row in rows {
                let (who, when, json) = row.map_err(sql("read figures"))?;
                let subject = match who {
                    rusqlite::types::Value::Text(name) if is_group => Subject::Group(name),
                    rusqlite::types::Value::Integer(id) if !is_group => {
                        self.subject_of(u32::try_from(id).unwrap_or(u32::MAX))?
                    }
                    other => {
                        return Err(StoreError::Corrupt {
                            what: "figures",
                            eip: format!("{other:?}"),
                            detail: "neither an EIP id nor a name".into(),
                        });
                    }
                };
                let figures = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                    what: "figures",
                    eip: who_of(&subject),
                    detail: e.to_string(),
                })?;
                latest.insert((subject, when), figures);
            }
        }
        Ok(())
    }
}

fn flatten<F>(latest: Latest<F>) -> Vec<StoredFigures<F>> {
    latest
        .into_iter()
        .map(|((subject, period), figures)| StoredFigures {
            subject,
            period,
            figures,
        })
        .collect()
}

fn who_of(subject: &Subject) -> String {
    match subject {
        Subject::Eip(a) => a.to_string(),
        Subject::Group(g) => format!("group {g}"),
    }
}
