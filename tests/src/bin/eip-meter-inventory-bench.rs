//! `cargo xtask bench inventory`: inventory changes at 1,000,000 EIPs through the admin API,
//! beside today's file path (edit the TOML, SIGHUP) in the same run, with the real daemon
//! (release build) in a network namespace:
//!
//! * `change_latency_ms_p99_1m_eips`: one resize (`PATCH /v1/eips/A`), from the call until the
//!   pinned kernel maps show the new cap, p50/p99 of 200; the file path: `eip-meter eip set
//!   --in-file` (edit, validate, SIGHUP, watch the maps), 3 of them;
//! * `changes_per_second_1m_eips`: batches of 10,000 resizes (`POST /v1/changes`); the file
//!   path: a file with 10,000 EIPs changed, SIGHUP, until `config applied`;
//! * `sync_seconds_1m_eips`: `PUT /v1/inventory` of 1,000,000 EIPs with 1% changed (9,000
//!   resized, 1,000 gone, 1,000 new), streamed from a file; the file path is the same reload;
//! * `daemon_rss_mib_1m_eips`: the daemon's resident memory with 1,000,000 EIPs, provisioned
//!   through the API and from the file.
//!
//! Usage: eip-meter-inventory-bench OUT.json (EIP_METER_BIN: the release binary; EIPS: how
//! many, default 1,000,000).

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use eip_meter_tests::{
    Daemon, require_root,
    topology::{Topology, TopologyOptions},
    write_bench_report,
};
use hyper::Method;
use metering_daemon::{
    dataplane::PinnedMaps,
    inventory::client::{self, Answer},
};
use serde_json::{Value, json};

fn eip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// This router's inbound cap for a purchase (share 0.75).
fn cap_bps(mbps: u64) -> u64 {
    mbps * 750_000
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Api {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        match self
            .runtime
            .block_on(client::call(&self.socket, method, path, body))?
        {
            Answer::Ok(v) => Ok(v),
            Answer::Refused(s, e) => anyhow::bail!("{path}: {s}: {} {:?}", e.message, e.items),
        }
    }

    fn sync(&self, file: &Path) -> Result<Value> {
        match self.runtime.block_on(client::stream_file(
            &self.socket,
            Method::PUT,
            "/v1/inventory",
            file,
        ))? {
            Answer::Ok(v) => Ok(v),
            Answer::Refused(s, e) => anyhow::bail!("sync: {s}: {} {:?}", e.message, e.items),
        }
    }
}

/// Waits until the kernel holds `mbps` as `addr`'s cap.
fn wait_cap(maps: &PinnedMaps, addr: IpAddr, mbps: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let e = maps.enforcement_of(addr)?;
        if e.and_then(|e| e.caps).map(|c| c.inbound.rate_bps) == Some(cap_bps(mbps)) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{addr} never got {mbps} Mbit/s");
        thread::sleep(Duration::from_micros(200));
    }
}

/// The desired inventory as NDJSON: every EIP at 100 Mbit/s except the `changed` ones.
fn write_ndjson(path: &Path, n: u32, changed: impl Fn(u32) -> Option<Option<u64>>) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        match changed(i) {
            Some(None) => continue,
            Some(Some(bw)) => writeln!(out, r#"{{"address":"{}","bandwidth_mbps":{bw}}}"#, eip(i))?,
            None => writeln!(out, r#"{{"address":"{}","bandwidth_mbps":100}}"#, eip(i))?,
        }
    }
    out.flush()?;
    Ok(())
}

/// The same inventory as `[[eip]]` tables after `head`.
fn write_toml(
    path: &Path,
    head: &str,
    n: u32,
    changed: impl Fn(u32) -> Option<Option<u64>>,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(head.as_bytes())?;
    for i in 0..n {
        let bw = match changed(i) {
            Some(None) => continue,
            Some(Some(bw)) => bw,
            None => 100,
        };
        writeln!(
            out,
            "\n[[eip]]\naddress = \"{}\"\nbandwidth_mbps = {bw}",
            eip(i)
        )?;
    }
    out.flush()?;
    Ok(())
}

/// 1% of `n` changed: 80% of it resized, 10% gone, 10% new (past the end).
fn one_percent(n: u32) -> (u32, impl Fn(u32) -> Option<Option<u64>>) {
    let step = 100;
    let total = n + n / 1000;
    (total, move |i: u32| {
        if i >= n {
            Some(Some(100))
        } else if i.is_multiple_of(step) {
            match (i / step) % 10 {
                0 => Some(None),
                _ => Some(Some(300)),
            }
        } else {
            None
        }
    })
}

fn main() -> Result<()> {
    require_root();
    let out = std::env::args()
        .nth(1)
        .context("usage: eip-meter-inventory-bench OUT.json")?;
    let binary = PathBuf::from(std::env::var("EIP_METER_BIN").context("EIP_METER_BIN")?);
    let n: u32 = std::env::var("EIPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![],
        ipv6: false,
    })?;
    let work = tempfile::tempdir()?;
    // One interval a day: no sampling round falls inside the measurements (the first round of
    // 1,000,000 new EIPs is another issue's benchmark).
    let head = topo.config_with(
        &[],
        &format!("capacity = {}", n + n / 50),
        "interval_seconds = 86400\ntimezone = \"UTC\"",
    ) + "\n[metrics]\nenabled = false\n";
    let mut report = String::new();

    // --- The admin API.
    let mut daemon = Daemon::start_ready(&binary, &topo.router, &head, Duration::from_secs(60))?;
    let pid = daemon.pid().context("daemon pid")?;
    let api = Api {
        socket: daemon.api_socket()?,
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    let all = work.path().join("all.ndjson");
    write_ndjson(&all, n, |_| None)?;
    let started = Instant::now();
    let v = api.sync(&all)?;
    let provision_s = started.elapsed().as_secs_f64();
    ensure!(v["added"].as_u64() == Some(u64::from(n)), "provisioned {v}");
    thread::sleep(Duration::from_secs(2));
    let rss_api = rss_mib(pid);
    let maps = PinnedMaps::open(&daemon.pin_dir)?;

    let mut latencies = Vec::new();
    for k in 0..200u32 {
        let addr = eip((k * 4_999) % n);
        let mbps = 101 + u64::from(k % 50);
        let started = Instant::now();
        api.call(
            Method::PATCH,
            &format!("/v1/eips/{addr}"),
            Some(&json!({ "bandwidth_mbps": mbps })),
        )?;
        wait_cap(&maps, addr, mbps, Duration::from_secs(10))?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let (lat_p50, lat_p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));

    let batch = 10_000u32;
    let mut rates = Vec::new();
    for b in 0..10u32 {
        let changes: Vec<Value> = (0..batch)
            .map(|i| {
                json!({"op": "patch_eip", "address": eip((b * batch + i) * 7 % n).to_string(),
                       "bandwidth_mbps": 200 + b})
            })
            .collect();
        let body = json!({ "changes": changes });
        let started = Instant::now();
        let v = api.call(Method::POST, "/v1/changes", Some(&body))?;
        let last = eip(((b * batch + batch - 1) * 7) % n);
        wait_cap(&maps, last, u64::from(200 + b), Duration::from_secs(10))?;
        rates.push(f64::from(batch) / started.elapsed().as_secs_f64());
        ensure!(v["changed"].as_u64().unwrap_or(0) > 0, "{v}");
    }
    let (rate_med, rate_min, rate_max) = (
        median(rates.clone()),
        rates.iter().copied().fold(f64::MAX, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
    );

    // Back to the base inventory, then the 1% sync measured.
    api.sync(&all)?;
    let (total, changed) = one_percent(n);
    let sync_file = work.path().join("sync.ndjson");
    write_ndjson(&sync_file, total, &changed)?;
    let started = Instant::now();
    let v = api.sync(&sync_file)?;
    let sync_s = started.elapsed().as_secs_f64();
    let sync_summary = v.clone();
    wait_cap(&maps, eip(n + 1), 100, Duration::from_secs(1))?;
    let _ = writeln!(report, "api sync 1%: {v}");
    drop(maps);
    ensure!(daemon.stop()?, "daemon did not stop cleanly");
    drop(daemon);

    // --- Today's file path, same inventory.
    let config = work.path().join("file.toml");
    write_toml(&config, &head, n, |_| None)?;
    let text = std::fs::read_to_string(&config)?;
    let config_mb = text.len() as f64 / 1e6;
    let started = Instant::now();
    let mut daemon = Daemon::start_ready(&binary, &topo.router, &text, Duration::from_secs(300))?;
    let start_file_s = started.elapsed().as_secs_f64();
    drop(text);
    let pid = daemon.pid().context("daemon pid")?;
    thread::sleep(Duration::from_secs(2));
    let rss_file = rss_mib(pid);
    let maps = PinnedMaps::open(&daemon.pin_dir)?;
    wait_cap(&maps, eip(n - 1), 100, Duration::from_secs(30))?;
    let mut file_latencies = Vec::new();
    for k in 0..3u32 {
        let addr = eip(k * 333_331 % n);
        let mbps = 120 + u64::from(k);
        let started = Instant::now();
        let out = Command::new(&binary)
            .args([
                "eip",
                "set",
                &addr.to_string(),
                "--bandwidth",
                &mbps.to_string(),
            ])
            .args(["--in-file", "--timeout-ms", "120000", "--config"])
            .arg(&daemon.config_path)
            .output()?;
        ensure!(
            out.status.success(),
            "eip set --in-file: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_cap(&maps, addr, mbps, Duration::from_secs(60))?;
        file_latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    file_latencies.sort_by(f64::total_cmp);
    // The file with 1% changed, then SIGHUP, until applied.
    let new_config = work.path().join("file-1pct.toml");
    write_toml(&new_config, &head, total, &changed)?;
    let started = Instant::now();
    let text = std::fs::read_to_string(&new_config)?;
    std::fs::write(&daemon.config_path, &text)?;
    drop(text);
    let applied_before = daemon.log_events("config applied").len();
    daemon.signal(nix::sys::signal::Signal::SIGHUP)?;
    while daemon.log_events("config applied").len() == applied_before {
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "file reload not applied in 300 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let file_sync_s = started.elapsed().as_secs_f64();
    let file_changes = f64::from(n / 100);
    drop(maps);
    ensure!(daemon.stop()?, "daemon did not stop cleanly");
    drop(daemon);

    let json = json!({
        "eips": n,
        "change_latency_ms_p99_1m_eips": lat_p99,
        "change_latency_ms_p50_1m_eips": lat_p50,
        "change_latency_ms_max_1m_eips": latencies.last(),
        "change_latency_ms_file_1m_eips": file_latencies,
        "changes_per_second_1m_eips": rate_med,
        "changes_per_second_1m_eips_range": [rate_min, rate_max],
        "changes_per_second_file_1m_eips": file_changes / file_sync_s,
        "sync_seconds_1m_eips": sync_s,
        "sync_summary": sync_summary,
        "sync_seconds_file_1m_eips": file_sync_s,
        "provision_sync_seconds_1m_eips": provision_s,
        "start_seconds_file_1m_eips": start_file_s,
        "config_file_mb_1m_eips": config_mb,
        "daemon_rss_mib_1m_eips": rss_api,
        "daemon_rss_mib_file_1m_eips": rss_file,
        "targets": {
            "change_latency_ms_p99_1m_eips": "< 50",
            "changes_per_second_1m_eips": ">= 10000",
            "sync_seconds_1m_eips": "< 5",
        },
    });
    println!(
        "inventory at {n} EIPs: API vs file\n\
         change latency p99   {lat_p99:>10.2} ms (p50 {lat_p50:.2})   file {:?} ms\n\
         changes per second   {rate_med:>10.0} ({rate_min:.0}-{rate_max:.0})   file {:.0}\n\
         sync 1% changed      {sync_s:>10.2} s   file {file_sync_s:.2} s\n\
         provision by sync    {provision_s:>10.2} s   file start {start_file_s:.2} s ({config_mb:.0} MB config)\n\
         daemon RSS           {rss_api:>10.0} MiB   file {rss_file:.0} MiB\n{report}",
        file_latencies.iter().map(|l| l.round()).collect::<Vec<_>>(),
        file_changes / file_sync_s,
    );
    write_bench_report(Path::new(&out), &json)
}
