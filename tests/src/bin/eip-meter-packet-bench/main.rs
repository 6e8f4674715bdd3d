//! `cargo xtask bench packet`: what the data plane costs per packet, measured
//! deterministically in the kernel (`BPF_PROG_TEST_RUN`) beside a program that only returns;
//! what a million EIPs cost the control plane; and one TCP flow through a cap at real
//! round-trip times. Writes the JSON file named by the first argument and prints a table.
//!
//! * [`control`]: the first sampling round of 1,000,000 new EIPs, and the rounds at the end
//!   of a month with a full month of state each.
//! * The policy of 1,000,000 EIPs: provisioned from nothing with their caps, then every cap
//!   changed (the figure an operator waits for after a price-plan migration).
//! * [`kernel`]: nanoseconds per packet of each path (counting IPv4/IPv6, capped, not an EIP,
//!   blocked, a GSO super-packet) against the floor, with the counts checked afterwards.
//! * [`cold`]: the same path with packets spread over 100,000 EIPs, against one EIP.
//! * [`tcp`]: goodput and retransmissions through the cap and through HTB at 10 and 50 ms.
//! * [`forward`]: the small-packet forwarding rate with no program, counting, capped.

mod cold;
mod control;
mod forward;
mod kernel;
mod memory;
mod tcp;

use std::{net::IpAddr, time::Instant};

use anyhow::{Context, Result};
use eip_meter_tests::topology::UPLINK;
use metering_daemon::{
    config::{DataplaneConfig, EipState, OnExit, PolicingConfig},
    dataplane::Dataplane,
    policy::{Caps, DesiredPolicy, EipPlan, bucket_pair},
};
use serde_json::json;

const EIPS: u32 = 1_000_000;
/// The first round of a million new EIPs is measured this many times (median and range).
const FIRST_ROUND_RUNS: usize = 3;
/// And the rounds at the end of a month (each run restores a full month for every EIP).
const MONTH_END_RUNS: usize = 3;

/// Median and range of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(xs: &[f64]) -> Self {
        let mut xs = xs.to_vec();
        xs.sort_by(f64::total_cmp);
        Self {
            median: xs[xs.len() / 2],
            min: xs[0],
            max: xs[xs.len() - 1],
        }
    }

    /// The spread of `key` over repeated `runs`, and the run at its median (whose split of
    /// the time is then the one reported).
    pub fn over<T>(runs: &[T], key: impl Fn(&T) -> f64) -> (Self, &T) {
        let spread = Self::of(&runs.iter().map(&key).collect::<Vec<_>>());
        let median = runs
            .iter()
            .find(|r| key(r) == spread.median)
            .expect("the median is one of the runs");
        (spread, median)
    }

    fn json(self) -> serde_json::Value {
        json!([self.min, self.max])
    }
}

/// An active EIP, capped at `mbps` in both directions when given.
pub fn plan(mbps: Option<u64>) -> EipPlan {
    plan_with(
        mbps,
        &PolicingConfig {
            share: 1.0,
            ..PolicingConfig::default()
        },
    )
}

/// An active EIP, capped at `mbps` with `policing`'s bucket depth and marking threshold.
pub fn plan_with(mbps: Option<u64>, policing: &PolicingConfig) -> EipPlan {
    EipPlan {
        state: EipState::Active,
        caps: match mbps {
            Some(mbps) => Caps::Own(bucket_pair(Some(mbps), None, None, policing).expect("capped")),
            None => Caps::None,
        },
    }
}

fn main() -> Result<()> {
    eip_meter_tests::require_root();
    let out = std::env::args()
        .nth(1)
        .context("usage: eip-meter-packet-bench OUT.json [--month-end-only | --cold-only]")?;
    if std::env::args().nth(2).as_deref() == Some("--month-end-only") {
        // For profiling the round that closes a month: prints its figures, writes nothing.
        for _ in 0..MONTH_END_RUNS {
            let m = control::month_end(EIPS)?;
            println!(
                "month end: closing round {:.3} s (compute {:.3} s, commit {:.3} s), last round {:.3} s",
                m.closing_round_seconds,
                m.closing_compute_seconds,
                m.closing_commit_seconds,
                m.last_round_seconds
            );
        }
        return Ok(());
    }
    let cold_only = std::env::args().nth(2).as_deref() == Some("--cold-only");
    if !cold_only {
        return all(&out);
    }
    // For working on the cold path: only cold against hot, printed, nothing written.
    let (mut dp, mut desired, _) = provisioned()?;
    let _ = kernel::measure(&mut dp)?;
    let (dp, cold) = cold::measure(dp, &mut desired)?;
    dp.shutdown()?;
    for (name, s) in memory::measure().named() {
        println!("{name}: {:.1} ({:.1}-{:.1})", s.median, s.min, s.max);
    }
    println!(
        "cold {:.0} ns ({:.0}-{:.0}), cold non-EIP {:.0} ns, hot {:.0} ns ({:.0}-{:.0}): {:.2}x",
        cold.cold.median,
        cold.cold.min,
        cold.cold.max,
        cold.cold_non_eip.median,
        cold.hot.median,
        cold.hot.min,
        cold.hot.max,
        cold.cold.median / cold.hot.median
    );
    Ok(())
}

/// The data plane loaded and attached nowhere yet, with the bench's EIPs provisioned capped,
/// and how long provisioning took.
fn provisioned() -> Result<(Dataplane, DesiredPolicy, f64)> {
    let mut config = DataplaneConfig::with_interfaces(vec![UPLINK.to_owned()]);
    config.capacity = EIPS + 16;
    config.bpffs_root = "/sys/fs/bpf/eip-meter-bench".into();
    config.instance = format!("packet{}", std::process::id());
    config.on_exit = OnExit::Detach;
    let mut dp = Dataplane::load(&config)?;

    eprintln!("bench: provisioning {EIPS} capped EIPs");
    let others: Vec<IpAddr> = (0..EIPS).map(eip_meter_tests::bench_eip).collect();
    let mut desired = DesiredPolicy {
        groups: Vec::new(),
        eips: others
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, plan(Some(1 + (i as u64 * 7919) % 1000))))
            .collect(),
        ecn: true,
    };
    kernel::add_measured(&mut desired);
    let started = Instant::now();
    dp.apply(&desired)?;
    let provision_seconds = started.elapsed().as_secs_f64();
    Ok((dp, desired, provision_seconds))
}

fn all(out: &str) -> Result<()> {
    eprintln!("bench: the first sampling round of {EIPS} new EIPs, {FIRST_ROUND_RUNS} times");
    let runs = (0..FIRST_ROUND_RUNS)
        .map(|_| control::measure(EIPS))
        .collect::<Result<Vec<_>>>()?;
    let (first_spread, first) = Spread::over(&runs, |r| r.first_round_seconds);
    let (next_spread, _) = Spread::over(&runs, |r| r.next_round_seconds);
    eprintln!(
        "bench: the rounds at the end of a month, {EIPS} EIPs with a full month each, {MONTH_END_RUNS} times"
    );
    let month_ends = (0..MONTH_END_RUNS)
        .map(|_| control::month_end(EIPS))
        .collect::<Result<Vec<_>>>()?;
    let (closing_spread, month_end) = Spread::over(&month_ends, |m| m.closing_round_seconds);
    let (last_spread, _) = Spread::over(&month_ends, |m| m.last_round_seconds);
    let (mut dp, mut desired, provision_seconds) = provisioned()?;
    eprintln!("bench: changing the caps of all {EIPS} EIPs");
    for (i, (_, p)) in desired.eips.iter_mut().take(EIPS as usize).enumerate() {
        *p = plan(Some(1 + (i as u64 * 7919 + 13) % 1000));
    }
    let started = Instant::now();
    let report = dp.apply(&desired)?;
    let apply_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.changed >= EIPS as usize - 1,
        "only {} policies changed",
        report.changed
    );

    eprintln!("bench: BPF_PROG_TEST_RUN per-packet cost");
    let ns = kernel::measure(&mut dp)?;
    eprintln!(
        "bench: cold ({} EIPs) against hot (one EIP), kernel run-time statistics",
        cold::COLD_EIPS
    );
    let (dp, cold) = cold::measure(dp, &mut desired)?;
    eprintln!("bench: the cost of one cache miss (pointer chase)");
    let misses = memory::measure();
    eprintln!(
        "bench: one TCP flow through a {} Mbit/s cap at {:?} ms RTT (delay line)",
        tcp::CAP_MBPS,
        tcp::RTTS_MS
    );
    let (dp, tcp, sweep) = tcp::measure(dp, &mut desired)?;
    eprintln!("bench: small-packet forwarding rate (context, not a target)");
    let (dp, forwarding) = forward::measure(dp, &mut desired)?;
    dp.shutdown()?;

    let floor = ns
        .iter()
        .find(|(n, _)| *n == "empty")
        .map(|(_, s)| s.median)
        .expect("floor");
    let mut report = serde_json::Map::new();
    report.insert("eips_provisioned".into(), json!(EIPS));
    println!("| path (64-byte frame unless said) | ns/packet, median | range | above the floor |");
    println!("|---|---|---|---|");
    for (name, s) in &ns {
        report.insert(format!("ns_per_packet_{name}"), json!(s.median));
        report.insert(format!("ns_per_packet_{name}_range"), s.json());
        if *name != "empty" {
            report.insert(
                format!("ns_per_packet_{name}_above_empty"),
                json!(s.median - floor),
            );
        }
        println!(
            "| {name} | {:.0} | {:.0}-{:.0} | {:.0} |",
            s.median,
            s.min,
            s.max,
            s.median - floor
        );
    }
    let ratio = cold.cold.median / cold.hot.median;
    report.insert("ns_per_packet_cold".into(), json!(cold.cold.median));
    report.insert("ns_per_packet_cold_range".into(), cold.cold.json());
    report.insert(
        "ns_per_packet_cold_non_eip".into(),
        json!(cold.cold_non_eip.median),
    );
    report.insert("ns_per_packet_hot".into(), json!(cold.hot.median));
    report.insert("ns_per_packet_hot_range".into(), cold.hot.json());
    report.insert("ns_per_packet_cold_ratio_to_hot".into(), json!(ratio));
    report.insert(
        "cold_sender_packets_per_second".into(),
        json!(cold.packets_per_second.median),
    );
    println!(
        "| cold: {} EIPs in turn (run-time statistics, sender in a namespace) | {:.0} | {:.0}-{:.0} | {ratio:.2}x hot |",
        cold::COLD_EIPS,
        cold.cold.median,
        cold.cold.min,
        cold.cold.max
    );
    println!(
        "| cold, no EIP: {} other addresses in turn (the hash lookup alone) | {:.0} | {:.0}-{:.0} | |",
        cold::COLD_EIPS,
        cold.cold_non_eip.median,
        cold.cold_non_eip.min,
        cold.cold_non_eip.max
    );
    println!(
        "| hot: the same traffic to one EIP | {:.0} | {:.0}-{:.0} | |",
        cold.hot.median, cold.hot.min, cold.hot.max
    );
    // The floor under the cold figure: one miss, whatever the layout.
    for (name, s) in misses.named() {
        report.insert(name.clone(), json!(s.median));
        report.insert(format!("{name}_range"), s.json());
        println!(
            "| {name}: one random cache miss (pointer chase) | {:.1} | {:.1}-{:.1} | |",
            s.median, s.min, s.max
        );
    }
    for f in &tcp {
        let prefix = f.limiter.prefix();
        let rtt = f.rtt_target_ms;
        for (name, s) in [
            ("goodput_pct_of_cap", f.goodput_pct_of_cap),
            ("retransmits_per_mb", f.retransmits_per_mb),
            ("rtt_ms", f.rtt_ms),
        ] {
            report.insert(format!("{prefix}_{name}_rtt{rtt}"), json!(s.median));
            report.insert(format!("{prefix}_{name}_rtt{rtt}_range"), s.json());
        }
        println!(
            "| TCP, {rtt} ms RTT (measured {:.1}), {:?}: goodput % of cap; retransmits/MB | {:.1}; {:.1} | {:.1}-{:.1}; {:.1}-{:.1} | |",
            f.rtt_ms.median,
            f.limiter,
            f.goodput_pct_of_cap.median,
            f.retransmits_per_mb.median,
            f.goodput_pct_of_cap.min,
            f.goodput_pct_of_cap.max,
            f.retransmits_per_mb.min,
            f.retransmits_per_mb.max
        );
    }
    for rtt in tcp::RTTS_MS {
        let goodput = |l: tcp::Limiter| {
            tcp.iter()
                .find(|f| f.rtt_target_ms == rtt && f.limiter == l)
                .map(|f| f.goodput_pct_of_cap.median)
                .expect("measured")
        };
        let htb = goodput(tcp::Limiter::Htb);
        report.insert(
            format!("tcp_goodput_ratio_vs_htb_rtt{rtt}"),
            json!(goodput(tcp::Limiter::Policer) / htb),
        );
        report.insert(
            format!("tcp_ecn_goodput_ratio_vs_htb_rtt{rtt}"),
            json!(goodput(tcp::Limiter::PolicerEcn) / htb),
        );
    }
    report.insert("tcp_sweep_rtt50".into(), sweep);
    for (name, s) in forward::VARIANTS.iter().zip(&forwarding.delivered) {
        report.insert(format!("forwarded_pps_{name}"), json!(s.median));
        report.insert(format!("forwarded_pps_{name}_range"), s.json());
        println!(
            "| forwarding rate, 64-byte frames, {name} (context) | {:.0} packets/s | {:.0}-{:.0} | |",
            s.median, s.min, s.max
        );
    }
    report.insert(
        "forwarded_pps_offered".into(),
        json!(forwarding.offered.median),
    );
    for (key, value) in [
        ("first_round_seconds_1m_new_eips", first.first_round_seconds),
        (
            "first_round_compute_seconds_1m_new_eips",
            first.first_round_compute_seconds,
        ),
        (
            "first_round_commit_seconds_1m_new_eips",
            first.first_round_commit_seconds,
        ),
        ("round_seconds_1m_eips_after_first", next_spread.median),
        ("round_seconds_1m_eips_last_of_month", last_spread.median),
        (
            "round_seconds_1m_eips_month_end",
            month_end.closing_round_seconds,
        ),
        (
            "round_compute_seconds_1m_eips_month_end",
            month_end.closing_compute_seconds,
        ),
        (
            "round_commit_seconds_1m_eips_month_end",
            month_end.closing_commit_seconds,
        ),
        (
            "restore_seconds_1m_eips_full_month",
            month_end.restore_seconds,
        ),
    ] {
        report.insert(key.into(), json!(value));
    }
    report.insert(
        "first_round_seconds_1m_new_eips_range".into(),
        first_spread.json(),
    );
    report.insert(
        "round_seconds_1m_eips_after_first_range".into(),
        next_spread.json(),
    );
    report.insert(
        "round_seconds_1m_eips_month_end_range".into(),
        closing_spread.json(),
    );
    report.insert(
        "round_seconds_1m_eips_last_of_month_range".into(),
        last_spread.json(),
    );
    report.insert(
        "month_end_closed_months".into(),
        json!(month_end.closed_months),
    );
    println!(
        "| first round, {EIPS} new EIPs (median of {FIRST_ROUND_RUNS}) | {:.2} s (billing state {:.2} s, store {:.2} s); the next round {:.2} s | {:.2}-{:.2} s | |",
        first.first_round_seconds,
        first.first_round_compute_seconds,
        first.first_round_commit_seconds,
        next_spread.median,
        first_spread.min,
        first_spread.max
    );
    println!(
        "| month end, {EIPS} EIPs with a full month each (median of {MONTH_END_RUNS}) | last round of the month {:.2} s; the round closing it {:.2} s (billing state {:.2} s, store {:.2} s); restored in {:.1} s | closing {:.2}-{:.2} s | |",
        last_spread.median,
        month_end.closing_round_seconds,
        month_end.closing_compute_seconds,
        month_end.closing_commit_seconds,
        month_end.restore_seconds,
        closing_spread.min,
        closing_spread.max
    );
    report.insert("provision_seconds_1m_eips".into(), json!(provision_seconds));
    report.insert("policy_apply_seconds_1m_eips".into(), json!(apply_seconds));
    println!("| policy of {EIPS} new capped EIPs written | {provision_seconds:.2} s | | |");
    println!("| caps of {EIPS} EIPs changed | {apply_seconds:.2} s | | |");
    report.insert(
        "targets".into(),
        json!({
            "ns_per_packet_counting_v4_above_empty": "<= 60",
            "ns_per_packet_capped_v4_above_empty": "<= 100",
            "ns_per_packet_cold_ratio_to_hot": "<= 2",
            "policy_apply_seconds_1m_eips": "< 1",
            "first_round_seconds_1m_new_eips": "< 2",
            "round_seconds_1m_eips_month_end": "< 1",
            "tcp_goodput_ratio_vs_htb_rtt50": ">= 0.95",
            "tcp_retransmits_per_mb_rtt50": "<= 35",
            "tcp_ecn_retransmits_per_mb_rtt50": "about 0",
        }),
    );
    eip_meter_tests::write_bench_report(out, &report)
}
