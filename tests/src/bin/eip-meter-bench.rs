//! `cargo xtask bench`: sampler benchmarks, each beside its naive reference in the same run.
//!
//! * One sampling round (kernel counter read + deltas + per-EIP billing state + SQLite commit)
//!   over 100,000 and 1,000,000 provisioned EIPs, against a naive round that reads every slot
//!   with its own syscall.
//! * Peak RSS with a full month of state for 100,000 EIPs: the streaming state against the naive
//!   keep-every-sample state (each measured in a child process of its own).
//! * The monthly computation: streaming accumulators against sort-everything.
//!
//! Usage: eip-meter-bench OUT.json   (needs root: it creates eBPF maps)

use std::{collections::BTreeMap, net::IpAddr, process::Command, time::Instant};

use anyhow::{Context, Result, ensure};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use metering_common::{MAP_EIP_COUNTERS, TrafficCounters};
use metering_daemon::{
    billing::{
        SampleState, average_bps,
        calendar::Calendar,
        rules,
        series::{BandwidthHistory, Sample, Series, SeriesOptions},
    },
    config::{DataplaneConfig, OnExit},
    dataplane::Dataplane,
    sampling::Sampler,
    store::Store,
};
use serde_json::json;

/// 2026-11-01T00:00:00Z, a month start in UTC.
const T0: i64 = 1_793_491_200;
const INTERVAL: u32 = 300;
const MONTH_SAMPLES: i64 = 8640;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--rss-probe") {
        return rss_probe(&args[2], args[3].parse()?);
    }
    eip_meter_tests::require_root();
    let out = args
        .get(1)
        .context("usage: eip-meter-bench OUT.json [--rounds-only]")?;
    let rounds_only = args.iter().any(|a| a == "--rounds-only");

    let mut report = serde_json::Map::new();
    let mut table = Vec::new();
    for n in [100_000u32, 1_000_000] {
        eprintln!("bench: sampling rounds over {n} EIPs");
        let r = round_bench(n)?;
        let tag = if n == 100_000 { "100k" } else { "1m" };
        table.push(format!(
            "round, {n:>9} EIPs: {:.3} s (read {:.3} s + billing state {:.3} s + store {:.3} s); naive slot-by-slot read {:.3} s; first round {:.3} s",
            r.round, r.read, r.compute, r.commit, r.naive_read, r.first_round
        ));
        report.insert(format!("round_seconds_{tag}_eips"), json!(r.round));
        report.insert(format!("read_seconds_{tag}_eips"), json!(r.read));
        report.insert(
            format!("naive_read_seconds_{tag}_eips"),
            json!(r.naive_read),
        );
        report.insert(
            format!("first_round_seconds_{tag}_eips"),
            json!(r.first_round),
        );
        report.insert(format!("provision_seconds_{tag}_eips"), json!(r.provision));
    }

    if rounds_only {
        for line in &table {
            println!("  {line}");
        }
        return Ok(());
    }
    eprintln!("bench: peak RSS of a full month for 100,000 EIPs (two child processes)");
    let streaming = child_rss("streaming", 100_000)?;
    let naive = child_rss("naive", 100_000)?;
    table.push(format!(
        "peak RSS, 100,000 EIPs x full month: streaming {streaming:.0} MiB, naive keep-all {naive:.0} MiB"
    ));
    report.insert("rss_mib_100k_eips_full_month".into(), json!(streaming));
    report.insert("naive_rss_mib_100k_eips_full_month".into(), json!(naive));

    eprintln!("bench: monthly figures, streaming vs naive");
    let (stream_s, naive_s) = monthly_bench(2_000)?;
    table.push(format!(
        "monthly figures, 2,000 EIPs x 8,640 samples: streaming {stream_s:.3} s, naive sort-all {naive_s:.3} s, speedup {:.2}x",
        naive_s / stream_s
    ));
    report.insert("monthly_seconds_streaming_2k_eips".into(), json!(stream_s));
    report.insert("monthly_seconds_naive_2k_eips".into(), json!(naive_s));
    report.insert("monthly_speedup_vs_naive".into(), json!(naive_s / stream_s));

    println!(
        "sampler benchmark ({} CPUs)",
        std::thread::available_parallelism()?.get()
    );
    for line in &table {
        println!("  {line}");
    }
    eip_meter_tests::write_bench_report(out, &report)
}

fn eips(n: u32) -> Vec<IpAddr> {
    (0..n).map(eip_meter_tests::bench_eip).collect()
}

struct RoundResult {
    compute: f64,
    commit: f64,
    provision: f64,
    first_round: f64,
    round: f64,
    read: f64,
    naive_read: f64,
}

/// Median of `xs`.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn round_bench(n: u32) -> Result<RoundResult> {
    let mut config = DataplaneConfig::with_interfaces(Vec::new());
    config.capacity = n;
    config.bpffs_root = "/sys/fs/bpf/eip-meter-bench".into();
    config.instance = format!("bench{}x{n}", std::process::id());
    config.on_exit = OnExit::Detach;
    let addrs = eips(n);

    let started = Instant::now();
    let mut dp = Dataplane::load(&config)?;
    dp.apply_inventory(&addrs)?;
    let provision = started.elapsed().as_secs_f64();

    let dir = std::env::temp_dir().join(format!("eip-meter-bench-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let calendar = Calendar::new("UTC", INTERVAL)?;
    let mut sampler = Sampler::open(
        calendar,
        SeriesOptions::default(),
        "bench".into(),
        Store::open(&dir.join("samples.db"))?,
    )?;
    for a in &addrs {
        sampler.eip_added(*a, T0 - 10);
    }

    // Every EIP carries traffic in every interval, as on a busy router: the counters are
    // written straight into the kernel map before each round (CPU 0's copy; the others stay 0).
    let counters_pin = dp.pin_dir().join(MAP_EIP_COUNTERS);
    let mut counters: PerCpuArray<MapData, TrafficCounters> =
        PerCpuArray::try_from(Map::PerCpuArray(MapData::from_pin(&counters_pin)?))?;
    let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut totals = vec![TrafficCounters::default(); addrs.len()];
    let mut traffic = |totals: &mut [TrafficCounters], interval: u64| -> Result<()> {
        for (e, addr) in addrs.iter().enumerate() {
            let slot = dp.slots().slot(addr).context("provisioned")?;
            let b = bytes(e as u64, interval);
            let t = &mut totals[e];
            t.inbound.bytes += b;
            t.inbound.packets += b / 1200 + 1;
            t.outbound.bytes += b / 2;
            t.outbound.packets += b / 2400 + 1;
            let mut values = vec![TrafficCounters::default(); nr_cpus];
            values[0] = *t;
            counters.set(slot, PerCpuValues::try_from(values)?, 0)?;
        }
        Ok(())
    };

    traffic(&mut totals, 0)?;
    let first = Instant::now();
    sampler.round(T0, &dp.read_counters()?)?;
    let first_round = first.elapsed().as_secs_f64();

    let (mut rounds, mut reads, mut naive) = (Vec::new(), Vec::new(), Vec::new());
    let (mut computes, mut commits) = (Vec::new(), Vec::new());
    for k in 1..=3 {
        traffic(&mut totals, k as u64)?;
        let t = Instant::now();
        let readings = dp.read_counters()?;
        let read = t.elapsed().as_secs_f64();
        let r = sampler.round(T0 + k * i64::from(INTERVAL), &readings)?;
        ensure!(
            r.samples == n as usize,
            "round wrote {} samples for {n} EIPs",
            r.samples
        );
        computes.push(r.compute_seconds);
        commits.push(r.commit_seconds);
        rounds.push(t.elapsed().as_secs_f64());
        reads.push(read);

        let t = Instant::now();
        let pinned = metering_daemon::dataplane::PinnedMaps::open(dp.pin_dir())?;
        let slow = pinned.read_counters()?;
        naive.push(t.elapsed().as_secs_f64());
        // Both reads return exactly what was written into the map.
        let position: std::collections::HashMap<IpAddr, usize> =
            addrs.iter().enumerate().map(|(e, a)| (*a, e)).collect();
        ensure!(slow.len() == readings.len() && readings.len() == addrs.len());
        for (addr, c) in readings.iter().chain(&slow) {
            ensure!(*c == totals[position[addr]], "{addr}: read {c:?}");
        }
    }
    dp.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RoundResult {
        compute: median(computes),
        commit: median(commits),
        provision,
        first_round,
        round: median(rounds),
        read: median(reads),
        naive_read: median(naive),
    })
}

/// Deterministic, varied traffic: value of EIP `e` in interval `i`.
fn bytes(e: u64, i: u64) -> u64 {
    let x = (e.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9)) >> 20;
    x % 40_000_000_000
}

/// The `i`th sample of EIP `e` in the benchmark month (outbound half of inbound).
fn month_sample(e: u64, i: i64) -> Sample {
    let b = bytes(e, i as u64);
    Sample {
        start: T0 + i * i64::from(INTERVAL),
        inbound_bytes: b,
        outbound_bytes: b / 2,
        state: SampleState::Measured,
    }
}

fn child_rss(kind: &str, n: u32) -> Result<f64> {
    let out = Command::new(std::env::current_exe()?)
        .args(["--rss-probe", kind, &n.to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "rss probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Builds a full month of state for `n` EIPs and prints this process's peak RSS in MiB.
fn rss_probe(kind: &str, n: u32) -> Result<()> {
    let calendar = Calendar::new("UTC", INTERVAL)?;
    match kind {
        "streaming" => {
            let mut all: Vec<Series> = (0..n)
                .map(|_| {
                    Series::new(
                        calendar,
                        SeriesOptions::default(),
                        BandwidthHistory::default(),
                    )
                })
                .collect();
            // Interval-major, as the daemon feeds it: every EIP's series open at once.
            for i in 0..MONTH_SAMPLES - 1 {
                for (e, s) in all.iter_mut().enumerate() {
                    s.push(month_sample(e as u64, i))?;
                    // As the daemon does each round: closed figures go to the store.
                    std::hint::black_box(s.take_closed());
                }
            }
            std::hint::black_box(&all);
        }
        "naive" => {
            // What a sort-everything implementation must hold: every sample value of the month.
            let mut all: Vec<Vec<u64>> = (0..n).map(|_| Vec::new()).collect();
            for i in 0..MONTH_SAMPLES - 1 {
                for (e, v) in all.iter_mut().enumerate() {
                    v.push(average_bps(bytes(e as u64, i as u64), INTERVAL));
                }
            }
            std::hint::black_box(&all);
        }
        other => anyhow::bail!("unknown probe {other}"),
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("VmHWM")?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()?;
    println!("{}", kib / 1024.0);
    Ok(())
}

/// Monthly figures for `n` EIPs: streaming vs naive; checks they agree.
fn monthly_bench(n: u32) -> Result<(f64, f64)> {
    let calendar = Calendar::new("UTC", INTERVAL)?;
    let t = Instant::now();
    let mut streaming = Vec::new();
    for e in 0..u64::from(n) {
        let mut s = Series::new(
            calendar,
            SeriesOptions::default(),
            BandwidthHistory::default(),
        );
        for i in 0..MONTH_SAMPLES {
            s.push(month_sample(e, i))?;
        }
        s.close();
        let m = s.take_closed().months.remove(0).1;
        streaming.push((m.enhanced_avg_peak_mbps, m.p95_bps));
    }
    let stream_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut naive = Vec::new();
    for e in 0..u64::from(n) {
        let mut by_day: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        let mut all = Vec::with_capacity(MONTH_SAMPLES as usize);
        for i in 0..MONTH_SAMPLES {
            let b = bytes(e, i as u64);
            let v = average_bps(b, INTERVAL).max(average_bps(b / 2, INTERVAL));
            by_day.entry(i / 288).or_default().push(v);
            all.push(v);
        }
        let peaks: Vec<u64> = by_day
            .values()
            .map(|d| rules::mbps_floor(rules::enhanced_daily_peak_bps(d).unwrap_or(0)))
            .collect();
        naive.push((
            rules::enhanced_average_peak_mbps(&peaks).unwrap_or(0),
            rules::classic_p95(&all).unwrap_or(0),
        ));
    }
    let naive_s = t.elapsed().as_secs_f64();
    ensure!(
        streaming == naive,
        "streaming and naive monthly figures differ"
    );
    Ok((stream_s, naive_s))
}
