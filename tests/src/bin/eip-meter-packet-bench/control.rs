//! The sampler's side of a million EIPs: the first round after 1,000,000 EIPs were provisioned
//! at once (every one new to the store: registered, its presence opened, its series
//! checkpointed), then an ordinary round, each in the store's own files in a temporary
//! directory. Counters are given to the sampler directly: what is measured is the round, not
//! the kernel read (the sampler benchmark measures that).

use std::{net::IpAddr, time::Instant};

use anyhow::{Result, ensure};
use metering_common::TrafficCounters;
use metering_daemon::{
    billing::{calendar::Calendar, series::SeriesOptions},
    sampling::Sampler,
    store::Store,
};

/// 2026-11-15T12:00:00Z: mid-month, so the next round closes nothing.
const T0: i64 = 1_793_491_200 + 14 * 86_400 + 12 * 3600;
const INTERVAL: u32 = 300;

pub struct RoundFigures {
    pub first_round_seconds: f64,
    pub first_round_compute_seconds: f64,
    pub first_round_commit_seconds: f64,
    pub next_round_seconds: f64,
}

fn readings(eips: &[IpAddr], round: u64) -> Vec<(IpAddr, TrafficCounters)> {
    eips.iter()
        .enumerate()
        .map(|(i, a)| {
            let mut c = TrafficCounters::default();
            c.inbound.bytes = (i as u64 % 977 + 1) * 1_000_000 * round;
            c.inbound.packets = c.inbound.bytes / 1200;
            c.outbound.bytes = c.inbound.bytes / 2;
            c.outbound.packets = c.outbound.bytes / 1200;
            (*a, c)
        })
        .collect()
}

/// The sampler over the store in `dir` (created or restored).
fn open_sampler(dir: &tempfile::TempDir) -> Result<Sampler> {
    Ok(Sampler::open(
        Calendar::new("UTC", INTERVAL)?,
        SeriesOptions::default(),
        "bench".into(),
        Store::open(&dir.path().join("samples.db"))?,
    )?)
}

pub fn measure(n: u32) -> Result<RoundFigures> {
    let dir = tempfile::tempdir()?;
    let mut sampler = open_sampler(&dir)?;
    let eips: Vec<IpAddr> = (0..n).map(eip_meter_tests::bench_eip).collect();
    for a in &eips {
        sampler.eip_added(*a, T0 - 10);
    }
    let first = readings(&eips, 1);
    let started = Instant::now();
    let report = sampler.round(T0, &first)?;
    let first_round_seconds = started.elapsed().as_secs_f64();
    ensure!(
        report.samples == n as usize,
        "first round: {} samples",
        report.samples
    );
    let next = readings(&eips, 2);
    let started = Instant::now();
    let report2 = sampler.round(T0 + i64::from(INTERVAL), &next)?;
    let next_round_seconds = started.elapsed().as_secs_f64();
    ensure!(
        report2.samples == n as usize,
        "next round: {} samples",
        report2.samples
    );
    Ok(RoundFigures {
        first_round_seconds,
        first_round_compute_seconds: report.compute_seconds,
        first_round_commit_seconds: report.commit_seconds,
        next_round_seconds,
    })
}

/// The rounds at the end of a month for `n` EIPs that each carry a full month of 5-minute
/// samples: the store is prepared with every EIP registered and checkpointed with the same
/// full-month series (8,639 samples of November, built once), and its counter snapshot; the
/// sampler restores them as after a restart. Then the month's last round (its 8,640th sample,
/// every series at full monthly state) and the first round of December, which closes November
/// and November 30 for every EIP.
pub struct MonthEnd {
    pub last_round_seconds: f64,
    pub closing_round_seconds: f64,
    pub closing_compute_seconds: f64,
    pub closing_commit_seconds: f64,
    pub closed_months: usize,
    pub restore_seconds: f64,
}

/// 2026-12-01T00:00:00Z.
const DEC_1: i64 = 1_793_491_200 + 30 * 86_400;

pub fn month_end(n: u32) -> Result<MonthEnd> {
    use metering_daemon::{
        billing::{
            SampleState,
            samples::Snapshot,
            series::{BandwidthHistory, Sample, Series},
        },
        store::{RoundKind, RoundRecords, encode_snapshot},
    };
    let dir = tempfile::tempdir()?;
    let calendar = Calendar::new("UTC", INTERVAL)?;
    let step = i64::from(INTERVAL);
    let nov_1 = DEC_1 - 30 * 86_400;
    let mut month = Series::new(
        calendar,
        SeriesOptions::default(),
        BandwidthHistory::default(),
    );
    let mut t = nov_1;
    let mut k = 0u64;
    while t < DEC_1 - step {
        // Bytes that vary from sample to sample, so the month's top 5% is full of distinct values.
        let bytes = 1_000_000 + (k * 7_919 % 100_000) * 1_000;
        month.push(Sample {
            start: t,
            inbound_bytes: bytes,
            outbound_bytes: bytes / 2,
            state: SampleState::Measured,
        })?;
        let _ = month.take_closed();
        t += step;
        k += 1;
    }
    let eips: Vec<IpAddr> = (0..n).map(eip_meter_tests::bench_eip).collect();
    let last_boundary = DEC_1 - step; // the snapshot the restored sampler continues from
    let base = readings(&eips, 1000);
    {
        let mut store = Store::open(&dir.path().join("samples.db"))?;
        let new_eips: Vec<(u32, IpAddr)> = eips
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u32 + 1, *a))
            .collect();
        let mut snapshot = Vec::new();
        for ((id, _), (_, c)) in new_eips.iter().zip(&base) {
            encode_snapshot(
                &mut snapshot,
                *id,
                last_boundary,
                &Snapshot::of(last_boundary, c),
            );
        }
        let checkpoints: Vec<(u32, &Series)> =
            new_eips.iter().map(|(id, _)| (*id, &month)).collect();
        let opened: Vec<(u32, i64)> = new_eips.iter().map(|(id, _)| (*id, nov_1)).collect();
        store.commit_round(RoundRecords {
            host: "bench",
            boundary: last_boundary,
            snapshot: &snapshot,
            new_eips: &new_eips,
            checkpoints: &checkpoints,
            kind: RoundKind::Complete,
            first_start: nov_1,
            presence_opened: &opened,
            ..RoundRecords::default()
        })?;
    }
    let started = Instant::now();
    let mut sampler = open_sampler(&dir)?;
    let restore_seconds = started.elapsed().as_secs_f64();
    let advance = |round: u64| -> Vec<(IpAddr, TrafficCounters)> {
        let mut r = readings(&eips, 1000 + round);
        // Keep the order the sampler keeps its states in (the store's id order).
        r.sort_by_key(|(a, _)| *a);
        r
    };
    let started = Instant::now();
    let last = sampler.round(DEC_1, &advance(1))?;
    let last_round_seconds = started.elapsed().as_secs_f64();
    ensure!(
        last.samples == n as usize,
        "last round: {} samples",
        last.samples
    );
    let readings = advance(2);
    perf_control("enable");
    let started = Instant::now();
    let closing = sampler.round(DEC_1 + step, &readings)?;
    let closing_round_seconds = started.elapsed().as_secs_f64();
    perf_control("disable");
    ensure!(
        closing.closed_months >= n as usize,
        "the first round of December closed {} months for {n} EIPs",
        closing.closed_months
    );
    Ok(MonthEnd {
        last_round_seconds,
        closing_round_seconds,
        closing_compute_seconds: closing.compute_seconds,
        closing_commit_seconds: closing.commit_seconds,
        closed_months: closing.closed_months,
        restore_seconds,
    })
}

/// Profiling only the closing round: with `EIP_METER_PERF_CTL=FIFO`, tells a
/// `perf record --delay=-1 --control fifo:FIFO` to start or stop sampling (errors ignored: the
/// figures do not depend on it).
fn perf_control(command: &str) {
    if let Some(fifo) = std::env::var_os("EIP_METER_PERF_CTL") {
        let _ = std::fs::write(fifo, format!("{command}\n"));
    }
}
