//! `cargo xtask bench store`: the PostgreSQL billing store against a private PostgreSQL 15.
//!
//! * Shipping at 1,000,000 EIPs with 1% of them carrying traffic in each 5-minute round: one
//!   round built from the local store and shipped (rows, seconds), the way the daemon does.
//! * Catch-up: a backlog of rounds shipped oldest first, as a multiple of real time.
//! * The state directory's growth per day of backlog at 100,000 EIPs.
//! * A month of 100,000 EIPs on a dual-active pair (1% active per interval): `eip-meter bill
//!   --month` (seconds, peak RSS) beside `eip-meter compute` over the same samples exported as
//!   CSV (seconds, peak RSS), and their figures compared for a subset of EIPs.
//!
//! Usage: eip-meter-store-bench OUT.json [--eips N]   (root; EIP_METER_BIN = eip-meter binary)

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};
use eip_meter_tests::{bench_eip as eip, postgres::Postgres};
use metering_common::TrafficCounters;
use metering_daemon::{
    billing::{calendar::Calendar, series::SeriesOptions},
    config::BillingStoreConfig,
    sampling::Sampler,
    store::{
        Store,
        postgres::{
            self,
            batch::{self, BATCH_ROUNDS, BATCH_ROWS},
            ship::{self, HostIdentity},
        },
    },
};
use serde_json::json;

/// 2026-11-01T00:00:00Z, a month start in UTC.
const T0: i64 = 1_793_491_200;
const INTERVAL: i64 = 300;
const MONTH_INTERVALS: i64 = 8640;

fn main() -> Result<()> {
    eip_meter_tests::require_root();
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .get(1)
        .context("usage: eip-meter-store-bench OUT.json [--eips N]")?;
    let month_eips: u32 = match args.iter().position(|a| a == "--eips") {
        Some(i) => args.get(i + 1).context("--eips N")?.parse()?,
        None => 100_000,
    };
    let bin = PathBuf::from(std::env::var("EIP_METER_BIN").context(
        "EIP_METER_BIN must name the eip-meter binary (cargo xtask bench builds and sets it)",
    )?);
    let scratch = tempfile::Builder::new()
        .prefix("eip-meter-store-bench-")
        .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))?;
    let pg = Postgres::start(&bin)?;
    pg.add_login_role("router_a", "bench-a", "eip_meter_daemon")?;
    pg.add_login_role("billing", "bench-billing", "eip_meter_billing")?;

    let mut report = serde_json::Map::new();
    let mut table = Vec::new();

    // First, while this process is small: a child's peak RSS (wait4) includes what it
    // inherited before its exec.
    eprintln!("bench: compute over a dense month of 1,000 EIPs (8,640,000 rows)");
    let (dense_seconds, dense_rss) = dense_compute(&bin, scratch.path(), 1000)?;
    table.push(format!(
        "compute, dense month of 1,000 EIPs (8,640,000 rows, one host): {dense_seconds:.1} s, peak RSS {dense_rss:.0} MiB"
    ));
    report.insert(
        "compute_seconds_dense_month_1k_eips".into(),
        json!(dense_seconds),
    );
    report.insert(
        "compute_rss_mib_dense_month_1k_eips".into(),
        json!(dense_rss),
    );
    eprintln!("bench: a month of {month_eips} EIPs on two routers, bill vs compute");
    let month = month_bench(&pg, &bin, scratch.path(), month_eips)?;
    let tag = if month_eips == 100_000 {
        "100k".to_owned()
    } else {
        month_eips.to_string()
    };
    table.push(format!(
        "month, {month_eips} EIPs, 2 hosts, {} sample rows: bill {:.1} s, peak RSS {:.0} MiB ({} figures); compute on the exported CSV {:.1} s, peak RSS {:.0} MiB; {} EIPs' figures identical",
        month.rows, month.bill_seconds, month.bill_rss_mib, month.figures, month.compute_seconds, month.compute_rss_mib, month.checked
    ));
    for (key, value) in [
        (format!("month_sample_rows_{tag}_eips"), month.rows as f64),
        (format!("bill_seconds_month_{tag}_eips"), month.bill_seconds),
        (format!("bill_rss_mib_month_{tag}_eips"), month.bill_rss_mib),
        (
            format!("compute_seconds_month_{tag}_eips"),
            month.compute_seconds,
        ),
        (
            format!("compute_rss_mib_month_{tag}_eips"),
            month.compute_rss_mib,
        ),
    ] {
        report.insert(key, json!(value));
    }
    report.insert("load_seconds".into(), json!(month.load_seconds));

    eprintln!("bench: shipping rounds of 1,000,000 EIPs, 1% active");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ship = runtime.block_on(ship_bench(&pg, scratch.path(), 1_000_000))?;
    table.push(format!(
        "ship one round, 1,000,000 EIPs, 1% active: {:.3} s median ({:.3}-{:.3}) for {} rows (first round, every EIP new: {:.2} s, {} rows + presence)",
        ship.round_seconds, ship.round_min, ship.round_max, ship.rows_per_round, ship.first_seconds, ship.first_rows
    ));
    table.push(format!(
        "catch-up: {} rounds ({} h of backlog) shipped in {:.2} s = {:.0}x real time",
        ship.backlog_rounds,
        ship.backlog_rounds as f64 * INTERVAL as f64 / 3600.0,
        ship.backlog_seconds,
        ship.speedup
    ));
    for (key, value) in [
        ("ship_seconds_1m_eips_1pct", ship.round_seconds),
        ("ship_seconds_1m_eips_1pct_min", ship.round_min),
        ("ship_seconds_1m_eips_1pct_max", ship.round_max),
        (
            "ship_rows_per_round_1m_eips_1pct",
            ship.rows_per_round as f64,
        ),
        ("first_ship_seconds_1m_eips", ship.first_seconds),
        ("catchup_rounds", ship.backlog_rounds as f64),
        ("catchup_seconds", ship.backlog_seconds),
        ("catchup_speedup", ship.speedup),
    ] {
        report.insert(key.into(), json!(value));
    }

    eprintln!("bench: state directory growth at 100,000 EIPs");
    let per_round = state_growth(scratch.path(), 100_000)?;
    let per_day = per_round * (86_400 / INTERVAL) as f64;
    table.push(format!(
        "state directory, 100,000 EIPs: {:.2} MB per round = {:.0} MB per day of backlog",
        per_round / 1e6,
        per_day / 1e6
    ));
    report.insert("state_bytes_per_round_100k_eips".into(), json!(per_round));
    report.insert(
        "state_bytes_per_day_backlog_100k_eips".into(),
        json!(per_day),
    );

    println!(
        "billing store benchmark ({} CPUs, PostgreSQL 15 on a Unix socket, fsync off)",
        std::thread::available_parallelism()?.get()
    );
    for line in &table {
        println!("  {line}");
    }
    eip_meter_tests::write_bench_report(out, &report)
}

/// A deterministic 64-bit hash (splitmix64).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether EIP `e` carries traffic in interval `k` (1 in 100), and how many bytes.
fn traffic(e: u32, k: i64) -> Option<u64> {
    let h = mix((u64::from(e) << 20) ^ k as u64);
    h.is_multiple_of(100)
        .then(|| 1_000_000 + (h >> 8) % 900_000_000)
}

struct ShipResult {
    first_seconds: f64,
    first_rows: usize,
    round_seconds: f64,
    round_min: f64,
    round_max: f64,
    rows_per_round: usize,
    backlog_rounds: usize,
    backlog_seconds: f64,
    speedup: f64,
}

/// Ships everything after `after`; returns (rounds, rows, the new watermark).
async fn ship_all(
    db: &mut postgres::Db,
    me: &HostIdentity,
    store: &Store,
    mut after: i64,
) -> Result<(usize, usize, i64)> {
    let (mut rounds, mut rows) = (0, 0);
    while let Some(b) = batch::build(store, after, INTERVAL, BATCH_ROUNDS, BATCH_ROWS)? {
        let shipped = ship::ship(db, me, &b).await?;
        ensure!(shipped.conflicts.is_empty() && !shipped.already);
        rounds += b.rounds;
        rows += b.samples.len();
        after = b.last_seq;
        store.set_shipped(after, 0)?;
    }
    Ok((rounds, rows, after))
}

async fn ship_bench(pg: &Postgres, scratch: &Path, n: u32) -> Result<ShipResult> {
    let dir = scratch.join("ship");
    std::fs::create_dir_all(&dir)?;
    let calendar = Calendar::new("UTC", INTERVAL as u32)?;
    let store = Store::open(&dir.join("samples.db"))?;
    let me = HostIdentity {
        host: "router-a".into(),
        instance: store.instance()?,
        interval_seconds: INTERVAL as u32,
        timezone: "UTC".into(),
    };
    let mut sampler = Sampler::open(calendar, SeriesOptions::default(), "router-a".into(), store)?;
    let addrs: Vec<IpAddr> = (0..n).map(eip).collect();
    for a in &addrs {
        sampler.eip_added(*a, T0 - 10);
    }
    let mut readings: Vec<(IpAddr, TrafficCounters)> = addrs
        .iter()
        .map(|a| (*a, TrafficCounters::default()))
        .collect();
    let mut round = |sampler: &mut Sampler, k: i64| -> Result<()> {
        for (e, r) in readings.iter_mut().enumerate() {
            if let Some(b) = traffic(e as u32, k) {
                r.1.inbound.bytes += b;
                r.1.inbound.packets += b / 1200 + 1;
                r.1.outbound.bytes += b / 3;
                r.1.outbound.packets += b / 3600 + 1;
            }
        }
        sampler.round(T0 + (k + 1) * INTERVAL, &readings)?;
        Ok(())
    };

    let password = pg.password_file("router_a-bench", "bench-a")?;
    let config = BillingStoreConfig {
        url: pg.url("router_a"),
        password_file: Some(password),
        ca_file: None,
        local_retention_days: 35,
    };
    let mut db = postgres::connect(&config).await?;
    let mut after = ship::register(&mut db, &me).await?;

    // The first round: every EIP is new (a partial first sample and a presence row each).
    round(&mut sampler, 0)?;
    let started = Instant::now();
    let (_, first_rows, w) = ship_all(&mut db, &me, sampler.store(), after).await?;
    let first_seconds = started.elapsed().as_secs_f64();
    after = w;

    // Steady state: each round shipped as soon as it is committed.
    let mut times = Vec::new();
    let mut rows_per_round = 0;
    for k in 1..=7 {
        round(&mut sampler, k)?;
        let started = Instant::now();
        let (rounds, rows, w) = ship_all(&mut db, &me, sampler.store(), after).await?;
        times.push(started.elapsed().as_secs_f64());
        ensure!(rounds == 1);
        rows_per_round = rows;
        after = w;
    }
    times.sort_by(f64::total_cmp);

    // A backlog (the billing store was down): committed, then shipped oldest first.
    let backlog = 36;
    for k in 8..8 + backlog {
        round(&mut sampler, k as i64)?;
    }
    let started = Instant::now();
    let (rounds, _, _) = ship_all(&mut db, &me, sampler.store(), after).await?;
    let backlog_seconds = started.elapsed().as_secs_f64();
    ensure!(rounds == backlog);
    drop(sampler);
    std::fs::remove_dir_all(&dir)?;
    Ok(ShipResult {
        first_seconds,
        first_rows,
        round_seconds: times[times.len() / 2],
        round_min: times[0],
        round_max: times[times.len() - 1],
        rows_per_round,
        backlog_rounds: backlog,
        backlog_seconds,
        speedup: backlog as f64 * INTERVAL as f64 / backlog_seconds,
    })
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Bytes the state directory grows by per round at `n` EIPs (1% active), nothing shipped.
fn state_growth(scratch: &Path, n: u32) -> Result<f64> {
    let dir = scratch.join("growth");
    std::fs::create_dir_all(&dir)?;
    let calendar = Calendar::new("UTC", INTERVAL as u32)?;
    let mut sampler = Sampler::open(
        calendar,
        SeriesOptions::default(),
        "router-a".into(),
        Store::open(&dir.join("samples.db"))?,
    )?;
    let mut readings: Vec<(IpAddr, TrafficCounters)> = (0..n)
        .map(|i| (eip(i), TrafficCounters::default()))
        .collect();
    for (a, _) in &readings {
        sampler.eip_added(*a, T0 - 10);
    }
    let mut sizes = Vec::new();
    for k in 0..13i64 {
        for (e, r) in readings.iter_mut().enumerate() {
            if let Some(b) = traffic(e as u32, k) {
                r.1.inbound.bytes += b;
            }
        }
        sampler.round(T0 + (k + 1) * INTERVAL, &readings)?;
        sizes.push(dir_bytes(&dir)?);
    }
    drop(sampler);
    std::fs::remove_dir_all(&dir)?;
    // After the first round (checkpoints of every EIP): the growth of the next twelve.
    Ok((sizes[12] - sizes[0]) as f64 / 12.0)
}

struct MonthResult {
    rows: u64,
    load_seconds: f64,
    bill_seconds: f64,
    bill_rss_mib: f64,
    figures: i64,
    compute_seconds: f64,
    compute_rss_mib: f64,
    checked: usize,
}

/// Runs `cmd` to completion; its wall seconds and peak RSS (MiB), from `wait4`.
fn measured(cmd: &mut Command) -> Result<(f64, f64)> {
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the locals above.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    ensure!(pid == child.id() as i32, "wait4 failed");
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed ({status})"
    );
    Ok((seconds, usage.ru_maxrss as f64 / 1024.0))
}

/// `eip-meter compute` over a month of samples of `n` EIPs with a row for every interval (the
/// export of one router): seconds and peak RSS.
fn dense_compute(bin: &Path, scratch: &Path, n: u32) -> Result<(f64, f64)> {
    let csv = scratch.join("dense.csv");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&csv)?);
    writeln!(w, "eip,interval_start,bytes_in,bytes_out,host,state")?;
    for k in 0..MONTH_INTERVALS {
        let at = rfc3339(T0 + k * INTERVAL);
        for e in 0..n {
            let b = mix((u64::from(e) << 20) ^ k as u64) % 900_000_000;
            writeln!(w, "{},{at},{b},{},router-a,measured", eip(e), b / 3)?;
        }
    }
    w.flush()?;
    drop(w);
    let result = measured(
        Command::new(bin)
            .args([
                "compute",
                "--timezone",
                "UTC",
                "--interval",
                "300",
                "--samples",
            ])
            .arg(&csv)
            .env("TMPDIR", scratch)
            .stdout(Stdio::null()),
    )?;
    std::fs::remove_file(&csv)?;
    Ok(result)
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .expect("in range")
        .to_rfc3339()
}

fn month_bench(pg: &Postgres, bin: &Path, scratch: &Path, n: u32) -> Result<MonthResult> {
    let dir = scratch.join("month");
    std::fs::create_dir_all(&dir)?;
    let hosts = ["pair-a", "pair-b"];
    let file = |name: &str| -> Result<std::io::BufWriter<std::fs::File>> {
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(dir.join(name))?,
        ))
    };
    // Router b missed 12 intervals (an outage: missing); router a's uplink was not metered
    // for 6 (incomplete: its zeros are partial).
    let missed = |h: usize, k: i64| h == 1 && (1000..1012).contains(&k);
    let incomplete = |h: usize, k: i64| h == 0 && (2000..2006).contains(&k);

    let (mut pg_samples, mut csv_samples) = (file("samples.pg")?, file("samples.csv")?);
    let (mut pg_rounds, mut csv_rounds) = (file("rounds.pg")?, file("rounds.csv")?);
    let (mut pg_presence, mut csv_presence) = (file("presence.pg")?, file("presence.csv")?);
    let (mut pg_history, mut csv_history) = (file("history.pg")?, file("history.csv")?);
    writeln!(
        csv_samples,
        "eip,interval_start,bytes_in,bytes_out,host,state"
    )?;
    writeln!(csv_rounds, "host,interval_start,coverage")?;
    writeln!(csv_presence, "eip,host,from,to")?;
    writeln!(csv_history, "eip,effective_from,bandwidth_mbps")?;
    let started = Instant::now();
    let mut rows = 0u64;
    for k in 0..MONTH_INTERVALS {
        let t = T0 + k * INTERVAL;
        let at = rfc3339(t);
        for (h, host) in hosts.iter().enumerate() {
            if missed(h, k) {
                continue;
            }
            let cover = if incomplete(h, k) {
                "incomplete"
            } else {
                "complete"
            };
            writeln!(pg_rounds, "{host},{t},{INTERVAL},{cover}")?;
            writeln!(csv_rounds, "{host},{at},{cover}")?;
        }
        for e in 0..n {
            let Some(bytes) = traffic(e, k) else { continue };
            // Most flows of an EIP take one router, some both (ECMP).
            let both = bytes % 3 == 0;
            let first = (bytes % 2) as usize;
            let parts: Vec<(usize, u64)> = if both {
                vec![(0, bytes / 2), (1, bytes - bytes / 2)]
            } else {
                vec![(first, bytes)]
            };
            for (h, b) in parts {
                if missed(h, k) {
                    continue;
                }
                let state = if incomplete(h, k) {
                    "partial"
                } else {
                    "measured"
                };
                let (a, host) = (eip(e), hosts[h]);
                writeln!(
                    pg_samples,
                    "{a},{t},{host},{INTERVAL},{b},{},{state}",
                    b / 4
                )?;
                writeln!(csv_samples, "{a},{at},{b},{},{host},{state}", b / 4)?;
                rows += 1;
            }
        }
    }
    let month_start = rfc3339(T0);
    for e in 0..n {
        let a = eip(e);
        for host in hosts {
            writeln!(pg_presence, "{a},{host},{T0},")?;
            writeln!(csv_presence, "{a},{host},{month_start},")?;
            writeln!(pg_history, "{a},eip,{host},{T0},100,,active")?;
        }
        writeln!(csv_history, "{a},{month_start},100")?;
    }
    for mut w in [
        pg_samples,
        csv_samples,
        pg_rounds,
        csv_rounds,
        pg_presence,
        csv_presence,
        pg_history,
        csv_history,
    ] {
        w.flush()?;
    }
    eprintln!(
        "bench: generated {rows} sample rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Load what the two routers would have shipped.
    let started = Instant::now();
    let end = T0 + MONTH_INTERVALS * INTERVAL;
    pg.query(&format!(
        "INSERT INTO hosts (host, instance, db_role, interval_seconds, timezone) VALUES
           ('pair-a', 'bench-a', 'router_a', 300, 'UTC'), ('pair-b', 'bench-b', 'router_a', 300, 'UTC');
         INSERT INTO watermarks (host, seq, boundary) VALUES ('pair-a', 1, {end}), ('pair-b', 1, {end});
         SELECT eip_meter_ensure_partitions({T0}, {end});"
    ))?;
    for (table, name) in [
        ("samples", "samples.pg"),
        ("rounds", "rounds.pg"),
        ("presence", "presence.pg"),
        (
            "inventory_history (subject, kind, host, effective_from, bandwidth_mbps, grp, state)",
            "history.pg",
        ),
    ] {
        // psql reads the file (as the client) and streams it to the server.
        pg.query(&format!(
            "\\copy {table} FROM '{}' WITH (FORMAT csv)",
            dir.join(name).display()
        ))?;
    }
    pg.query("ANALYZE")?;
    let load_seconds = started.elapsed().as_secs_f64();
    eprintln!("bench: loaded into PostgreSQL in {load_seconds:.1} s");

    let (bill_seconds, bill_rss_mib) = measured(
        Command::new(bin)
            .args(["bill", "--store", &pg.url("billing"), "--month", "2026-11"])
            .env("EIP_METER_STORE_PASSWORD", "bench-billing")
            .stdout(Stdio::null()),
    )?;
    let figures: i64 = pg.value("SELECT count(*) FROM figures")?;
    eprintln!("bench: bill {bill_seconds:.1} s, {bill_rss_mib:.0} MiB, {figures} figures");

    let compute = |samples: &Path, presence: &Path, history: &Path, out: &Path| {
        let mut cmd = Command::new(bin);
        cmd.args([
            "compute",
            "--timezone",
            "UTC",
            "--interval",
            "300",
            "--samples",
        ])
        .arg(samples)
        .arg("--rounds")
        .arg(dir.join("rounds.csv"))
        .arg("--presence")
        .arg(presence)
        .arg("--bandwidth-history")
        .arg(history)
        .env("TMPDIR", &dir)
        .stdout(std::fs::File::create(out).expect("output file"));
        cmd
    };
    let (compute_seconds, compute_rss_mib) = measured(&mut compute(
        &dir.join("samples.csv"),
        &dir.join("presence.csv"),
        &dir.join("history.csv"),
        &dir.join("compute.json"),
    ))?;
    eprintln!("bench: compute {compute_seconds:.1} s, {compute_rss_mib:.0} MiB");

    // The same figures: compute again over a subset of EIPs (small enough to read back) and
    // compare with what bill stored for them.
    let subset: Vec<u32> = (0..n).step_by((n as usize / 50).max(1)).collect();
    let keep: std::collections::HashSet<String> =
        subset.iter().map(|e| eip(*e).to_string()).collect();
    for name in ["samples.csv", "presence.csv", "history.csv"] {
        let text = std::fs::read_to_string(dir.join(name))?;
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            if i == 0 || keep.contains(line.split(',').next().unwrap_or("")) {
                out.push_str(line);
                out.push('\n');
            }
        }
        std::fs::write(dir.join(format!("subset-{name}")), out)?;
    }
    let subset_out = dir.join("subset.json");
    let status = compute(
        &dir.join("subset-samples.csv"),
        &dir.join("subset-presence.csv"),
        &dir.join("subset-history.csv"),
        &subset_out,
    )
    .status()?;
    ensure!(status.success(), "compute over the subset failed");
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(&subset_out)?)?;
    let mut checked = 0;
    for e in &subset {
        let a = eip(*e).to_string();
        for period in ["2026-11", "2026-11-15"] {
            let stored: serde_json::Value = serde_json::from_str(&pg.query(&format!(
                "SELECT figures FROM figures WHERE kind = 'eip' AND subject = '{a}' AND period = '{period}' ORDER BY revision DESC LIMIT 1"
            ))?)?;
            let section = if period.len() == 7 { "months" } else { "days" };
            let expected = &reference["eips"][&a][section][period];
            if &stored != expected {
                bail!("{a} {period}: bill stored {stored}, compute says {expected}");
            }
        }
        checked += 1;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(MonthResult {
        rows,
        load_seconds,
        bill_seconds,
        bill_rss_mib,
        figures,
        compute_seconds,
        compute_rss_mib,
        checked,
    })
}
