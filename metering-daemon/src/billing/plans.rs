//! Billing plans, and when a monthly package expires. Below the config (an EIP's plan is part of
//! the inventory) and rating (which charges by it).

use chrono::{Datelike, Months, NaiveTime, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How an EIP or a shared bandwidth is charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plan {
    /// Prepaid for `months` (1-9, or 12, 24, 36 for 1-3 years) from `start` (UNIX seconds).
    Monthly { start: i64, months: u32 },
    /// Pay by configuration: hourly cycles, usage to the second.
    Hourly,
    /// Pay by traffic: a daily retention fee plus outbound GB.
    Traffic,
    /// Enhanced 95th: the billed peak per month, pro rata of the in-use days.
    Enhanced95,
    /// Classic monthly 95th of all samples.
    P95,
}

impl Plan {
    pub fn name(&self) -> &'static str {
        match self {
            Plan::Monthly { .. } => "monthly",
            Plan::Hourly => "hourly",
            Plan::Traffic => "traffic",
            Plan::Enhanced95 => "enhanced95",
            Plan::P95 => "p95",
        }
    }
}

/// What is wrong with a plan as given.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("plan `{0}` is not one of monthly, hourly, traffic, enhanced95, p95")]
    Unknown(String),
    #[error("a monthly package needs plan_start")]
    NoStart,
    #[error("a monthly package needs plan_months")]
    NoMonths,
    #[error("plan_months must be 1-9, or 12, 24, 36 (1-3 years)")]
    Months(u32),
    #[error("{0} only goes with plan = \"monthly\"")]
    NotMonthly(&'static str),
}

impl Plan {
    /// A plan from its name and, for a monthly package, its start (UNIX seconds) and length:
    /// the one reading of a plan the config, the API, the command line and the stores share.
    /// Every problem found, not just the first.
    pub fn from_parts(
        name: &str,
        start: Option<i64>,
        months: Option<u32>,
    ) -> Result<Plan, Vec<PlanError>> {
        let plan = match name {
            "monthly" => {
                let mut problems = Vec::new();
                if start.is_none() {
                    problems.push(PlanError::NoStart);
                }
                match months {
                    None => problems.push(PlanError::NoMonths),
                    Some(m) if !valid_package_months(m) => problems.push(PlanError::Months(m)),
                    Some(_) => {}
                }
                return match (start, months) {
                    (Some(start), Some(months)) if problems.is_empty() => {
                        Ok(Plan::Monthly { start, months })
                    }
                    _ => Err(problems),
                };
            }
            "hourly" => Plan::Hourly,
            "traffic" => Plan::Traffic,
            "enhanced95" => Plan::Enhanced95,
            "p95" => Plan::P95,
            other => return Err(vec![PlanError::Unknown(other.to_owned())]),
        };
        let stray: Vec<PlanError> = [
            ("plan_start", start.is_some()),
            ("plan_months", months.is_some()),
        ]
        .into_iter()
        .filter(|&(_, given)| given)
        .map(|(key, _)| PlanError::NotMonthly(key))
        .collect();
        if stray.is_empty() {
            Ok(plan)
        } else {
            Err(stray)
        }
    }
}

/// The problems of a plan as one message.
pub fn describe(problems: &[PlanError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether `months` is a package length on sale: 1-9 months, or 1, 2 or 3 years.
pub fn valid_package_months(months: u32) -> bool {
    (1..=9).contains(&months) || [12, 24, 36].contains(&months)
}

/// The time of day a package expires, by the product documents.
pub const PACKAGE_EXPIRY_TIME: NaiveTime = match NaiveTime::from_hms_opt(23, 59, 59) {
    Some(t) => t,
    None => panic!("a valid time"),
};

/// When a monthly package bought at `start` for `months` expires: 23:59:59 (in `tz`) on the same
/// day of the month `months` natural months later; a day the target month lacks (the 31st, or
/// February 29th a year on) becomes that month's last day. `None` if the time does not exist.
pub fn package_expiry(start: i64, months: u32, tz: Tz) -> Option<i64> {
    package_expiry_at(start, months, tz, PACKAGE_EXPIRY_TIME)
}

/// [`package_expiry`] at another time of day (`[lifecycle] package_expiry_time`).
pub fn package_expiry_at(start: i64, months: u32, tz: Tz, time: NaiveTime) -> Option<i64> {
    let local = tz.timestamp_opt(start, 0).single()?;
    // chrono clamps to the month's last day: Jan 31 + 1 month = Feb 28 (29), Feb 29 + 12 = Feb 28.
    let day = local.date_naive().checked_add_months(Months::new(months))?;
    debug_assert!(day.day() <= local.day());
    let end = day.and_time(time);
    // A DST jump over 23:59:59 is not a thing in any zone; take the later if it is ambiguous.
    tz.from_local_datetime(&end).latest().map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_read_one_way_and_every_problem_named() {
        assert_eq!(
            Plan::from_parts("monthly", Some(5), Some(12)),
            Ok(Plan::Monthly {
                start: 5,
                months: 12
            })
        );
        assert_eq!(Plan::from_parts("p95", None, None), Ok(Plan::P95));
        assert_eq!(
            Plan::from_parts("monthly", None, Some(10)),
            Err(vec![PlanError::NoStart, PlanError::Months(10)])
        );
        assert_eq!(
            Plan::from_parts("hourly", Some(1), Some(1)),
            Err(vec![
                PlanError::NotMonthly("plan_start"),
                PlanError::NotMonthly("plan_months")
            ])
        );
        assert_eq!(
            Plan::from_parts("weekly", None, None),
            Err(vec![PlanError::Unknown("weekly".into())])
        );
    }
}
