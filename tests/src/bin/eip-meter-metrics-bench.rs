//! `cargo xtask bench`: the cost of `/metrics` at scale, in process (the exposition reads no
//! kernel map, so none is needed):
//!
//! * a full per-EIP scrape over HTTP of 100,000 EIPs (seconds, bytes), and an aggregates-only
//!   scrape of 1,000,000 EIPs (`per_eip = false`), each the median of several;
//! * the extra resident memory the exposition costs at 100,000 EIPs: peak RSS of the same
//!   work (rounds and scrapes) with per-EIP series and without, each in a child process;
//! * a sampling round of 100,000 EIPs (deltas, billing state, store commit, figures) with and
//!   without scrapes running at the same time, as medians with their range.
//!
//! Usage: eip-meter-metrics-bench OUT.json

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::{Context, Result, ensure};
use metering_common::{DirectionCounters, DropCounters, TrafficCounters};
use metering_daemon::{
    billing::{calendar::Calendar, series::SeriesOptions},
    config::{AnyInterface, Config},
    exposition::{
        MetricsHandle, server,
        tally::{RoundFacts, Tally},
    },
    sampling::Sampler,
    store::Store,
};
use serde_json::json;

/// 2026-11-01T00:00:00Z.
const T0: i64 = 1_793_491_200;
const INTERVAL: i64 = 300;

fn eip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// Every EIP's counters after `round` rounds of traffic that differs per EIP and round.
fn readings(n: u32, round: u64) -> Vec<(IpAddr, TrafficCounters)> {
    (0..n)
        .map(|i| {
            let per = |k: u64| {
                (u64::from(i) % 997 + 1) * 1_000_000 * k
                    + (u64::from(i) * 7919 + k * 104_729) % 1_000_000
            };
            (
                eip(i),
                TrafficCounters {
                    inbound: DirectionCounters {
                        bytes: per(round),
                        packets: round * 1000,
                    },
                    outbound: DirectionCounters {
                        bytes: per(round) / 3,
                        packets: round * 500,
                    },
                },
            )
        })
        .collect()
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Setup {
    sampler: Sampler,
    tally: Tally,
    handle: MetricsHandle,
    n: u32,
    round: u64,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new(n: u32, per_eip: bool) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let text = format!(
            "[dataplane]\ninterfaces = [\"eth0\"]\ncapacity = {}\n[sampler]\nstate_dir = \"{}\"\ninterval_seconds = {INTERVAL}\ntimezone = \"UTC\"\n[metrics]\nper_eip = {per_eip}\n",
            n.max(1),
            dir.path().display()
        );
        let config = Config::parse(&text, &AnyInterface).map_err(|p| anyhow::anyhow!("{p:?}"))?;
        let calendar = Calendar::new("UTC", INTERVAL as u32)?;
        let mut sampler = Sampler::open(
            calendar,
            SeriesOptions::default(),
            "bench".into(),
            Store::open(&dir.path().join("samples.db"))?,
        )?;
        for i in 0..n {
            sampler.eip_added(eip(i), T0 - 10);
            if i % 3 == 0 {
                sampler.bandwidth_set(eip(i), T0 - 10, 100 + u64::from(i % 900));
            }
        }
        let tally = Tally::new(&config, (n, 4096), None);
        Ok(Self {
            sampler,
            tally,
            handle: MetricsHandle::default(),
            n,
            round: 0,
            _dir: dir,
        })
    }

    /// One round: samples, store commit, and the exposition's figures; returns its seconds.
    fn round(&mut self) -> Result<f64> {
        self.round += 1;
        let boundary = T0 + INTERVAL * self.round as i64;
        let readings = readings(self.n, self.round);
        let drops = vec![DropCounters::default(); readings.len()];
        let started = Instant::now();
        let r = self.sampler.round(boundary, &readings)?;
        let facts = RoundFacts {
            boundary,
            readings: &readings,
            drops: &drops,
            non_eip: TrafficCounters::default(),
            samples: r.samples,
            partial_samples: r.partial_samples,
            counter_resets: r.counter_resets,
            read_seconds: 0.0,
            compute_seconds: r.compute_seconds,
            commit_seconds: r.commit_seconds,
            commit_bytes: self.sampler.store().last_commit_bytes(),
            store_bytes: 0,
            slots_used: (self.n as usize, 0),
        };
        let expose = Instant::now();
        self.tally.round_committed(&facts, &self.sampler);
        self.tally.exposed_in(expose.elapsed().as_secs_f64());
        self.handle.publish(self.tally.published());
        Ok(started.elapsed().as_secs_f64())
    }
}

/// Serves `handle` on an ephemeral loopback port from a runtime of its own.
fn serve(handle: MetricsHandle) -> Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = server::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            server::serve(listener, handle, std::future::pending()).await;
        });
    });
    Ok(rx.recv()?)
}

/// Median and range of `runs` timings of `f`.
fn timed(runs: usize, mut f: impl FnMut() -> Result<f64>) -> Result<(f64, f64, f64)> {
    let mut t: Vec<f64> = (0..runs).map(|_| f()).collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[0], t[t.len() - 1]))
}

/// A full scrape read as a scraper reads it (streamed, nothing kept); returns its seconds and
/// the bytes received.
fn scrape(addr: SocketAddr) -> Result<(f64, usize)> {
    use std::io::{Read as _, Write as _};
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    let mut head = Vec::new();
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if head.len() < 16 {
            head.extend_from_slice(&buf[..n.min(16)]);
        }
        total += n;
    }
    ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "not a 200: {}",
        String::from_utf8_lossy(&head)
    );
    Ok((started.elapsed().as_secs_f64(), total))
}

/// A child process: 100,000 EIPs, four rounds and two scrapes; prints its peak RSS in KiB.
fn rss_probe(per_eip: bool) -> Result<()> {
    let mut setup = Setup::new(100_000, per_eip)?;
    for _ in 0..4 {
        setup.round()?;
    }
    let addr = serve(setup.handle.clone())?;
    scrape(addr)?;
    scrape(addr)?;
    println!("{}", rss_kib("VmHWM:"));
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--rss-probe") {
        return rss_probe(args.get(2).map(String::as_str) == Some("true"));
    }
    let out = args
        .get(1)
        .context("usage: eip-meter-metrics-bench OUT.json")?;
    let mut report = serde_json::Map::new();
    let mut table = Vec::new();

    // 100,000 EIPs, per-EIP series.
    eprintln!("bench: /metrics with 100,000 EIPs (per-EIP series)");
    let mut setup = Setup::new(100_000, true)?;
    // Four rounds, so every series has a day and a month under way.
    for _ in 0..4 {
        setup.round()?;
    }
    let addr = serve(setup.handle.clone())?;
    let (scrape_s, scrape_min, scrape_max) = timed(5, || Ok(scrape(addr)?.0))?;
    let (_, bytes) = scrape(addr)?;
    // The memory the exposition costs: the same process (sampler, store, four rounds, two
    // scrapes) with per-EIP series and without, each in a child of its own, peak RSS.
    let exe = std::env::current_exe()?;
    let peak_mib = |per_eip: bool| -> Result<f64> {
        let out = std::process::Command::new(&exe)
            .args(["--rss-probe", if per_eip { "true" } else { "false" }])
            .output()?;
        ensure!(
            out.status.success(),
            "probe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().parse::<f64>()? / 1024.0)
    };
    let with = peak_mib(true)?;
    let without = peak_mib(false)?;
    let metrics_rss_mib = with - without;
    table.push(format!(
        "scrape, 100,000 EIPs: {scrape_s:.3} s (range {scrape_min:.3}-{scrape_max:.3}), {bytes} bytes; extra peak RSS {metrics_rss_mib:.1} MiB ({with:.1} MiB with per-EIP series, {without:.1} MiB without)"
    ));
    report.insert("scrape_seconds_100k_eips".into(), json!(scrape_s));
    report.insert(
        "scrape_seconds_100k_eips_range".into(),
        json!([scrape_min, scrape_max]),
    );
    report.insert("scrape_bytes_100k_eips".into(), json!(bytes));
    report.insert("metrics_rss_mib_100k_eips".into(), json!(metrics_rss_mib));
    report.insert("peak_rss_mib_100k_eips_per_eip".into(), json!(with));
    report.insert(
        "peak_rss_mib_100k_eips_aggregates_only".into(),
        json!(without),
    );

    // A round with and without scrapes running.
    eprintln!("bench: rounds of 100,000 EIPs with and without scrapes");
    let (quiet, quiet_min, quiet_max) = timed(7, || setup.round())?;
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if scrape(addr).is_ok() {
                    n += 1;
                }
            }
            n
        })
    };
    let (busy, busy_min, busy_max) = timed(7, || setup.round())?;
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("scraper");
    table.push(format!(
        "round, 100,000 EIPs: {quiet:.3} s (range {quiet_min:.3}-{quiet_max:.3}) alone; {busy:.3} s (range {busy_min:.3}-{busy_max:.3}) with {scrapes} full scrapes running beside it"
    ));
    report.insert("round_seconds_100k_eips_no_scrape".into(), json!(quiet));
    report.insert(
        "round_seconds_100k_eips_no_scrape_range".into(),
        json!([quiet_min, quiet_max]),
    );
    report.insert("round_seconds_100k_eips_while_scraping".into(), json!(busy));
    report.insert(
        "round_seconds_100k_eips_while_scraping_range".into(),
        json!([busy_min, busy_max]),
    );
    report.insert("scrapes_during_rounds".into(), json!(scrapes));
    drop(setup);

    // 1,000,000 EIPs, aggregates only.
    eprintln!("bench: /metrics with 1,000,000 EIPs (aggregates only)");
    let mut setup = Setup::new(1_000_000, false)?;
    for _ in 0..2 {
        setup.round()?;
    }
    let addr = serve(setup.handle.clone())?;
    let (agg, agg_min, agg_max) = timed(21, || Ok(scrape(addr)?.0))?;
    let (_, agg_bytes) = scrape(addr)?;
    let expose = setup
        .handle
        .current()
        .last_round
        .map(|r| r.expose)
        .unwrap_or(0.0);
    table.push(format!(
        "scrape, 1,000,000 EIPs, aggregates only: {:.1} ms (range {:.1}-{:.1}), {agg_bytes} bytes; building the round's figures {:.0} ms",
        agg * 1e3,
        agg_min * 1e3,
        agg_max * 1e3,
        expose * 1e3
    ));
    report.insert("scrape_seconds_1m_eips_aggregates".into(), json!(agg));
    report.insert(
        "scrape_seconds_1m_eips_aggregates_range".into(),
        json!([agg_min, agg_max]),
    );
    report.insert("scrape_bytes_1m_eips_aggregates".into(), json!(agg_bytes));
    report.insert("expose_seconds_1m_eips".into(), json!(expose));

    println!(
        "metrics (target: 100k scrape < 2 s and < 256 MiB extra; 1M aggregates < 50 ms; a scrape never delays a round):"
    );
    for line in &table {
        println!("  {line}");
    }
    eip_meter_tests::write_bench_report(out, &report)
}
