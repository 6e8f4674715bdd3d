//! Every worked example of the product documents, the edge cases of package expiry, and two
//! properties: hourly segments sum to the per-second integral of the price, and a month rated
//! in one run equals its days rated one by one.

use std::collections::BTreeMap;

use chrono::TimeZone;
use proptest::prelude::*;
use rust_decimal::Decimal;

use super::{
    charges::{self, Life, Window},
    prices::{Tariff, TrafficPrices},
};
use crate::billing::{
    GbUnit,
    calendar::Calendar,
    plans::package_expiry,
    series::{DayFigures, MonthFigures},
};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn shanghai() -> Calendar {
    Calendar::new("Asia/Shanghai", 300).unwrap()
}

/// UNIX seconds of a China-time wall clock.
fn cst(y: i32, mo: u32, day: u32, h: u32, mi: u32, s: u32) -> i64 {
    chrono_tz::Asia::Shanghai
        .with_ymd_and_hms(y, mo, day, h, mi, s)
        .unwrap()
        .timestamp()
}

const ALL: Window = Window {
    from: i64::MIN,
    to: i64::MAX,
};

#[test]
fn seed_001_003_package_expires_at_235959_on_the_same_day_a_month_later() {
    let tz = chrono_tz::Asia::Shanghai;
    assert_eq!(
        package_expiry(cst(2016, 1, 1, 15, 0, 0), 1, tz),
        Some(cst(2016, 2, 1, 23, 59, 59))
    );
    // Seed 001 prints 2018-2-2 (a typo); seed 003 has 2017-9-2.
    assert_eq!(
        package_expiry(cst(2017, 8, 2, 10, 0, 0), 1, tz),
        Some(cst(2017, 9, 2, 23, 59, 59))
    );
}

#[test]
fn a_start_on_a_day_the_target_month_lacks_ends_on_its_last_day() {
    let tz = chrono_tz::Asia::Shanghai;
    // Jan 31 + 1 month: February's last day (leap and common years).
    assert_eq!(
        package_expiry(cst(2024, 1, 31, 9, 0, 0), 1, tz),
        Some(cst(2024, 2, 29, 23, 59, 59))
    );
    assert_eq!(
        package_expiry(cst(2025, 1, 31, 9, 0, 0), 1, tz),
        Some(cst(2025, 2, 28, 23, 59, 59))
    );
    // Feb 29 + 1 year: Feb 28; + 4 years: Feb 29 again.
    assert_eq!(
        package_expiry(cst(2024, 2, 29, 9, 0, 0), 12, tz),
        Some(cst(2025, 2, 28, 23, 59, 59))
    );
    assert_eq!(
        package_expiry(cst(2024, 2, 29, 9, 0, 0), 36, tz),
        Some(cst(2027, 2, 28, 23, 59, 59))
    );
    // The day is the zone's: 23:30 UTC on the 31st is already the 1st in China.
    let utc_evening = chrono::Utc
        .with_ymd_and_hms(2024, 1, 31, 23, 30, 0)
        .unwrap()
        .timestamp();
    assert_eq!(
        package_expiry(utc_evening, 1, tz),
        Some(cst(2024, 3, 1, 23, 59, 59))
    );
}

#[test]
fn seed_001_a_monthly_package_is_one_prepaid_line() {
    let start = cst(2017, 8, 2, 10, 0, 0);
    let line = charges::package(
        "eip",
        start,
        1,
        1,
        Some(&Tariff::PerMbps(d("23"))),
        &shanghai(),
    )
    .unwrap();
    assert_eq!((line.amount, line.settled_at), (d("23"), start));
    assert_eq!(line.to, cst(2017, 9, 2, 23, 59, 59));
    let err = charges::package(
        "eip",
        start,
        10,
        1,
        Some(&Tariff::PerMbps(d("23"))),
        &shanghai(),
    );
    assert!(matches!(
        err,
        Err(charges::RateError::Months { months: 10, .. })
    ));
}

#[test]
fn seed_001_003_hourly_from_1030_settles_003_at_1100_then_006_an_hour() {
    let created = cst(2017, 8, 2, 10, 30, 0);
    let life = Life {
        created,
        deleted: Some(cst(2017, 8, 2, 12, 15, 0)),
        stopped: &[],
    };
    let lines = charges::hourly(
        "eip",
        life,
        &[(created, 1)],
        Some(&Tariff::PerMbps(d("0.06"))),
        &shanghai(),
        ALL,
    )
    .unwrap();
    let got: Vec<(i64, Decimal)> = lines.iter().map(|l| (l.settled_at, l.amount)).collect();
    assert_eq!(
        got,
        vec![
            (cst(2017, 8, 2, 11, 0, 0), d("0.03")),
            (cst(2017, 8, 2, 12, 0, 0), d("0.06")),
            // The tail, settled at deletion: a quarter of an hour.
            (cst(2017, 8, 2, 12, 15, 0), d("0.02")),
        ]
    );
    assert_eq!(lines[2].exact, d("0.015"));
}

#[test]
fn seed_002_a_change_at_0930_splits_the_hour_into_two_records() {
    let created = cst(2026, 11, 2, 9, 0, 0);
    let history = [(created, 500), (cst(2026, 11, 2, 9, 30, 0), 1000)];
    let window = Window {
        from: created,
        to: cst(2026, 11, 2, 10, 0, 0),
    };
    let lines = charges::hourly(
        "g1",
        Life {
            created,
            deleted: None,
            stopped: &[],
        },
        &history,
        Some(&Tariff::PerMbps(d("0.01"))),
        &shanghai(),
        window,
    )
    .unwrap();
    let got: Vec<(i64, i64, u64, Decimal)> = lines
        .iter()
        .map(|l| {
            (
                l.from,
                l.to,
                l.figures["bandwidth_mbps"].as_u64().unwrap(),
                l.amount,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (created, cst(2026, 11, 2, 9, 30, 0), 500, d("2.50")),
            (
                cst(2026, 11, 2, 9, 30, 0),
                cst(2026, 11, 2, 10, 0, 0),
                1000,
                d("5.00")
            ),
        ]
    );
    assert!(
        lines
            .iter()
            .all(|l| l.settled_at == cst(2026, 11, 2, 10, 0, 0))
    );
}

fn day(outbound_bytes: u64) -> DayFigures {
    DayFigures {
        samples: 1,
        measured_samples: 1,
        partial_samples: 0,
        missing_samples: 0,
        inbound_bytes: 0,
        outbound_bytes,
        outbound_gb: 0.0,
        enhanced_peak_mbps: 0,
        enhanced_peak_bps: 0,
        p95_bps: 0,
        in_use_seconds: 300,
        max_bandwidth_mbps: None,
    }
}

const TRAFFIC: TrafficPrices = TrafficPrices {
    retention_per_day: Decimal::from_parts(48, 0, 0, false, 2),
    per_gb: Decimal::from_parts(8, 0, 0, false, 1),
};

#[test]
fn seed_001_003_traffic_settles_048_plus_08_per_gb_at_midnight() {
    let created = cst(2017, 8, 2, 10, 30, 0);
    let days = BTreeMap::from([("2017-08-02".to_owned(), day(1_000_000_000))]);
    let lines = charges::traffic(
        "eip",
        Life {
            created,
            deleted: None,
            stopped: &[],
        },
        &days,
        Some(&TRAFFIC),
        GbUnit::Decimal,
        &shanghai(),
        Window {
            from: created,
            to: cst(2017, 8, 3, 0, 0, 0),
        },
    )
    .unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].settled_at, cst(2017, 8, 3, 0, 0, 0));
    assert_eq!(lines[0].amount, d("1.28"));
    // The tail at deletion pays the day's retention fee too.
    let lines = charges::traffic(
        "eip",
        Life {
            created,
            deleted: Some(cst(2017, 8, 3, 8, 0, 0)),
            stopped: &[],
        },
        &days,
        Some(&TRAFFIC),
        GbUnit::Decimal,
        &shanghai(),
        ALL,
    )
    .unwrap();
    let got: Vec<(i64, Decimal)> = lines.iter().map(|l| (l.settled_at, l.amount)).collect();
    assert_eq!(
        got,
        vec![
            (cst(2017, 8, 3, 0, 0, 0), d("1.28")),
            (cst(2017, 8, 3, 8, 0, 0), d("0.48"))
        ]
    );
}

fn month(billed: Option<u64>, avg: u64, in_use_days: u64, p95_bps: u64) -> MonthFigures {
    MonthFigures {
        samples: 0,
        measured_samples: 0,
        partial_samples: 0,
        missing_samples: 0,
        days: 0,
        inbound_bytes: 0,
        outbound_bytes: 0,
        outbound_gb: 0.0,
        enhanced_avg_peak_mbps: avg,
        p95_bps,
        in_use_days: in_use_days as f64,
        in_use_seconds: in_use_days * 86_400,
        baseline_mbps: billed.map(|b| b / 5),
        billed_peak_mbps: billed,
    }
}

#[test]
fn seed_002_enhanced_95_is_300_x_15_x_16_over_30() {
    let months = BTreeMap::from([("2026-11".to_owned(), month(Some(300), 280, 16, 0))]);
    let lines = charges::enhanced95("g1", &months, Some(d("15")), &shanghai(), ALL).unwrap();
    assert_eq!(lines[0].amount, d("2400"));
    assert_eq!(lines[0].exact, d("2400"));
    assert_eq!(lines[0].settled_at, cst(2026, 12, 1, 0, 0, 0));
}

#[test]
fn the_classic_95th_is_the_months_95th_times_the_price() {
    let months = BTreeMap::from([("2026-11".to_owned(), month(None, 0, 30, 123_456_789))]);
    let lines = charges::p95("eip", &months, Some(d("20")), &shanghai(), ALL).unwrap();
    assert_eq!(lines[0].quantity, d("123.456789"));
    assert_eq!(lines[0].exact, d("2469.13578"));
    assert_eq!(lines[0].amount, d("2469.14"));
}

proptest! {
    /// The hourly lines of any bandwidth history sum (exactly) to the per-second integral of
    /// the price, and each line's amount is its exact amount to the cent.
    #[test]
    fn hourly_segments_sum_to_the_per_second_integral(
        start_offset in 0i64..7200,
        length in 1i64..(5 * 3600),
        changes in proptest::collection::vec((1i64..(5 * 3600), 1u64..2000), 0..12),
    ) {
        let created = cst(2026, 11, 2, 8, 0, 0) + start_offset;
        let deleted = created + length;
        let mut history = vec![(created, 5u64)];
        for (at, mbps) in changes {
            history.push((created + at, mbps));
        }
        history.sort_by_key(|&(t, _)| t);
        let price = Tariff::PerMbps(d("0.0123"));
        let lines = charges::hourly(
            "eip",
            Life { created, deleted: Some(deleted), stopped: &[] },
            &history,
            Some(&price),
            &shanghai(),
            ALL,
        )
        .unwrap();
        let sum: Decimal = lines.iter().map(|l| l.exact).sum();
        let mut integral_numerator = Decimal::ZERO;
        for t in created..deleted {
            let mbps = history.iter().rev().find(|(at, _)| *at <= t).unwrap().1;
            integral_numerator += d("0.0123") * Decimal::from(mbps);
        }
        let integral = integral_numerator / Decimal::from(3600);
        prop_assert!((sum - integral).abs() < d("0.000000000000000001"), "{sum} vs {integral}");
        for l in &lines {
            prop_assert!((l.amount - l.exact).abs() <= d("0.005"));
        }
    }

    /// A month rated in one run gives the same lines as its days rated one by one.
    #[test]
    fn a_month_in_one_run_equals_its_days(
        created_day in 0u32..20,
        created_second in 0i64..86_400,
        deleted_after in proptest::option::of(3600i64..(20 * 86_400)),
        traffic in proptest::collection::vec(0u64..5_000_000_000, 30),
    ) {
        let cal = shanghai();
        let created = cst(2026, 11, 1, 0, 0, 0) + i64::from(created_day) * 86_400 + created_second;
        let life = Life { created, deleted: deleted_after.map(|a| created + a), stopped: &[(created + 7200, created + 90_000)] };
        let history = [(created, 3u64), (created + 5000, 7)];
        let days: BTreeMap<String, DayFigures> = traffic
            .iter()
            .enumerate()
            .map(|(i, &b)| (format!("2026-11-{:02}", i + 1), day(b)))
            .collect();
        let month = Window { from: cst(2026, 11, 1, 0, 0, 0), to: cst(2026, 12, 1, 0, 0, 0) };
        let rate = |w: Window| {
            let mut v = charges::hourly("eip", life, &history, Some(&Tariff::PerMbps(d("0.06"))), &cal, w).unwrap();
            v.extend(charges::traffic("eip", life, &days, Some(&TRAFFIC), GbUnit::Decimal, &cal, w).unwrap());
            v
        };
        let whole = rate(month);
        let mut by_day = Vec::new();
        for k in 0..30 {
            let from = month.from + k * 86_400;
            by_day.extend(rate(Window { from, to: from + 86_400 }));
        }
        let key = |l: &charges::ChargeLine| (l.plan, l.settled_at, l.from);
        let mut whole = whole;
        whole.sort_by_key(key);
        by_day.sort_by_key(key);
        prop_assert_eq!(whole, by_day);
    }
}

#[test]
fn time_the_service_was_stopped_is_not_billed() {
    let created = cst(2017, 8, 2, 10, 30, 0);
    // Arrears from 11:15 to 13:45.
    let stopped = [(cst(2017, 8, 2, 11, 15, 0), cst(2017, 8, 2, 13, 45, 0))];
    let life = Life {
        created,
        deleted: Some(cst(2017, 8, 2, 15, 0, 0)),
        stopped: &stopped,
    };
    let lines = charges::hourly(
        "eip",
        life,
        &[(created, 1)],
        Some(&Tariff::PerMbps(d("0.06"))),
        &shanghai(),
        ALL,
    )
    .unwrap();
    let billed: i64 = lines.iter().map(|l| l.to - l.from).sum();
    // 10:30-11:15 and 13:45-15:00: two hours of the four and a half.
    assert_eq!(billed, 2 * 3600);
    let sum: Decimal = lines.iter().map(|l| l.exact).sum();
    assert_eq!(sum, d("0.12"));
    // A day stopped throughout keeps no retention fee; its (blocked: none) traffic is nothing.
    let whole_day = [(cst(2017, 8, 3, 0, 0, 0), cst(2017, 8, 5, 0, 0, 0))];
    let lines = charges::traffic(
        "eip",
        Life {
            created,
            deleted: Some(cst(2017, 8, 5, 0, 0, 0)),
            stopped: &whole_day,
        },
        &BTreeMap::new(),
        Some(&TRAFFIC),
        GbUnit::Decimal,
        &shanghai(),
        ALL,
    )
    .unwrap();
    let amounts: Vec<Decimal> = lines.iter().map(|l| l.amount).collect();
    assert_eq!(amounts, [d("0.48"), d("0"), d("0")]);
}
