//! `eip-meter-soak --minutes N --out REPORT.json BINARY`: the daemon under traffic to many EIPs
//! while faults arrive at random moments, then the books are checked (`cargo xtask soak`).
//!
//! Faults: `kill -9` and SIGTERM with `on_exit = "keep"` (each followed by a restart), SIGHUP
//! with a valid config (an EIP resized, blocked or unblocked, a churn EIP added or removed) and
//! with an invalid one, and the state directory's file system (a small tmpfs) filling up for a
//! few rounds and freeing. Not injected: billing-store outages (tested in `billing_store`) and
//! wall-clock steps (the daemon reads the real clock; there is no injectable one yet).
//!
//! At the end, for every EIP that stayed in the inventory: the bytes in its samples equal the
//! kernel's counters, no interval is written twice, the intervals from its first sample to its
//! last have no gap (an outage is spread as `partial` samples), the daemon is alive, and
//! `report`'s figures of the day equal `compute` over the exported samples for them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use eip_meter_tests::{
    Daemon,
    disk::SmallDisk,
    packet_fuzz::Rng,
    topology::{Topology, TopologyOptions, UPLINK, eip_v4},
};
use serde_json::json;

const INTERVAL_SECONDS: u32 = 2;
/// EIPs that stay in the inventory throughout (checked to the byte).
const STEADY: u8 = 8;
/// EIPs added and removed by reloads.
const CHURN: u8 = 4;

#[derive(Default)]
struct Inventory {
    /// Per steady EIP: its cap (Mbit/s) and whether it is blocked.
    caps: BTreeMap<IpAddr, (Option<u64>, bool)>,
    churn_present: BTreeSet<IpAddr>,
}

impl Inventory {
    fn config(&self, instance: &str, state_dir: &std::path::Path) -> String {
        let mut s = format!(
            "[dataplane]\ninterfaces = [\"{UPLINK}\"]\nbpffs_root = \"/sys/fs/bpf/eip-meter-test\"\ninstance = \"{instance}\"\non_exit = \"keep\"\n\n[sampler]\nstate_dir = \"{}\"\nhost = \"router-a\"\ninterval_seconds = {INTERVAL_SECONDS}\ntimezone = \"UTC\"\n",
            state_dir.display()
        );
        for (eip, (cap, blocked)) in &self.caps {
            s.push_str(&format!("\n[[eip]]\naddress = \"{eip}\"\n"));
            if let Some(mbps) = cap {
                s.push_str(&format!("bandwidth_mbps = {mbps}\n"));
            }
            if *blocked {
                s.push_str("state = \"arrears\"\n");
            }
        }
        for eip in &self.churn_present {
            s.push_str(&format!("\n[[eip]]\naddress = \"{eip}\"\n"));
        }
        s
    }
}

#[derive(Default, Debug, serde::Serialize)]
struct Faults {
    kill_9: u32,
    sigterm_keep: u32,
    sighup_valid: u32,
    sighup_invalid: u32,
    disk_full_episodes: u32,
}

fn main() -> Result<()> {
    eip_meter_tests::require_root();
    let mut minutes = 30.0;
    let mut out = PathBuf::from("target/soak/report.json");
    let mut binary = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--minutes" => minutes = args.next().context("--minutes N")?.parse()?,
            "--out" => out = args.next().context("--out FILE")?.into(),
            other if !other.starts_with('-') => binary = Some(PathBuf::from(other)),
            other => bail!("unknown argument {other}"),
        }
    }
    let binary = binary.context("usage: eip-meter-soak --minutes N --out FILE BINARY")?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    eprintln!("soak: {minutes} min, seed {seed}");
    let mut rng = Rng::new(seed);

    let steady: Vec<IpAddr> = (0..STEADY).map(|i| eip_v4(120 + i)).collect();
    let churn: Vec<IpAddr> = (0..CHURN).map(|i| eip_v4(140 + i)).collect();
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: steady.iter().chain(&churn).copied().collect(),
        ipv6: false,
    })?;
    let disk = SmallDisk::mount("64m")?;
    let state_dir = disk.path().join("state");
    let instance = topo.router.name().to_owned();
    let mut inventory = Inventory::default();
    for eip in &steady {
        inventory.caps.insert(*eip, (None, false));
    }
    let config = inventory.config(&instance, &state_dir);
    let mut daemon = Daemon::start(&binary, &topo.router, &config, &steady)?;

    // Traffic from the Internet host to every EIP, round robin, about 2,000 datagrams/s.
    let stop = Arc::new(AtomicBool::new(false));
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let sender = {
        let stop = stop.clone();
        let targets: Vec<IpAddr> = steady.iter().chain(&churn).copied().collect();
        let src = Topology::internet_addr(targets[0], 0).ip();
        topo.internet.spawn(move || {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(src, 0))?;
            let deadline = Instant::now() + duration + Duration::from_secs(5);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let dst = targets[(sent % targets.len() as u64) as usize];
                let size = 100 + (sent % 1200) as usize;
                // Unreachable ports are fine: the router counts what crosses it.
                let _ = socket.send_to(&vec![7u8; size], SocketAddr::new(dst, 9));
                sent += 1;
                thread::sleep(Duration::from_micros(500));
            }
            Ok(sent)
        })
    };

    let mut faults = Faults::default();
    let started = Instant::now();
    while started.elapsed() < duration {
        thread::sleep(Duration::from_millis(2_000 + rng.below(6_000) as u64));
        match rng.below(6) {
            0 => {
                daemon.kill()?;
                thread::sleep(Duration::from_millis(500 + rng.below(3_000) as u64));
                daemon.spawn(&topo.router)?;
                daemon.wait_ready(Duration::from_secs(60))?;
                faults.kill_9 += 1;
            }
            1 => {
                ensure!(daemon.stop()?, "SIGTERM: unclean exit\n{}", daemon.log());
                thread::sleep(Duration::from_millis(500 + rng.below(3_000) as u64));
                daemon.spawn(&topo.router)?;
                daemon.wait_ready(Duration::from_secs(60))?;
                faults.sigterm_keep += 1;
            }
            2 | 3 => {
                let eip = steady[rng.below(steady.len())];
                match rng.below(3) {
                    0 => {
                        let cap = [None, Some(5), Some(20), Some(100)][rng.below(4)];
                        inventory.caps.get_mut(&eip).expect("steady").0 = cap;
                    }
                    1 => {
                        let entry = inventory.caps.get_mut(&eip).expect("steady");
                        entry.1 = !entry.1;
                    }
                    _ => {
                        let c = churn[rng.below(churn.len())];
                        if !inventory.churn_present.remove(&c) {
                            inventory.churn_present.insert(c);
                        }
                    }
                }
                daemon.reload_applied(&inventory.config(&instance, &state_dir))?;
                faults.sighup_valid += 1;
            }
            4 => {
                daemon.reload("[dataplane\ninterfaces = 7\n")?;
                thread::sleep(Duration::from_millis(500));
                ensure!(
                    daemon.alive(),
                    "died on an invalid config\n{}",
                    daemon.log()
                );
                // Put the valid file back: a later restart reads it.
                std::fs::write(&daemon.config_path, inventory.config(&instance, &state_dir))?;
                faults.sighup_invalid += 1;
            }
            _ => {
                disk.fill()?;
                thread::sleep(Duration::from_secs(
                    u64::from(INTERVAL_SECONDS) * (1 + rng.below(4) as u64),
                ));
                disk.free()?;
                faults.disk_full_episodes += 1;
            }
        }
        ensure!(daemon.alive(), "the daemon died\n{}", daemon.log());
    }
    stop.store(true, Ordering::Relaxed);
    let datagrams = sender.join()?;
    // Two more rounds take the last traffic in.
    thread::sleep(Duration::from_secs(u64::from(INTERVAL_SECONDS) * 2 + 1));
    ensure!(
        daemon.alive(),
        "the daemon died at the end\n{}",
        daemon.log()
    );
    let counters = daemon.counters()?;
    thread::sleep(Duration::from_secs(u64::from(INTERVAL_SECONDS) + 1));
    let samples = daemon.samples()?;

    // The books, per steady EIP.
    let mut checked = Vec::new();
    let mut partial = 0;
    for eip in &steady {
        let rows: Vec<_> = samples.iter().filter(|r| r.eip == *eip).collect();
        let starts: BTreeSet<i64> = rows.iter().map(|r| r.start).collect();
        ensure!(
            starts.len() == rows.len(),
            "{eip}: an interval written twice"
        );
        let (first, last) = (
            *starts.first().context("no sample")?,
            *starts.last().context("no sample")?,
        );
        let expected = ((last - first) / i64::from(INTERVAL_SECONDS) + 1) as usize;
        ensure!(
            rows.len() == expected,
            "{eip}: {} intervals from first to last, {expected} expected (a gap)",
            rows.len()
        );
        let sampled: u64 = rows.iter().map(|r| r.bytes_in + r.bytes_out).sum();
        let c = counters.eip(*eip);
        let kernel = c.inbound_bytes + c.outbound_bytes;
        ensure!(
            sampled == kernel,
            "{eip}: {sampled} bytes in samples, {kernel} counted by the kernel"
        );
        partial += rows.iter().filter(|r| r.state == "partial").count();
        checked.push(json!({"eip": eip, "bytes": kernel, "samples": rows.len()}));
    }
    // The auditor's path: report (from the store) equals compute over the export.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let csv = daemon.subcommand(&["samples"])?;
    let computed = eip_meter_tests::compute(&binary, &csv, "UTC", INTERVAL_SECONDS)?;
    let report: serde_json::Value =
        serde_json::from_str(&daemon.subcommand(&["report", "--json", "--day", &today])?)?;
    let mut days_compared = 0;
    for e in report["eips"].as_array().context("report eips")? {
        let eip = e["name"].as_str().context("name")?;
        // A churn EIP removed and added again within the day has one stored day per stay (the
        // later replaces the earlier), while `compute` sums the whole day: compared are the
        // EIPs that stayed.
        if !steady.iter().any(|s| s.to_string() == eip) {
            continue;
        }
        for day in e["days"].as_array().into_iter().flatten() {
            let recomputed = &computed["eips"][eip]["days"][&today];
            if day["day"] != today.as_str() || recomputed.is_null() {
                continue;
            }
            for key in [
                "samples",
                "inbound_bytes",
                "outbound_bytes",
                "p95_bps",
                "enhanced_peak_bps",
            ] {
                ensure!(
                    day[key] == recomputed[key],
                    "{eip} {key}: report {} vs compute {}",
                    day[key],
                    recomputed[key]
                );
            }
            days_compared += 1;
        }
    }
    ensure!(days_compared > 0, "no day to compare");
    let store_refusals = daemon.log_events("sampling round not committed: the store refuses writes; rounds are kept in memory and retried every round (the kernel keeps counting)").len();
    ensure!(daemon.stop()?, "unclean exit at the end\n{}", daemon.log());

    let report = json!({
        "minutes": minutes,
        "seed": seed,
        "interval_seconds": INTERVAL_SECONDS,
        "datagrams_sent": datagrams,
        "faults": faults,
        "store_refusal_episodes_logged": store_refusals,
        "samples": samples.len(),
        "partial_samples_of_steady_eips": partial,
        "steady_eips_checked_to_the_byte": checked,
        "report_days_equal_to_compute": days_compared,
        "daemon_alive_at_the_end": true,
        "not_injected": ["billing store outages (see tests/tests/billing_store)", "wall-clock steps (no injectable clock)"],
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("soak: passed; report in {}", out.display());
    Ok(())
}
