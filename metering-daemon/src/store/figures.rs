//! Closed daily and monthly figures as the store holds them, for `eip-meter report`.

use std::net::IpAddr;

use super::{Store, StoreError, parse_eip, sql};
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

impl Store {
    /// Closed daily figures of every EIP and shared bandwidth whose day starts with `period`
    /// (`2026-11` for a month's days, `2026-11-05` for one day, empty for all).
    pub fn closed_days(&self, period: &str) -> Result<Vec<StoredFigures<DayFigures>>, StoreError> {
        self.closed(
            "SELECT e.address, f.day, f.figures FROM daily_figures f JOIN eips e ON e.id = f.eip
             WHERE f.day LIKE ?1 || '%'",
            "SELECT grp, day, figures FROM group_daily_figures WHERE day LIKE ?1 || '%'",
            period,
        )
    }

    /// Closed monthly figures of every EIP and shared bandwidth whose month starts with
    /// `period` (`2026-11`, or empty for all).
    pub fn closed_months(
        &self,
        period: &str,
    ) -> Result<Vec<StoredFigures<MonthFigures>>, StoreError> {
        self.closed(
            "SELECT e.address, f.month, f.figures FROM monthly_figures f JOIN eips e ON e.id = f.eip
             WHERE f.month LIKE ?1 || '%'",
            "SELECT grp, month, figures FROM group_monthly_figures WHERE month LIKE ?1 || '%'",
            period,
        )
    }

    fn closed<F: serde::de::DeserializeOwned>(
        &self,
        eips: &str,
        groups: &str,
        period: &str,
    ) -> Result<Vec<StoredFigures<F>>, StoreError> {
        let mut out = Vec::new();
        for (query, is_group) in [(eips, false), (groups, true)] {
            let mut stmt = self.conn.prepare(query).map_err(sql("read figures"))?;
            let rows = stmt
                .query_map([period], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(sql("read figures"))?;
            for row in rows {
                let (who, when, json) = row.map_err(sql("read figures"))?;
                let subject = if is_group {
                    Subject::Group(who)
                } else {
                    Subject::Eip(parse_eip(&who)?)
                };
                let figures = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                    what: "figures",
                    eip: who_of(&subject),
                    detail: e.to_string(),
                })?;
                out.push(StoredFigures {
                    subject,
                    period: when,
                    figures,
                });
            }
        }
        out.sort_by(|a, b| (&a.subject, &a.period).cmp(&(&b.subject, &b.period)));
        Ok(out)
    }
}

fn who_of(subject: &Subject) -> String {
    match subject {
        Subject::Eip(a) => a.to_string(),
        Subject::Group(g) => format!("group {g}"),
    }
}
