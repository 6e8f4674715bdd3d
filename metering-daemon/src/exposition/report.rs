//! `eip-meter report`: every EIP's and shared bandwidth's figures for a day or a month, closed
//! ones from the store and the open day and month as they stand, with the uplinks' state and
//! the metering gaps of the period. Pure: the command hands in what it read.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::counters::UplinkRow;
use crate::{
    billing::series::{DayFigures, MonthFigures, OpenFigures},
    store::{GapRecord, StoredFigures, Subject},
};

/// Which period a report covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Period {
    /// `YYYY-MM-DD`.
    Day(String),
    /// `YYYY-MM`: its days and the month.
    Month(String),
}

impl Period {
    fn name(&self) -> &str {
        match self {
            Period::Day(d) | Period::Month(d) => d,
        }
    }

    fn has_day(&self, day: &str) -> bool {
        match self {
            Period::Day(d) => d == day,
            Period::Month(m) => day.starts_with(m.as_str()),
        }
    }

    fn has_month(&self, month: &str) -> bool {
        matches!(self, Period::Month(m) if m == month)
    }
}

/// What the report is built from.
pub struct Inputs {
    pub timezone: String,
    pub interval_seconds: u32,
    pub period: Period,
    /// Only this subject (an EIP address or a group name), or all.
    pub only: Option<Subject>,
    pub closed_days: Vec<StoredFigures<DayFigures>>,
    pub closed_months: Vec<StoredFigures<MonthFigures>>,
    /// The open day and month of every subject the store has a series for.
    pub open: Vec<(Subject, OpenFigures)>,
    pub uplinks: Vec<UplinkRow>,
    pub uplinks_checked_at: Option<i64>,
    /// Gaps that overlap the period.
    pub gaps: Vec<GapRecord>,
    /// Where shipping to the billing store stands (none: no `[billing_store]`).
    pub shipping: Option<ShippingRow>,
    /// Who owns each subject now (`file` or `api`); a subject without one was removed.
    pub sources: std::collections::HashMap<Subject, String>,
    /// Lifecycle transitions effective in the period (expiry, renewal, freeze, release).
    pub transitions: Vec<TransitionRow>,
}

/// One lifecycle transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransitionRow {
    /// UNIX seconds it took effect.
    pub at: i64,
    pub eip: String,
    pub from: Option<String>,
    /// The state after it; `None`: released.
    pub to: Option<String>,
}

/// Shipping to the billing store, as the local store and the daemon's status file tell.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShippingRow {
    /// Committed rounds the billing store has not acknowledged, and the end of the oldest.
    pub unshipped_rounds: u64,
    pub oldest_unshipped_boundary: Option<i64>,
    /// When the billing store last acknowledged a batch (UNIX seconds).
    pub last_shipped_at: Option<i64>,
    pub errors_total: u64,
    pub conflicts_total: u64,
    /// The failure shipping is stuck on, if any.
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub period: String,
    pub timezone: String,
    pub interval_seconds: u32,
    pub uplinks: Vec<UplinkRow>,
    pub uplinks_checked_at: Option<i64>,
    pub metering_gaps: Vec<GapRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipping: Option<ShippingRow>,
    pub lifecycle_transitions: Vec<TransitionRow>,
    pub eips: Vec<SubjectFigures>,
    pub groups: Vec<SubjectFigures>,
}

#[derive(Debug, Serialize)]
pub struct GapRow {
    pub uplink: String,
    pub cause: String,
    /// UNIX seconds.
    pub from: f64,
    /// UNIX seconds; null while it lasts.
    pub to: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SubjectFigures {
    pub name: String,
    /// `file` or `api` (who owns it now), or `removed`.
    pub source: String,
    pub days: Vec<DayRow>,
    pub months: Vec<MonthRow>,
}

#[derive(Debug, Serialize)]
pub struct DayRow {
    pub day: String,
    /// Still open: the figures so far.
    pub open: bool,
    #[serde(flatten)]
    pub figures: DayFigures,
}

#[derive(Debug, Serialize)]
pub struct MonthRow {
    pub month: String,
    pub open: bool,
    #[serde(flatten)]
    pub figures: MonthFigures,
}

impl Report {
    pub fn build(inputs: Inputs) -> Self {
        let Inputs {
            timezone,
            interval_seconds,
            period,
            only,
            closed_days,
            closed_months,
            open,
            uplinks,
            uplinks_checked_at,
            gaps,
            shipping,
            sources,
            transitions,
        } = inputs;
        let wanted = |s: &Subject| only.as_ref().is_none_or(|o| o == s);
        let mut subjects: BTreeMap<Subject, SubjectFigures> = BTreeMap::new();
        for f in closed_days {
            if wanted(&f.subject) && period.has_day(&f.period) {
                entry(&mut subjects, &f.subject).days.push(DayRow {
                    day: f.period,
                    open: false,
                    figures: f.figures,
                });
            }
        }
        for f in closed_months {
            if wanted(&f.subject) && period.has_month(&f.period) {
                entry(&mut subjects, &f.subject).months.push(MonthRow {
                    month: f.period,
                    open: false,
                    figures: f.figures,
                });
            }
        }
        for (subject, o) in open {
            if !wanted(&subject) {
                continue;
            }
            if let Some((date, figures)) = o.day
                && period.has_day(&date.to_string())
            {
                entry(&mut subjects, &subject).days.push(DayRow {
                    day: date.to_string(),
                    open: true,
                    figures,
                });
            }
            if let Some((month, figures)) = o.month
                && period.has_month(&month.to_string())
            {
                entry(&mut subjects, &subject).months.push(MonthRow {
                    month: month.to_string(),
                    open: true,
                    figures,
                });
            }
        }
        let mut eips = Vec::new();
        let mut groups = Vec::new();
        for (subject, mut figures) in subjects {
            figures.days.sort_by(|a, b| a.day.cmp(&b.day));
            figures.source = sources
                .get(&subject)
                .cloned()
                .unwrap_or_else(|| "removed".to_owned());
            match subject {
                Subject::Eip(_) => eips.push(figures),
                Subject::Group(_) => groups.push(figures),
            }
        }
        Report {
            period: period.name().to_owned(),
            timezone,
            interval_seconds,
            uplinks,
            uplinks_checked_at,
            metering_gaps: gaps
                .into_iter()
                .map(|g| GapRow {
                    uplink: g.uplink,
                    cause: g.cause,
                    from: g.from,
                    to: g.to,
                })
                .collect(),
            shipping,
            lifecycle_transitions: transitions,
            eips,
            groups,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// For people: one line per uplink and gap, then per EIP and shared bandwidth one line per
    /// day and one per month (`*` marks figures still open).
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "eip-meter report {} ({}, {} s intervals; * = still open; Mbit/s = 10^6 bit/s)",
            self.period, self.timezone, self.interval_seconds
        );
        for u in &self.uplinks {
            let _ = write!(out, "uplink {}: {}", u.interface, u.state);
            if u.state == "unknown" {
                out.push_str(" (no daemon running to check it)");
            } else if u.detachments > 0 {
                let _ = write!(
                    out,
                    "; lost {} time(s), {:.1} s not metered",
                    u.detachments, u.detached_seconds
                );
            }
            out.push('\n');
        }
        if self.metering_gaps.is_empty() {
            out.push_str("metering gaps in the period: none\n");
        }
        for g in &self.metering_gaps {
            let _ = writeln!(
                out,
                "metering gap on {}: {} to {} ({})",
                g.uplink,
                time(g.from),
                g.to.map_or("now".to_owned(), time),
                g.cause
            );
        }
        for t in &self.lifecycle_transitions {
            let _ = writeln!(
                out,
                "lifecycle: EIP {} {} -> {} at {}",
                t.eip,
                t.from.as_deref().unwrap_or("-"),
                t.to.as_deref().unwrap_or("released"),
                time(t.at as f64)
            );
        }
        if let Some(s) = &self.shipping {
            let _ = write!(
                out,
                "billing store: {} round(s) not shipped",
                s.unshipped_rounds
            );
            if let Some(oldest) = s.oldest_unshipped_boundary {
                let _ = write!(out, ", the oldest ending {}", time(oldest as f64));
            }
            if let Some(at) = s.last_shipped_at {
                let _ = write!(out, "; last shipped {}", time(at as f64));
            }
            if s.conflicts_total > 0 {
                let _ = write!(out, "; {} conflicting sample(s) refused", s.conflicts_total);
            }
            if let Some(e) = &s.last_error {
                let _ = write!(out, "; failing ({} error(s)): {e}", s.errors_total);
            }
            out.push('\n');
        }
        for (kind, list) in [("EIP", &self.eips), ("shared bandwidth", &self.groups)] {
            for s in list {
                let _ = writeln!(out, "\n{kind} {} (source: {})", s.name, s.source);
                for d in &s.days {
                    let f = &d.figures;
                    let _ = writeln!(
                        out,
                        "  {}{:<1}  samples {:>3} ({} partial, {} missing)  in {}  out {}  enhanced peak {} Mbit/s  95th {}",
                        d.day,
                        if d.open { "*" } else { "" },
                        f.samples,
                        f.partial_samples,
                        f.missing_samples,
                        bytes(f.inbound_bytes),
                        bytes(f.outbound_bytes),
                        f.enhanced_peak_mbps,
                        rate(f.p95_bps),
                    );
                }
                for m in &s.months {
                    let f = &m.figures;
                    let _ = write!(
                        out,
                        "  {}{:<4} samples {} ({} partial, {} missing) over {} days, in-use {:.2} days  in {}  out {}  average peak {} Mbit/s",
                        m.month,
                        if m.open { "*" } else { "" },
                        f.samples,
                        f.partial_samples,
                        f.missing_samples,
                        f.days,
                        f.in_use_days,
                        bytes(f.inbound_bytes),
                        bytes(f.outbound_bytes),
                        f.enhanced_avg_peak_mbps,
                    );
                    if let (Some(base), Some(billed)) = (f.baseline_mbps, f.billed_peak_mbps) {
                        let _ = write!(out, "  baseline {base} Mbit/s  billed {billed} Mbit/s");
                    }
                    let _ = writeln!(out, "  95th {}", rate(f.p95_bps));
                }
            }
        }
        if self.eips.is_empty() && self.groups.is_empty() {
            out.push_str("\nno figures for this period\n");
        }
        out
    }
}

fn entry<'a>(
    subjects: &'a mut BTreeMap<Subject, SubjectFigures>,
    s: &Subject,
) -> &'a mut SubjectFigures {
    subjects.entry(s.clone()).or_insert_with(|| SubjectFigures {
        name: match s {
            Subject::Eip(a) => a.to_string(),
            Subject::Group(g) => g.clone(),
        },
        source: String::new(),
        days: Vec::new(),
        months: Vec::new(),
    })
}

fn time(t: f64) -> String {
    chrono::DateTime::from_timestamp(t.floor() as i64, 0)
        .map_or_else(|| t.to_string(), |t| t.to_rfc3339())
}

/// Bytes in decimal units, three significant figures (the exact count is in `--json`).
fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// A bit/s figure in Mbit/s with the remainder kept (the exact bit/s is in `--json`).
fn rate(bps: u64) -> String {
    format!("{:.3} Mbit/s", bps as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{
        calendar::{Calendar, Month},
        series::{BandwidthHistory, Sample, Series, SeriesOptions},
    };

    const T0: i64 = 1_793_462_400; // 2026-11-01T00:00:00+08:00

    fn open_of(eip: &str, bytes: u64) -> (Subject, OpenFigures) {
        let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
        let mut s = Series::new(
            cal,
            SeriesOptions::default(),
            BandwidthHistory::new(vec![(T0, 300)]),
        );
        for k in 0..6 {
            s.push(Sample {
                start: T0 + 86_400 + k * 300,
                inbound_bytes: bytes,
                outbound_bytes: 1,
                state: crate::billing::SampleState::Measured,
            })
            .unwrap();
        }
        (Subject::Eip(eip.parse().unwrap()), s.open_figures())
    }

    fn inputs(period: Period, only: Option<Subject>) -> Inputs {
        let (_, closed) = open_of("203.0.113.1", 1);
        let day = closed.day.unwrap().1;
        Inputs {
            timezone: "Asia/Shanghai".into(),
            interval_seconds: 300,
            period,
            only,
            closed_days: vec![StoredFigures {
                subject: Subject::Eip("203.0.113.1".parse().unwrap()),
                period: "2026-11-01".into(),
                figures: day,
            }],
            closed_months: Vec::new(),
            open: vec![
                open_of("203.0.113.1", 37_500_000),
                open_of("203.0.113.2", 0),
            ],
            uplinks: vec![UplinkRow::unknown("up0")],
            uplinks_checked_at: None,
            gaps: Vec::new(),
            shipping: None,
            sources: Default::default(),
            transitions: vec![TransitionRow {
                at: 1_793_500_000,
                eip: "203.0.113.1".into(),
                from: Some("active".into()),
                to: Some("expired".into()),
            }],
        }
    }

    #[test]
    fn a_month_has_its_closed_and_open_days_then_the_open_month() {
        let r = Report::build(inputs(Period::Month("2026-11".into()), None));
        assert_eq!(r.eips.len(), 2);
        let a = &r.eips[0];
        assert_eq!(a.name, "203.0.113.1");
        let days: Vec<(&str, bool)> = a.days.iter().map(|d| (d.day.as_str(), d.open)).collect();
        assert_eq!(days, vec![("2026-11-01", false), ("2026-11-02", true)]);
        assert_eq!(a.days[1].figures.enhanced_peak_mbps, 1);
        assert_eq!(a.months.len(), 1);
        assert!(a.months[0].open);
        assert_eq!(a.months[0].figures.baseline_mbps, Some(60));
        let t = r.to_table();
        assert!(t.contains("2026-11-02*"), "{t}");
        assert!(t.contains("billed 60 Mbit/s"), "{t}");
        let _ = Month::of(chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
    }

    #[test]
    fn one_day_of_one_eip() {
        let only = Some(Subject::Eip("203.0.113.2".parse().unwrap()));
        let r = Report::build(inputs(Period::Day("2026-11-02".into()), only));
        assert_eq!(r.eips.len(), 1);
        assert_eq!(r.eips[0].days.len(), 1);
        assert!(r.eips[0].months.is_empty());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["eips"][0]["days"][0]["day"], "2026-11-02");
        assert_eq!(v["eips"][0]["days"][0]["open"], true);
        assert_eq!(v["eips"][0]["days"][0]["samples"], 6);
    }

    #[test]
    fn each_subject_says_who_owns_it_or_that_it_was_removed() {
        let mut i = inputs(Period::Month("2026-11".into()), None);
        i.sources
            .insert(Subject::Eip("203.0.113.1".parse().unwrap()), "api".into());
        let r = Report::build(i);
        let t = r.to_table();
        assert!(t.contains("EIP 203.0.113.1 (source: api)"), "{t}");
        assert!(t.contains("EIP 203.0.113.2 (source: removed)"), "{t}");
        assert!(
            t.contains("lifecycle: EIP 203.0.113.1 active -> expired at 2026-11-01T"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["eips"][0]["source"], "api");
    }
}
