//! 5-minute sampling (here 1-second intervals) with real traffic: what the sample store holds
//! must equal what was sent, across a `kill -9` and restart under traffic, and while the wall
//! clock steps back and forward.

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
    Daemon, UdpSink,
    clock::FakeClock,
    parse_samples, require_root,
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
    let sender = steady_udp(&topo, eip, sink.addr, stop.clone(), 7);

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

/// Sends datagrams from the Internet host to `dst` every millisecond until `stop` or
/// `seconds` pass; returns the IP bytes sent.
fn steady_udp(
    topo: &Topology,
    eip: IpAddr,
    dst: SocketAddr,
    stop: Arc<AtomicBool>,
    seconds: u64,
) -> eip_meter_tests::NsThread<u64> {
    let src = Topology::internet_addr(eip, 0).ip();
    topo.internet.spawn(move || {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(src, 0))?;
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut sent = 0u64;
        for i in 0..seconds * 1000 {
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
}

#[test]
fn a_wall_clock_stepped_back_and_forward_loses_no_byte_and_writes_no_interval_twice() {
    require_root();
    let eip = eip_v4(73);
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
    let mut clock = FakeClock::new().unwrap();
    let env = clock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = Daemon::start_with_env(binary(), &topo.router, &config, &[eip], &env).unwrap();
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = steady_udp(&topo, eip, sink.addr, stop.clone(), 40);
    const BEHIND: &str = "the wall clock is behind the last committed round (stepped back?): no round until it passes it; the kernel keeps counting and the first round after covers the wait as partial samples";
    const STEPPED: &str = "the wall clock stepped since the last round: this round's samples are marked partial, spread over the real time elapsed only (intervals the clock skipped stay missing)";

    // Back 6 s: no round until the clock passes the last one again, logged once.
    thread::sleep(Duration::from_millis(3000));
    clock.step(-6).unwrap();
    thread::sleep(Duration::from_millis(3000));
    assert_eq!(daemon.log_events(BEHIND).len(), 1, "{}", daemon.log());
    thread::sleep(Duration::from_millis(5500));
    // Forward 40 s: the skipped intervals stay missing.
    clock.step(40).unwrap();
    thread::sleep(Duration::from_millis(3000));
    // Killed, and started again with the clock 5 s behind its last round.
    daemon.kill().unwrap();
    clock.step(-5).unwrap();
    daemon.spawn(&topo.router).unwrap();
    daemon.wait_ready(Duration::from_secs(30)).unwrap();
    thread::sleep(Duration::from_millis(5000));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    thread::sleep(Duration::from_millis(2600));
    let counted = daemon.counters().unwrap().eip(eip).inbound_bytes;
    assert!(daemon.stop().unwrap(), "{}", daemon.log());
    assert_eq!(counted, sent, "kernel counters");

    let rows: Vec<_> = parse_samples(&daemon.subcommand(&["samples"]).unwrap())
        .unwrap()
        .into_iter()
        .filter(|r| r.eip == eip)
        .collect();
    let total: u64 = rows.iter().map(|r| r.bytes_in).sum();
    assert_eq!(total, sent, "sum of samples == bytes sent");
    let starts: BTreeSet<i64> = rows.iter().map(|r| r.start).collect();
    assert_eq!(starts.len(), rows.len(), "no interval written twice");
    // The only hole is the 40 s the clock skipped: the reading after it went to the real
    // second(s) elapsed, not spread over 40 intervals.
    let holes: Vec<(i64, i64)> = starts
        .iter()
        .zip(starts.iter().skip(1))
        .filter(|(a, b)| **b - **a > 1)
        .map(|(a, b)| (*a, *b - *a - 1))
        .collect();
    assert_eq!(
        holes.len(),
        1,
        "holes (start, missing intervals): {holes:?}"
    );
    assert!((38..=41).contains(&holes[0].1), "{holes:?}");
    let after_hole = holes[0].0 + holes[0].1 + 1;
    let stepped = daemon.log_events(STEPPED);
    let forward = stepped
        .iter()
        .find(|e| e["fields"]["stepped_seconds"].as_i64().unwrap_or(0) > 30)
        .unwrap_or_else(|| panic!("no forward step logged:\n{}", daemon.log()));
    assert!(forward["fields"]["spread_intervals"].as_u64().unwrap() <= 2);
    let first_after = rows.iter().find(|r| r.start == after_hole).unwrap();
    assert_eq!(first_after.state, "partial");
    // The step back: the first round after the wait covered ~7 s of real time: partial.
    assert!(
        stepped
            .iter()
            .any(|e| e["fields"]["stepped_seconds"].as_i64().unwrap_or(0) <= -5),
        "no backward step logged:\n{}",
        daemon.log()
    );
    // The restarted daemon waited for its clock too.
    assert_eq!(daemon.log_events(BEHIND).len(), 2, "{}", daemon.log());
}
