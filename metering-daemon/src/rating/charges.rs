//! Charge lines, one function per billing type. Each line says what it charges (`item`), the
//! interval it came from (`from`, `to`), when it is settled, the quantity, unit price, the exact
//! amount and the amount settled (rounded once, see [`super::settle`]), and the figures it was
//! computed from. A window `(from, to]` selects lines by their settlement time (a day's traffic,
//! settled at the next 00:00:00, belongs to that day; a month's 95th to that month), so rating a
//! month in one run gives the same lines as rating its days one by one.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

use super::{
    money::settle,
    prices::{Prices, Tariff, TrafficPrices},
};
use crate::billing::{
    GbUnit,
    calendar::{Calendar, Month},
    plans::{Plan, package_expiry, valid_package_months},
    series::{DayFigures, MonthFigures},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateError {
    #[error("{subject}: the price file has no [{plan}] prices")]
    NoPrices { subject: String, plan: &'static str },
    #[error("{subject}: {mbps} Mbit/s is above the largest size the [{plan}] prices list")]
    NoSize {
        subject: String,
        plan: &'static str,
        mbps: u64,
    },
    #[error(
        "{subject}: no bandwidth is set at {at} (the first change must be at or before its creation)"
    )]
    NoBandwidth { subject: String, at: i64 },
    #[error("{subject}: a package of {months} months is not sold (1-9 months, or 12, 24, 36)")]
    Months { subject: String, months: u32 },
    #[error("{subject}: `{period}` is not a day (YYYY-MM-DD) or month (YYYY-MM) of the figures")]
    Period { subject: String, period: String },
    #[error("{subject}: the package's expiry does not exist in the zone")]
    Expiry { subject: String },
}

/// When a subject existed (UNIX seconds): created, deleted if it was, and when its service
/// was stopped (`expired`, `arrears`, `frozen`: `[from, to)`, sorted), which is not billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Life<'a> {
    pub created: i64,
    pub deleted: Option<i64>,
    pub stopped: &'a [(i64, i64)],
}

impl Life<'_> {
    fn stopped_at(&self, t: i64) -> bool {
        self.stopped.iter().any(|&(a, b)| a <= t && t < b)
    }

    /// Whether the service was stopped for all of `[from, to)`.
    fn stopped_throughout(&self, from: i64, to: i64) -> bool {
        let mut t = from;
        for &(a, b) in self.stopped {
            if a <= t && t < b {
                t = b;
            }
        }
        t >= to
    }
}

/// The settlement times rated: `(from, to]` (what is settled at the end of a period is that
/// period's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

impl Window {
    pub fn has(&self, t: i64) -> bool {
        self.from < t && t <= self.to
    }
}

/// One charge.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChargeLine {
    pub subject: String,
    pub plan: &'static str,
    /// `package`, `hour`, `day` or `month`.
    pub item: &'static str,
    /// The interval charged, UNIX seconds.
    pub from: i64,
    pub to: i64,
    pub settled_at: i64,
    pub quantity: Decimal,
    /// `month`, `hour`, `GB`, `Mbit/s`.
    pub unit: &'static str,
    pub unit_price: Decimal,
    /// Before rounding.
    pub exact: Decimal,
    /// Settled: `exact` rounded half away from zero to the cent.
    pub amount: Decimal,
    pub figures: serde_json::Value,
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// The price file's entry for `plan`, or the error that names the subject without one.
fn price_of<T>(price: Option<T>, subject: &str, plan: &'static str) -> Result<T, RateError> {
    price.ok_or_else(|| RateError::NoPrices {
        subject: subject.to_owned(),
        plan,
    })
}

fn priced(
    tariff: Option<&Tariff>,
    subject: &str,
    plan: &'static str,
    mbps: u64,
) -> Result<Decimal, RateError> {
    let tariff = price_of(tariff, subject, plan)?;
    tariff.price(mbps).ok_or_else(|| RateError::NoSize {
        subject: subject.to_owned(),
        plan,
        mbps,
    })
}

/// A monthly package: one prepaid line at purchase, for the whole package.
pub fn package(
    subject: &str,
    start: i64,
    months: u32,
    mbps: u64,
    tariff: Option<&Tariff>,
    calendar: &Calendar,
) -> Result<ChargeLine, RateError> {
    if !valid_package_months(months) {
        return Err(RateError::Months {
            subject: subject.to_owned(),
            months,
        });
    }
    let unit_price = priced(tariff, subject, "monthly", mbps)?;
    let expiry = package_expiry(start, months, calendar.tz()).ok_or(RateError::Expiry {
        subject: subject.to_owned(),
    })?;
    let exact = unit_price * Decimal::from(months);
    Ok(ChargeLine {
        subject: subject.to_owned(),
        plan: "monthly",
        item: "package",
        from: start,
        to: expiry,
        settled_at: start,
        quantity: Decimal::from(months),
        unit: "month",
        unit_price,
        exact,
        amount: settle(exact),
        figures: json!({ "bandwidth_mbps": mbps, "expires_at": expiry }),
    })
}

/// The bandwidth in effect at `t` from a sorted history of `(from, Mbit/s)`.
fn bandwidth_at(history: &[(i64, u64)], t: i64) -> Option<u64> {
    let i = history.partition_point(|&(at, _)| at <= t);
    i.checked_sub(1).map(|i| history[i].1)
}

/// Pay by configuration: one-hour cycles of the zone's clock, settled at each full hour (the
/// last at deletion), usage to the second; a bandwidth change inside an hour splits it into
/// segments, each a line at its own price; time the service was stopped is not billed. Cycles settled inside `window` (and, for an EIP not
/// deleted, ended by `window.to`).
pub fn hourly(
    subject: &str,
    life: Life<'_>,
    history: &[(i64, u64)],
    tariff: Option<&Tariff>,
    calendar: &Calendar,
    window: Window,
) -> Result<Vec<ChargeLine>, RateError> {
    let hours = Calendar::new(calendar.timezone(), HOUR as u32).expect("an hour divides a day");
    let end = life
        .deleted
        .unwrap_or(window.to)
        .min(window.to.max(life.created));
    let mut lines = Vec::new();
    let mut cycle = hours.interval_start(life.created);
    while cycle < end {
        let cycle_end = cycle + HOUR;
        let used_to = life.deleted.map_or(cycle_end, |d| d.min(cycle_end));
        let settled_at = used_to;
        if used_to > cycle_end || (life.deleted.is_none() && cycle_end > window.to) {
            break;
        }
        if window.has(settled_at) {
            let from = life.created.max(cycle);
            // Segment boundaries: the changes inside the cycle, and where service stopped or
            // resumed (a stopped segment is not billed).
            let mut cuts: Vec<i64> = history
                .iter()
                .map(|&(at, _)| at)
                .chain(life.stopped.iter().flat_map(|&(a, b)| [a, b]))
                .filter(|&at| at > from && at < used_to)
                .collect();
            cuts.push(from);
            cuts.push(used_to);
            cuts.sort_unstable();
            cuts.dedup();
            for pair in cuts.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if b <= a || life.stopped_at(a) {
                    continue;
                }
                let mbps = bandwidth_at(history, a).ok_or(RateError::NoBandwidth {
                    subject: subject.to_owned(),
                    at: a,
                })?;
                let unit_price = priced(tariff, subject, "hourly", mbps)?;
                let seconds = Decimal::from(b - a);
                // The product first, one division: exact to the 28th digit.
                let exact = unit_price * seconds / Decimal::from(HOUR);
                lines.push(ChargeLine {
                    subject: subject.to_owned(),
                    plan: "hourly",
                    item: "hour",
                    from: a,
                    to: b,
                    settled_at,
                    quantity: seconds / Decimal::from(HOUR),
                    unit: "hour",
                    unit_price,
                    exact,
                    amount: settle(exact),
                    figures: json!({ "bandwidth_mbps": mbps, "seconds": b - a }),
                });
            }
        }
        cycle = cycle_end;
    }
    Ok(lines)
}

fn day_of(subject: &str, key: &str) -> Result<NaiveDate, RateError> {
    NaiveDate::parse_from_str(key, "%Y-%m-%d").map_err(|_| RateError::Period {
        subject: subject.to_owned(),
        period: key.to_owned(),
    })
}

/// Pay by traffic: each natural day a retention fee (in full, even for a partial first or last
/// day; none for a day its service was stopped throughout) plus the day's outbound GB x the
/// price per GB, settled at the next 00:00:00 (the last day at deletion). Days without figures
/// carried no traffic.
pub fn traffic(
    subject: &str,
    life: Life<'_>,
    days: &BTreeMap<String, DayFigures>,
    prices: Option<&TrafficPrices>,
    gb_unit: GbUnit,
    calendar: &Calendar,
    window: Window,
) -> Result<Vec<ChargeLine>, RateError> {
    let prices = price_of(prices, subject, "traffic")?;
    let mut outbound: BTreeMap<NaiveDate, u64> = BTreeMap::new();
    for (key, f) in days {
        outbound.insert(day_of(subject, key)?, f.outbound_bytes);
    }
    let mut lines = Vec::new();
    let mut day = calendar.day_of(life.created);
    loop {
        let (start, end) = calendar.day_bounds(day);
        let settled_at = life.deleted.map_or(end, |d| d.min(end));
        if life.deleted.is_some_and(|d| d <= start) || (life.deleted.is_none() && end > window.to) {
            break;
        }
        if window.has(settled_at) {
            let bytes = outbound.get(&day).copied().unwrap_or(0);
            let gb = Decimal::from(bytes) / Decimal::from(gb_unit.bytes());
            // A day its service was stopped throughout keeps no retention fee.
            let retention = if life.stopped_throughout(life.created.max(start), settled_at) {
                Decimal::ZERO
            } else {
                prices.retention_per_day
            };
            let exact = retention + gb * prices.per_gb;
            lines.push(ChargeLine {
                subject: subject.to_owned(),
                plan: "traffic",
                item: "day",
                from: life.created.max(start),
                to: settled_at,
                settled_at,
                quantity: gb,
                unit: "GB",
                unit_price: prices.per_gb,
                exact,
                amount: settle(exact),
                figures: json!({
                    "day": day.to_string(),
                    "outbound_bytes": bytes,
                    "retention_fee": retention,
                }),
            });
        }
        if settled_at < end {
            break;
        }
        day = day.succ_opt().expect("a next day");
    }
    Ok(lines)
}

fn month_of(subject: &str, key: &str) -> Result<Month, RateError> {
    NaiveDate::parse_from_str(&format!("{key}-01"), "%Y-%m-%d")
        .map(Month::of)
        .map_err(|_| RateError::Period {
            subject: subject.to_owned(),
            period: key.to_owned(),
        })
}

/// The months of `months` that end (are settled) in `window`, with their bounds.
type SettledMonth<'a> = (&'a String, Month, (i64, i64), &'a MonthFigures);

fn settled_months<'a>(
    subject: &str,
    months: &'a BTreeMap<String, MonthFigures>,
    calendar: &Calendar,
    window: Window,
) -> Result<Vec<SettledMonth<'a>>, RateError> {
    let mut out = Vec::new();
    for (key, f) in months {
        let month = month_of(subject, key)?;
        let bounds = calendar.month_bounds(month);
        if window.has(bounds.1) {
            out.push((key, month, bounds, f));
        }
    }
    Ok(out)
}

/// Enhanced 95th: the month's billed peak x the price x in-use days / calendar days of the
/// month, settled when the month ends. Without a bandwidth history (no baseline) the billed
/// peak is the average peak.
pub fn enhanced95(
    subject: &str,
    months: &BTreeMap<String, MonthFigures>,
    price: Option<Decimal>,
    calendar: &Calendar,
    window: Window,
) -> Result<Vec<ChargeLine>, RateError> {
    let price = price_of(price, subject, "enhanced95")?;
    monthly_lines(
        subject,
        "enhanced95",
        months,
        calendar,
        window,
        |key, month, f| {
            let billed = f.billed_peak_mbps.unwrap_or(f.enhanced_avg_peak_mbps);
            let days = Decimal::from(month.days());
            // billed x price x (in-use seconds / 86400) / days, as one division.
            let exact = Decimal::from(billed) * price * Decimal::from(f.in_use_seconds)
                / (Decimal::from(DAY) * days);
            MonthCharge {
                quantity: Decimal::from(billed),
                unit_price: price,
                exact,
                figures: json!({
                    "month": key,
                    "billed_peak_mbps": billed,
                    "average_peak_mbps": f.enhanced_avg_peak_mbps,
                    "baseline_mbps": f.baseline_mbps,
                    "in_use_days": Decimal::from(f.in_use_seconds) / Decimal::from(DAY),
                    "calendar_days": month.days(),
                }),
            }
        },
    )
}

/// Classic 95th: the month's 95th (Mbit/s = 10^6 bit/s, not truncated) x the price, settled
/// when the month ends.
pub fn p95(
    subject: &str,
    months: &BTreeMap<String, MonthFigures>,
    price: Option<Decimal>,
    calendar: &Calendar,
    window: Window,
) -> Result<Vec<ChargeLine>, RateError> {
    let price = price_of(price, subject, "p95")?;
    monthly_lines(subject, "p95", months, calendar, window, |key, _, f| {
        let mbps = Decimal::from(f.p95_bps) / Decimal::from(1_000_000u64);
        MonthCharge {
            quantity: mbps,
            unit_price: price,
            exact: mbps * price,
            figures: json!({ "month": key, "p95_bps": f.p95_bps, "samples": f.samples }),
        }
    })
}

/// What a monthly plan charges for one settled month.
struct MonthCharge {
    quantity: Decimal,
    unit_price: Decimal,
    exact: Decimal,
    figures: serde_json::Value,
}

/// One line per month settled in `window`, in Mbit/s, from `charge`.
fn monthly_lines(
    subject: &str,
    plan: &'static str,
    months: &BTreeMap<String, MonthFigures>,
    calendar: &Calendar,
    window: Window,
    charge: impl Fn(&str, Month, &MonthFigures) -> MonthCharge,
) -> Result<Vec<ChargeLine>, RateError> {
    Ok(settled_months(subject, months, calendar, window)?
        .into_iter()
        .map(|(key, month, (start, end), f)| {
            let c = charge(key, month, f);
            ChargeLine {
                subject: subject.to_owned(),
                plan,
                item: "month",
                from: start,
                to: end,
                settled_at: end,
                quantity: c.quantity,
                unit: "Mbit/s",
                unit_price: c.unit_price,
                exact: c.exact,
                amount: settle(c.exact),
                figures: c.figures,
            }
        })
        .collect())
}

/// Everything one subject's plan is rated from.
pub struct Subject<'a> {
    pub name: &'a str,
    pub plan: Plan,
    pub life: Life<'a>,
    /// `(from, Mbit/s)`, sorted.
    pub bandwidth: &'a [(i64, u64)],
    pub days: &'a BTreeMap<String, DayFigures>,
    pub months: &'a BTreeMap<String, MonthFigures>,
}

/// The lines of one subject's plan settled in `window` (the one dispatch `rate` and `bill`
/// share). A monthly package's bandwidth is the one set at its start.
pub fn rate(
    s: &Subject<'_>,
    prices: &Prices,
    gb_unit: GbUnit,
    calendar: &Calendar,
    window: Window,
) -> Result<Vec<ChargeLine>, RateError> {
    match s.plan {
        Plan::Monthly { start, months } => {
            let mbps = bandwidth_at(s.bandwidth, start)
                .or(s.bandwidth.first().map(|&(_, m)| m))
                .ok_or(RateError::NoBandwidth {
                    subject: s.name.to_owned(),
                    at: start,
                })?;
            let line = package(
                s.name,
                start,
                months,
                mbps,
                prices.monthly.as_ref(),
                calendar,
            )?;
            Ok(if window.has(line.settled_at) {
                vec![line]
            } else {
                Vec::new()
            })
        }
        Plan::Hourly => hourly(
            s.name,
            s.life,
            s.bandwidth,
            prices.hourly.as_ref(),
            calendar,
            window,
        ),
        Plan::Traffic => traffic(
            s.name,
            s.life,
            s.days,
            prices.traffic.as_ref(),
            gb_unit,
            calendar,
            window,
        ),
        Plan::Enhanced95 => enhanced95(s.name, s.months, prices.enhanced95, calendar, window),
        Plan::P95 => p95(s.name, s.months, prices.p95, calendar, window),
    }
}
