//! Graceful degradation: the state disk fills up and frees (a real, small tmpfs). Metering goes
//! on in the kernel, refused rounds wait in memory and are committed in order once the disk has
//! room, nothing partial is committed, and the store ends up with every byte, each interval
//! once, and the day that closed during the outage.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
};

use eip_meter_tests::{disk::SmallDisk, require_root};
use metering_common::{DirectionCounters, TrafficCounters};
use metering_daemon::{
    billing::{calendar::Calendar, series::SeriesOptions},
    sampling::{MAX_PENDING_ROUNDS, Sampler},
    store::Store,
};

/// 2026-10-31T23:00:00+08:00: the day closes an hour in.
const T0: i64 = 1_793_458_800;
const STEP: i64 = 300;

fn counters(i: u64, o: u64) -> TrafficCounters {
    TrafficCounters {
        inbound: DirectionCounters {
            bytes: i,
            packets: 0,
        },
        outbound: DirectionCounters {
            bytes: o,
            packets: 0,
        },
    }
}

fn sampler(db: &Path) -> Sampler {
    Sampler::open(
        Calendar::new("Asia/Shanghai", 300).unwrap(),
        SeriesOptions::default(),
        "r1".into(),
        Store::open(db).unwrap(),
    )
    .unwrap()
}

/// Every sample in the store: (eip, start) -> (in, out, partial), failing on a duplicate.
fn samples(s: &Sampler) -> BTreeMap<(String, String), (u64, u64, bool)> {
    let mut csv = Vec::new();
    s.store().export_samples(&mut csv).unwrap();
    let mut out = BTreeMap::new();
    for line in String::from_utf8(csv).unwrap().lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let key = (f[0].to_owned(), f[1].to_owned());
        let value = (
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[5] == "partial",
        );
        assert!(out.insert(key.clone(), value).is_none(), "{key:?} twice");
    }
    out
}

/// Bytes per EIP over all its samples, and its intervals, which must be contiguous.
fn totals(samples: &BTreeMap<(String, String), (u64, u64, bool)>) -> HashMap<String, (u64, u64)> {
    let mut t: HashMap<String, (u64, u64)> = HashMap::new();
    let mut starts: HashMap<String, Vec<i64>> = HashMap::new();
    for ((eip, start), (i, o, _)) in samples {
        let e = t.entry(eip.clone()).or_default();
        e.0 += i;
        e.1 += o;
        let at = chrono::DateTime::parse_from_rfc3339(start)
            .unwrap()
            .timestamp();
        starts.entry(eip.clone()).or_default().push(at);
    }
    for (eip, mut s) in starts {
        s.sort_unstable();
        assert!(
            s.windows(2).all(|w| w[1] - w[0] == STEP),
            "{eip}: intervals not contiguous: {s:?}"
        );
    }
    t
}

#[test]
fn a_full_state_disk_loses_nothing_and_commits_nothing_partial() {
    require_root();
    let disk = SmallDisk::mount("64m").unwrap();
    let db = disk.path().join("samples.db");
    let eips: Vec<IpAddr> = ["203.0.113.10", "203.0.113.11", "2001:db8::12"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let leaving: IpAddr = "203.0.113.20".parse().unwrap();
    let mut s = sampler(&db);
    for e in eips.iter().chain([&leaving]) {
        s.eip_added(*e, T0);
    }
    // Each EIP counts 1000 x its number of bytes in and 10 x out per interval.
    let reading = |round: i64, with_leaving: bool| -> Vec<(IpAddr, TrafficCounters)> {
        let mut r: Vec<(IpAddr, TrafficCounters)> = eips
            .iter()
            .enumerate()
            .map(|(n, e)| {
                let k = round as u64 * (n as u64 + 1);
                (*e, counters(1000 * k, 10 * k))
            })
            .collect();
        if with_leaving {
            r.push((leaving, counters(7 * round as u64, 0)));
        }
        r
    };
    let mut round = 0;
    for _ in 0..6 {
        round += 1;
        s.round(T0 + round * STEP, &reading(round, true)).unwrap();
    }

    // The disk fills up: across the day's end, and with an EIP removed meanwhile.
    disk.fill().unwrap();
    for _ in 0..8 {
        round += 1;
        assert!(s.round(T0 + round * STEP, &reading(round, true)).is_err());
    }
    assert_eq!(s.pending_commits(), 8);
    let leaving_final = counters(7 * round as u64 + 3, 0);
    assert!(
        s.eips_removed(&[(leaving, leaving_final)], T0 + round * STEP + 10)
            .is_err()
    );
    assert_eq!(s.pending_commits(), 9);
    // Nothing partial reached the store: its newest round is the last one before the disk
    // filled.
    assert_eq!(
        samples(&s).keys().filter(|k| k.0 == "203.0.113.10").count(),
        6
    );

    disk.free().unwrap();
    round += 1;
    s.round(T0 + round * STEP, &reading(round, false)).unwrap();
    assert_eq!(s.pending_commits(), 0);
    let all = samples(&s);
    let t = totals(&all);
    for (n, e) in eips.iter().enumerate() {
        let k = round as u64 * (n as u64 + 1);
        assert_eq!(t[&e.to_string()], (1000 * k, 10 * k), "{e}");
    }
    assert_eq!(t[&leaving.to_string()], (7 * (round as u64 - 1) + 3, 0));
    // The refused rounds were written as measured: partial are only each EIP's first sample
    // (counted from zero since it was added) and the removed EIP's last (by design).
    let partial: Vec<_> = all.iter().filter(|(_, v)| v.2).map(|(k, _)| k).collect();
    assert_eq!(partial.len(), eips.len() + 2, "{partial:?}");
    // The day that closed while the disk was full has its figures.
    let days = s.store().closed_days("2026-10-31").unwrap();
    assert_eq!(days.len(), eips.len() + 1, "{days:?}");

    // A restart reads it all back and goes on.
    drop(s);
    let mut s = sampler(&db);
    round += 1;
    s.round(T0 + round * STEP, &reading(round, false)).unwrap();
    let t = totals(&samples(&s));
    let k = round as u64;
    assert_eq!(t["203.0.113.10"], (1000 * k, 10 * k));
}

#[test]
fn past_the_limit_rounds_are_skipped_and_covered_by_one_delta() {
    require_root();
    let disk = SmallDisk::mount("64m").unwrap();
    let db = disk.path().join("samples.db");
    let eip: IpAddr = "203.0.113.30".parse().unwrap();
    let mut s = sampler(&db);
    s.eip_added(eip, T0);
    let reading = |round: i64| vec![(eip, counters(1000 * round as u64, 0))];
    s.round(T0 + STEP, &reading(1)).unwrap();
    disk.fill().unwrap();
    let refused = MAX_PENDING_ROUNDS as i64 + 3;
    for round in 2..2 + refused {
        assert!(s.round(T0 + round * STEP, &reading(round)).is_err());
        assert!(s.pending_commits() <= MAX_PENDING_ROUNDS);
    }
    assert_eq!(s.pending_commits(), MAX_PENDING_ROUNDS);
    disk.free().unwrap();
    let last = 2 + refused;
    s.round(T0 + last * STEP, &reading(last)).unwrap();
    let all = samples(&s);
    // Every byte, every interval once; the first (counted from zero), the three skipped and
    // the one after them, which one delta covers, as partial.
    assert_eq!(totals(&all)[&eip.to_string()], (1000 * last as u64, 0));
    let partial = all.values().filter(|v| v.2).count();
    assert_eq!(partial, 1 + 4, "{all:?}");
}
