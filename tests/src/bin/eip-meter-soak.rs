//! `eip-meter-soak --minutes N --out REPORT.json BINARY`: the daemon under traffic to many EIPs
//! while faults arrive at random moments, then the books are checked (`cargo xtask soak`).
//!
//! Faults: `kill -9` and SIGTERM with `on_exit = "keep"` (each followed by a restart), SIGHUP
//! with a valid config (an EIP resized, blocked or unblocked, a churn EIP added or removed) and
//! with an invalid one, the state directory's file system (a small tmpfs) filling up for a few
//! rounds and freeing, the billing store (a real PostgreSQL) going away and coming back, and the
//! daemon's wall clock stepping forward and back (libfaketime: an offset the soak changes, read
//! by the daemon at every clock read; its monotonic clock stays real, as under a real step).
//!
//! At the end, for every EIP that stayed in the inventory: the bytes in its samples equal the
//! kernel's counters, no interval is written twice, every gap between its first sample and its
//! last is one the daemon logged as skipped by a forward clock step (an outage is spread as
//! `partial` samples, leaving no gap), the daemon is alive, and `report`'s figures of the day
//! equal `compute` over the exported samples for them. For every EIP: the billing store holds
//! exactly the local samples, each once.

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
    Daemon, billing_store,
    clock::FakeClock,
    disk::SmallDisk,
    packet_fuzz::Rng,
    postgres::Postgres,
    topology::{Topology, TopologyOptions, UPLINK, eip_v4},
};
use serde_json::json;

const INTERVAL_SECONDS: u32 = 2;
/// EIPs that stay in the inventory throughout (checked to the byte).
const STEADY: u8 = 8;
/// EIPs added and removed by reloads.
const CHURN: u8 = 4;
const HOST: &str = "router-a";
/// The clock's offset stays within this many seconds of the real one.
const OFFSET_RANGE: (i64, i64) = (-120, 900);
/// Logged by the daemon when its clock is behind its last round, once per episode.
const BEHIND: &str = "the wall clock is behind the last committed round (stepped back?): no round until it passes it; the kernel keeps counting and the first round after covers the wait as partial samples";
/// Logged by the daemon for the first round after a clock step.
const STEPPED: &str = "the wall clock stepped since the last round: this round's samples are marked partial, spread over the real time elapsed only (intervals the clock skipped stay missing)";

#[derive(Default)]
struct Inventory {
    /// Per steady EIP: its cap (Mbit/s) and whether it is blocked.
    caps: BTreeMap<IpAddr, (Option<u64>, bool)>,
    churn_present: BTreeSet<IpAddr>,
    /// The `[billing_store]` section.
    billing_store: String,
}

impl Inventory {
    fn config(&self, instance: &str, state_dir: &std::path::Path) -> String {
        let mut s = format!(
            "[dataplane]\ninterfaces = [\"{UPLINK}\"]\nbpffs_root = \"/sys/fs/bpf/eip-meter-test\"\ninstance = \"{instance}\"\non_exit = \"keep\"\n\n[sampler]\nstate_dir = \"{}\"\nhost = \"{HOST}\"\ninterval_seconds = {INTERVAL_SECONDS}\ntimezone = \"UTC\"\n",
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
        s.push_str(&self.billing_store);
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
    clock_steps_forward: u32,
    clock_steps_back: u32,
    billing_store_outages: u32,
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
    let pg = Postgres::start(&binary)?;
    pg.add_login_role("router_a", "secret-a", "eip_meter_daemon")?;
    let mut clock = FakeClock::new()?;
    let mut inventory = Inventory {
        billing_store: pg.billing_store_section("router_a", "secret-a")?,
        ..Inventory::default()
    };
    for eip in &steady {
        inventory.caps.insert(*eip, (None, false));
    }
    let config = inventory.config(&instance, &state_dir);
    let env = clock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = Daemon::start_with_env(&binary, &topo.router, &config, &steady, &env)?;

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
        match rng.below(8) {
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
            5 => {
                let forward = rng.below(2) == 0;
                if forward && clock.offset() < OFFSET_RANGE.1 - 60 {
                    clock.step(10 + rng.below(50) as i64)?;
                    faults.clock_steps_forward += 1;
                } else if clock.offset() > OFFSET_RANGE.0 + 20 {
                    clock.step(-(3 + rng.below(18) as i64))?;
                    faults.clock_steps_back += 1;
                }
            }
            6 => {
                pg.stop_server()?;
                thread::sleep(Duration::from_millis(2_000 + rng.below(13_000) as u64));
                pg.start_server()?;
                faults.billing_store_outages += 1;
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
    // Rounds take the last traffic in: wait for one whose interval starts a full interval
    // after the traffic stopped, on the daemon's clock (after a step back it waits for its
    // clock to pass its last round).
    let stopped_at = clock.now() + i64::from(INTERVAL_SECONDS);
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    while daemon.samples()?.iter().map(|r| r.start).max() < Some(stopped_at) {
        ensure!(
            Instant::now() < settle_deadline,
            "no round after the traffic stopped within 60 s\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(500));
    }
    ensure!(
        daemon.alive(),
        "the daemon died at the end\n{}",
        daemon.log()
    );
    let counters = daemon.counters()?;
    // The store takes every round up to the last, then the daemon stops (cleanly).
    let last_round = daemon
        .samples()?
        .iter()
        .map(|r| r.start)
        .max()
        .context("no sample")?
        + i64::from(INTERVAL_SECONDS);
    let ship_deadline = Instant::now() + Duration::from_secs(120);
    while billing_store::shipped_boundary(&pg, HOST) < last_round {
        ensure!(
            Instant::now() < ship_deadline,
            "not shipped up to {last_round} within 120 s (at {})\n{}",
            billing_store::shipped_boundary(&pg, HOST),
            daemon.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let store_refusals = daemon.log_events("sampling round not committed: the store refuses writes; rounds are kept in memory and retried every round (the kernel keeps counting)").len();
    let stepped = daemon.log_events(STEPPED);
    let behind = daemon.log_events(BEHIND).len();
    ensure!(daemon.stop()?, "unclean exit at the end\n{}", daemon.log());
    let samples = daemon.samples()?;
    let shipped = billing_store::compare_with_local(&pg, &samples, HOST)
        .context("the billing store does not hold exactly the local samples")?;
    let conflicts: i64 = pg.value("SELECT count(*) FROM sample_conflicts")?;
    ensure!(conflicts == 0, "{conflicts} rows refused as conflicting");

    // Where a forward step left intervals out: the first interval the round after it sampled.
    let step = i64::from(INTERVAL_SECONDS);
    let resumed_at: BTreeSet<i64> = stepped
        .iter()
        .filter(|e| e["fields"]["stepped_seconds"].as_i64().unwrap_or(0) > 0)
        .filter_map(|e| {
            let f = &e["fields"];
            Some(f["boundary"].as_i64()? - f["spread_intervals"].as_i64()? * step)
        })
        .collect();

    // The books, per steady EIP.
    let mut checked = Vec::new();
    let mut partial = 0;
    let mut skipped_by_clock = 0;
    for eip in &steady {
        let rows: Vec<_> = samples.iter().filter(|r| r.eip == *eip).collect();
        let starts: BTreeSet<i64> = rows.iter().map(|r| r.start).collect();
        ensure!(
            starts.len() == rows.len(),
            "{eip}: an interval written twice"
        );
        for (a, b) in starts.iter().zip(starts.iter().skip(1)) {
            if b - a > step {
                ensure!(
                    resumed_at.contains(b),
                    "{eip}: intervals {a}..{b} missing, and no forward clock step explains them"
                );
                skipped_by_clock += ((b - a) / step - 1) as usize;
            }
        }
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
    // The auditor's path: report (from the store) equals compute over the export, for the day
    // of the last sample (the daemon's clock, not the soak's).
    let last_start = samples.iter().map(|r| r.start).max().context("no sample")?;
    let today = chrono::DateTime::from_timestamp(last_start, 0)
        .context("day")?
        .format("%Y-%m-%d")
        .to_string();
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

    let report = json!({
        "minutes": minutes,
        "seed": seed,
        "interval_seconds": INTERVAL_SECONDS,
        "datagrams_sent": datagrams,
        "faults": faults,
        "store_refusal_episodes_logged": store_refusals,
        "clock_steps_logged": stepped.len(),
        "clock_behind_episodes_logged": behind,
        "clock_offset_at_the_end_seconds": clock.offset(),
        "intervals_skipped_by_the_clock_per_steady_eip_total": skipped_by_clock,
        "billing_store": shipped,
        "samples": samples.len(),
        "partial_samples_of_steady_eips": partial,
        "steady_eips_checked_to_the_byte": checked,
        "report_days_equal_to_compute": days_compared,
        "daemon_alive_at_the_end": true,
        "clock": "libfaketime offset (LD_PRELOAD), realtime only",
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("soak: passed; report in {}", out.display());
    Ok(())
}
