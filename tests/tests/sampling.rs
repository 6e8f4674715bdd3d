//! 5-minute sampling (here 1-second intervals) with real traffic: what the sample store holds
//! must equal what was sent, across a `kill -9` and restart under traffic.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use eip_meter_tests::{
    Daemon, UdpSink, require_root,
    topology::{Topology, TopologyOptions, eip_v4},
    udp_ip_len,
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

/// Parses `eip-meter samples` CSV into (interval_start, bytes_in, bytes_out) rows of one EIP.
fn rows_of(csv: &str, eip: IpAddr) -> Vec<(String, u64, u64)> {
    csv.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse::<IpAddr>().ok()? == eip).then(|| {
                (
                    f[1].to_owned(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )
            })
        })
        .collect()
}

#[test]
fn kill_9_and_restart_under_traffic_loses_no_byte_and_writes_no_sample_twice() {
    require_root();
    let eip = eip_v4(70);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })
    .unwrap();
    let config = topo.config_with(
        &[eip],
        "on_exit = \"keep\"",
        "interval_seconds = 1\ntimezone = \"UTC\"",
    );
    let mut daemon = Daemon::start(binary(), &topo.router, &config, &[eip]).unwrap();
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();

    // Steady traffic for ~7 s (at most 7,000 datagrams).
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, dst) = (stop.clone(), sink.addr);
        let src = Topology::internet_addr(eip, 0).ip();
        topo.internet.spawn(move || {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(src, 0))?;
            let deadline = Instant::now() + Duration::from_secs(7);
            let mut sent = 0u64;
            for i in 0..7000u64 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let size = 200 + (i % 1000) as usize;
                socket.send_to(&vec![1u8; size], dst)?;
                sent += udp_ip_len(&dst, size);
                thread::sleep(Duration::from_millis(1));
            }
            Ok(sent)
        })
    };

    thread::sleep(Duration::from_millis(2500));
    daemon.kill().unwrap(); // mid-flight, possibly mid-round
    thread::sleep(Duration::from_millis(1800)); // the kernel keeps counting into the pinned maps
    daemon.spawn(&topo.router).unwrap();
    daemon.wait_ready(Duration::from_secs(30)).unwrap();
    let sent = sender.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    // Let two more rounds cover the tail of the traffic, then stop cleanly.
    thread::sleep(Duration::from_millis(2600));
    let counted = daemon.counters().unwrap().eip(eip).inbound_bytes;
    assert!(daemon.stop().unwrap());
    assert_eq!(counted, sent, "kernel counters");

    let csv = daemon.subcommand(&["samples"]).unwrap();
    let rows = rows_of(&csv, eip);
    let total_in: u64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(total_in, sent, "sum of samples == bytes sent");
    let starts: BTreeSet<&String> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(starts.len(), rows.len(), "no interval written twice");
    // Contiguous: every second from the first sample to the last is there (the outage was
    // spread over the intervals it covered, not dropped or piled into one spike).
    let first = chrono::DateTime::parse_from_rfc3339(rows.first().unwrap().0.as_str()).unwrap();
    let last = chrono::DateTime::parse_from_rfc3339(rows.last().unwrap().0.as_str()).unwrap();
    assert_eq!(
        (last - first).num_seconds() as usize + 1,
        rows.len(),
        "no gap"
    );
    let log = daemon.log();
    assert!(log.contains("sampler state restored"));

    // The auditor's path: the exported samples recompute to the same totals.
    let v = eip_meter_tests::compute(binary(), &csv, "UTC", 1).unwrap();
    let months = v["eips"][eip.to_string()]["months"].as_object().unwrap();
    let month_in: u64 = months
        .values()
        .map(|m| m["inbound_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(month_in, sent);
}

#[test]
fn removed_eip_gets_its_final_samples() {
    require_root();
    let (keep, gone) = (eip_v4(71), eip_v4(72));
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![keep, gone],
        ipv6: false,
    })
    .unwrap();
    let extra = "interval_seconds = 1\ntimezone = \"UTC\"";
    let mut daemon = Daemon::start(
        binary(),
        &topo.router,
        &topo.config_with(&[keep, gone], "", extra),
        &[keep, gone],
    )
    .unwrap();
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(gone, 0)).unwrap();
    let inet = Topology::internet_addr(gone, 0).ip();
    let sent = eip_meter_tests::send_udp(
        &topo.internet,
        inet,
        sink.addr,
        eip_meter_tests::mixed_sizes(300, false),
    )
    .unwrap();
    // Removed in the middle of an interval: the bytes since the last round must not vanish.
    daemon
        .reload(&topo.config_with(&[keep], "", extra))
        .unwrap();
    daemon
        .wait_for_eips(&[keep], Duration::from_secs(5))
        .unwrap();
    thread::sleep(Duration::from_millis(1200));
    let csv = daemon.subcommand(&["samples"]).unwrap();
    let total: u64 = rows_of(&csv, gone).iter().map(|r| r.1).sum();
    assert_eq!(total, sent);
}
