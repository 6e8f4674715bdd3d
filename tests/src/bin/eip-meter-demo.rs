//! `cargo xtask demo`: the daemon on a namespace topology with 3 EIPs and real traffic.
//!
//! Usage: eip-meter-demo PATH-TO-EIP-METER [OUTPUT-DIR]
//!
//! OUTPUT-DIR (default `target/demo`) receives the chart of the first EIP (`chart.svg`, and
//! `chart.png` when Chromium is installed).

use std::{net::SocketAddr, path::PathBuf, process::Command};

use anyhow::{Context, Result};
use eip_meter_tests::{
    Daemon, UdpSink, mixed_sizes, require_root, send_udp, tcp_bulk,
    topology::{Topology, TopologyOptions, eip_v4, eip_v6},
};

fn main() -> Result<()> {
    require_root();
    let binary = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: eip-meter-demo PATH-TO-EIP-METER")?,
    );
    let out_dir = PathBuf::from(
        std::env::args()
            .nth(2)
            .unwrap_or_else(|| "target/demo".to_owned()),
    );
    std::fs::create_dir_all(&out_dir)?;
    let out_dir = out_dir.canonicalize()?;
    let eips = [eip_v4(10), eip_v4(11), eip_v6(10)];
    let idle_non_eip = eip_v4(99);

    println!("== Topology: internet <-> router (eip-meter on up0) <-> tenant owning the EIPs");
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: [&eips[..], &[idle_non_eip]].concat(),
        ipv6: true,
    })?;
    // 2-second sampling intervals so the demo shows billing samples within seconds (the
    // production default is 300 s).
    let config = topo.config_with(
        &eips,
        "",
        "interval_seconds = 2\ntimezone = \"Asia/Shanghai\"",
    );
    println!("\n== Config\n{config}");

    let validate = topo
        .router
        .command(&binary)?
        .args(["validate", "--config", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    if let Ok(mut child) = validate {
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(config.as_bytes())?;
        let out = child.wait_with_output()?;
        println!(
            "== eip-meter validate\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    println!("== Starting eip-meter in the router namespace");
    let daemon = Daemon::start(&binary, &topo.router, &config, &eips)?;

    println!("== Traffic");
    let mut expected = Vec::new();
    for (i, &eip) in eips.iter().enumerate() {
        let inet = Topology::internet_addr(eip, 0);
        let sink_in = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0))?;
        let sink_out = UdpSink::bind(&topo.internet, inet)?;
        let n = 200 * (i + 1);
        let inbound = send_udp(
            &topo.internet,
            inet.ip(),
            sink_in.addr,
            mixed_sizes(n, eip.is_ipv6()),
        )?;
        let outbound = send_udp(
            &topo.tenant,
            eip,
            sink_out.addr,
            mixed_sizes(n / 2, eip.is_ipv6()),
        )?;
        println!(
            "  {eip:<16} UDP: {n} datagrams in ({inbound} IP bytes), {} out ({outbound} IP bytes)",
            n / 2
        );
        expected.push((eip, inbound, outbound));
    }
    let bulk_eip = eips[0];
    tcp_bulk(
        &topo.tenant,
        bulk_eip,
        &topo.internet,
        Topology::internet_addr(bulk_eip, 0),
        20_000_000,
    )?;
    println!("  {bulk_eip:<16} TCP: 20,000,000 payload bytes out (GSO on), plus the ACKs in");
    let other = Topology::internet_addr(idle_non_eip, 0);
    let sink = UdpSink::bind(&topo.internet, other)?;
    send_udp(
        &topo.tenant,
        idle_non_eip,
        sink.addr,
        mixed_sizes(10, false),
    )?;
    println!("  {idle_non_eip:<16} UDP: 10 datagrams out from an address that is not an EIP");
    // A load that changes from interval to interval, so the chart has a shape and the day an
    // enhanced-95 peak (its 5th highest sample).
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(bulk_eip, 0))?;
    let inet = Topology::internet_addr(bulk_eip, 0).ip();
    let mut varied = 0;
    for step in [3usize, 6, 10, 7, 12, 4, 9, 2] {
        let started = std::time::Instant::now();
        varied += send_udp(&topo.internet, inet, sink.addr, vec![1400; 300 * step])?;
        std::thread::sleep(
            std::time::Duration::from_millis(2000).saturating_sub(started.elapsed()),
        );
    }
    println!(
        "  {bulk_eip:<16} UDP: {varied} IP bytes in, in 8 bursts of different sizes 2 s apart"
    );

    println!("\n== eip-meter counters");
    let out = Command::new(&binary)
        .args(["counters", "--config"])
        .arg(&daemon.config_path)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    println!("\n== Check against what the demo sent (UDP only; the TCP flow adds to {bulk_eip})");
    let snapshot = daemon.counters()?;
    for (eip, inbound, outbound) in expected {
        let c = snapshot.eip(eip);
        let tcp_note = if eip == bulk_eip {
            " (+ TCP, bursts)"
        } else {
            ""
        };
        let ok = if eip == bulk_eip {
            c.inbound_bytes >= inbound + varied && c.outbound_bytes > outbound + 20_000_000
        } else {
            c.inbound_bytes == inbound && c.outbound_bytes == outbound
        };
        println!(
            "  {eip:<16} in {:>10} vs sent {inbound:>10}{tcp_note}, out {:>10} vs sent {outbound:>10}{tcp_note}  {}",
            c.inbound_bytes,
            c.outbound_bytes,
            if ok { "OK" } else { "MISMATCH" }
        );
    }

    println!("\n== The admin API (unix socket): a control plane adds an EIP and caps it");
    let api_eip = "203.0.113.77";
    for args in [
        vec!["eip", "set", api_eip, "--bandwidth", "50"],
        vec!["eip", "set", api_eip, "--state", "arrears"],
        vec!["eip", "show", api_eip],
        vec!["history", "--eip", api_eip],
    ] {
        println!("$ eip-meter {}", args.join(" "));
        print!("{}", daemon.subcommand(&args)?);
    }

    println!(
        "\n== Waiting two sampling intervals, then: eip-meter samples (raw samples, first rows)"
    );
    std::thread::sleep(std::time::Duration::from_millis(4500));
    let csv = daemon.subcommand(&["samples"])?;
    for line in csv.lines().take(8) {
        println!("  {line}");
    }
    println!(
        "  ... {} samples in all",
        csv.lines().count().saturating_sub(1)
    );

    println!(
        "\n== eip-meter compute --interval 2 over those samples (the auditor's recomputation)"
    );
    let export = std::env::temp_dir().join(format!("{}-demo.csv", topo.router.name()));
    std::fs::write(&export, &csv)?;
    let out = Command::new(&binary)
        .args([
            "compute",
            "--interval",
            "2",
            "--timezone",
            "Asia/Shanghai",
            "--samples",
        ])
        .arg(&export)
        .output()?;
    let _ = std::fs::remove_file(&export);
    let figures: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("compute output")?;
    println!(
        "  {:<16} {:<10} {:>7} {:>12} {:>12} {:>14} {:>14}",
        "EIP", "day", "samples", "in bytes", "out bytes", "enh. peak Mb/s", "p95 bit/s"
    );
    for (eip, f) in figures["eips"].as_object().into_iter().flatten() {
        for (day, d) in f["days"].as_object().into_iter().flatten() {
            let n = |k: &str| d[k].as_u64().unwrap_or(0);
            println!(
                "  {eip:<16} {day:<10} {:>7} {:>12} {:>12} {:>14} {:>14}",
                n("samples"),
                n("inbound_bytes"),
                n("outbound_bytes"),
                n("enhanced_peak_mbps"),
                n("p95_bps")
            );
        }
    }

    println!("\n== /metrics (what Prometheus scrapes; an excerpt)");
    let scrape = daemon.scrape(&topo.router)?;
    let first = eips[0].to_string();
    for line in scrape.body.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("eip_meter_build_info")
                || l.starts_with("eip_meter_traffic_bytes_total")
                || l.starts_with("eip_meter_non_eip_bytes_total")
                || l.starts_with("eip_meter_eips{")
                || l.starts_with("eip_meter_rounds_total")
                || l.starts_with("eip_meter_last_round_duration_seconds")
                || l.starts_with("eip_meter_samples_total")
                || l.starts_with("eip_meter_uplink_attached")
                || l.contains(&format!("eip=\"{first}\"")))
    }) {
        println!("  {line}");
    }
    println!(
        "  ... {} lines, {} bytes in all",
        scrape.body.lines().count(),
        scrape.body.len()
    );
    if let Ok(mut check) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .context("stdin")?
            .write_all(scrape.body.as_bytes())?;
        let out = check.wait_with_output()?;
        println!(
            "  promtool check metrics: {}",
            if out.status.success() {
                "OK".to_owned()
            } else {
                String::from_utf8_lossy(&out.stderr).into_owned()
            }
        );
    }

    println!("\n== eip-meter report (today's and this month's figures from the store)");
    for line in daemon.subcommand(&["report"])?.lines() {
        println!("  {line}");
    }

    let today = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).context("offset")?)
        .format("%Y-%m-%d")
        .to_string();
    let svg = out_dir.join("chart.svg");
    println!("\n== eip-meter plot --eip {first} --day {today}");
    let out = daemon.subcommand(&[
        "plot",
        "--eip",
        &first,
        "--day",
        &today,
        "--fit",
        "-o",
        &svg.display().to_string(),
    ])?;
    print!("  {out}");
    let png = out_dir.join("chart.png");
    let rendered = eip_meter_tests::render_svg(&svg, &png, &out_dir);
    match rendered {
        Ok(()) => println!("  chart: {} (rendered: {})", svg.display(), png.display()),
        Err(e) => println!("  chart: {} (not rendered: {e})", svg.display()),
    }

    println!("\n== Daemon log (sampling rounds summarized)");
    print_log(&daemon);
    println!(
        "\n== Stopping (SIGTERM: programs detached, pins removed) and removing the namespaces"
    );
    drop(daemon);
    drop(topo);
    println!("done");
    Ok(())
}

/// The daemon's JSON log, one readable line per event.
fn print_log(daemon: &Daemon) {
    let mut rounds = 0;
    for line in daemon.log().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let fields = &v["fields"];
        let message = fields["message"].as_str().unwrap_or(line);
        if message == "sampled" {
            rounds += 1;
            if rounds > 3 {
                continue;
            }
        }
        let rest: Vec<String> = fields
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "message")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "  {} {message} {}",
            v["level"].as_str().unwrap_or(""),
            rest.join(" ")
        );
    }
}
