//! Caps, shared bandwidths, live resizes and blocked EIPs, with real traffic through the
//! namespace topology. Expectations are independent of the meter: the receiving and sending
//! hosts' own IP counters, iperf3's goodput, and the kernel's HTB at the same rate.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use eip_meter_tests::{
    Daemon, IpStats, UdpSink, delivered_rate, mixed_sizes, require_root, rx_octets, send_udp,
    topology::{INTERNET_V4, Topology, TopologyOptions, eip_v4},
    traffic::{IperfServer, Load, clear_root_qdisc, htb, iperf, iperf_spawn, iperf_wait},
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

fn topo(addresses: &[IpAddr]) -> Topology {
    require_root();
    Topology::new(&TopologyOptions {
        tenant_addresses: addresses.to_vec(),
        ipv6: false,
    })
    .expect("topology")
}

/// A daemon config for `topo` with `[policing]` lines, `[[group]]` tables and one `[[eip]]`
/// table per entry (its extra lines after the address).
fn config(topo: &Topology, policing: &str, groups: &str, eips: &[(IpAddr, &str)]) -> String {
    let mut s = topo.config(&[], "");
    s.push_str(&format!("\n[policing]\n{policing}\n{groups}\n"));
    for (eip, extra) in eips {
        s.push_str(&format!("\n[[eip]]\naddress = \"{eip}\"\n{extra}\n"));
    }
    s
}

/// IPv4 bytes (IP header + payload) a namespace has sent so far.
fn tx_octets(ns: &eip_meter_tests::Netns) -> u64 {
    IpStats::read(ns).unwrap().get("IpExtOutOctets")
}

/// IPv4 TCP bytes a namespace received, per wire segment: GRO hands the stack one packet for
/// many segments, so each extra segment's 20 + 32 byte headers (timestamps on) are added back.
fn tcp_wire_octets(ns: &eip_meter_tests::Netns) -> u64 {
    let (receives, octets, segments) = IpStats::read(ns).unwrap().ipv4_in();
    octets + segments.saturating_sub(receives) * 52
}

fn udp(rate_bps: u64) -> Load {
    Load::Udp {
        rate_bps,
        payload: 1400,
    }
}

#[test]
fn udp_at_twice_the_cap_is_delivered_at_the_cap_and_drops_are_accounted() {
    let eip = eip_v4(10);
    let topo = topo(&[eip]);
    // Dual-active share: 100 Mbit/s purchased, 75 Mbit/s on this router.
    let cfg = config(&topo, "share = 0.75", "", &[(eip, "bandwidth_mbps = 100")]);
    let daemon = Daemon::start(binary(), &topo.router, &cfg, &[eip]).unwrap();
    let cap = 75e6;

    let server = IperfServer::start(&topo.tenant, SocketAddr::new(eip, 5201)).unwrap();
    let (rx0, tx0) = (rx_octets(&topo.tenant), tx_octets(&topo.internet));
    let client = iperf_spawn(
        &topo.internet,
        IpAddr::V4(INTERNET_V4),
        server.addr,
        udp(2 * cap as u64),
        12,
    )
    .unwrap();
    thread::sleep(Duration::from_secs(1));
    let rate = delivered_rate(&topo.tenant, Duration::from_secs(10));
    iperf_wait(client, 12).unwrap();
    thread::sleep(Duration::from_millis(300));
    let (rx1, tx1) = (rx_octets(&topo.tenant), tx_octets(&topo.internet));

    let c = daemon.counters().unwrap();
    let e = c.enforcement(eip);
    println!(
        "cap {cap} bit/s, delivered {rate:.0} bit/s ({:.2}% of cap); offered {} B, delivered {} B, dropped {} B",
        rate / cap * 100.0,
        tx1 - tx0,
        rx1 - rx0,
        e.inbound_drops.rate_limited_bytes
    );
    assert!(
        (rate / cap - 1.0).abs() <= 0.03,
        "delivered {rate:.0} bit/s, cap {cap}"
    );
    assert_eq!(e.inbound_cap_bps, Some(75_000_000));
    // Billing counts delivered traffic only: what the tenant received, to the byte...
    assert_eq!(c.eip(eip).inbound_bytes, rx1 - rx0);
    // ...and delivered + dropped is exactly what the Internet host sent.
    assert_eq!(
        c.eip(eip).inbound_bytes + e.inbound_drops.rate_limited_bytes,
        tx1 - tx0
    );
    assert_eq!(e.inbound_drops.blocked_bytes, 0);
}

#[test]
fn one_tcp_flow_gets_at_least_90_percent_of_htb_goodput_and_never_above_103_percent_of_cap() {
    let eip = eip_v4(10);
    let topo = topo(&[eip]);
    let metered = config(&topo, "share = 1.0", "", &[(eip, "")]);
    let mut daemon = Daemon::start(binary(), &topo.router, &metered, &[eip]).unwrap();
    let src = IpAddr::V4(INTERNET_V4);
    let mut port = 5300;
    let mut run = |topo: &Topology| {
        port += 1;
        let server = IperfServer::start(&topo.tenant, SocketAddr::new(eip, port)).unwrap();
        let rx0 = tcp_wire_octets(&topo.tenant);
        let r = iperf(
            &topo.internet,
            src,
            server.addr,
            Load::Tcp { streams: 1 },
            10,
        )
        .unwrap();
        let rx1 = tcp_wire_octets(&topo.tenant);
        (r, (rx1 - rx0) as f64 * 8.0 / r.seconds)
    };
    println!(
        "| cap Mbit/s | ours goodput | ours IP-layer avg | retransmits | HTB goodput | ours / HTB |"
    );
    for mbps in [10u64, 100, 1000] {
        let cap = mbps as f64 * 1e6;
        let capped = config(
            &topo,
            "share = 1.0",
            "",
            &[(eip, &format!("bandwidth_mbps = {mbps}"))],
        );
        daemon.reload_applied(&capped).unwrap();
        let (ours, ours_ip_rate) = run(&topo);

        daemon.reload_applied(&metered).unwrap();
        htb(&topo.router, "dn0", mbps * 1_000_000).unwrap();
        let (theirs, _) = run(&topo);
        clear_root_qdisc(&topo.router, "dn0").unwrap();

        let ratio = ours.goodput_bps() / theirs.goodput_bps();
        println!(
            "| {mbps} | {:.1} ({:.1}%) | {:.1}% | {} | {:.1} ({:.1}%) | {ratio:.3} |",
            ours.goodput_bps() / 1e6,
            ours.goodput_bps() / cap * 100.0,
            ours_ip_rate / cap * 100.0,
            ours.retransmits,
            theirs.goodput_bps() / 1e6,
            theirs.goodput_bps() / cap * 100.0,
        );
        assert!(
            ours_ip_rate <= 1.03 * cap,
            "{mbps} Mbit/s: 10 s average {ours_ip_rate:.0} bit/s is above 103% of the cap"
        );
        assert!(
            ratio >= 0.90,
            "{mbps} Mbit/s: goodput {:.0} is below 90% of HTB's {:.0}",
            ours.goodput_bps(),
            theirs.goodput_bps()
        );
    }
}

#[test]
fn group_members_share_one_cap() {
    let (a, b) = (eip_v4(10), eip_v4(11));
    let topo = topo(&[a, b]);
    let cfg = config(
        &topo,
        "share = 1.0",
        "[[group]]\nname = \"shared-1\"\nbandwidth_mbps = 100\n",
        &[(a, "group = \"shared-1\""), (b, "group = \"shared-1\"")],
    );
    let daemon = Daemon::start(binary(), &topo.router, &cfg, &[a, b]).unwrap();
    let sa = IperfServer::start(&topo.tenant, SocketAddr::new(a, 5201)).unwrap();
    let sb = IperfServer::start(&topo.tenant, SocketAddr::new(b, 5202)).unwrap();
    let src = IpAddr::V4(INTERNET_V4);
    let ca = iperf_spawn(&topo.internet, src, sa.addr, udp(100_000_000), 8).unwrap();
    let cb = iperf_spawn(&topo.internet, src, sb.addr, udp(100_000_000), 8).unwrap();
    thread::sleep(Duration::from_secs(1));
    let before = daemon.counters().unwrap();
    let rate = delivered_rate(&topo.tenant, Duration::from_secs(6));
    let after = daemon.counters().unwrap();
    iperf_wait(ca, 8).unwrap();
    iperf_wait(cb, 8).unwrap();
    let share_a = (after.eip(a).inbound_bytes - before.eip(a).inbound_bytes) as f64;
    let share_b = (after.eip(b).inbound_bytes - before.eip(b).inbound_bytes) as f64;
    println!(
        "group of 2 at 100 Mbit/s, each offered 100: delivered {:.1} Mbit/s, split {:.0}% / {:.0}%",
        rate / 1e6,
        share_a / (share_a + share_b) * 100.0,
        share_b / (share_a + share_b) * 100.0
    );
    assert!(
        (rate / 100e6 - 1.0).abs() <= 0.03,
        "group delivered {rate:.0}"
    );
    // One bucket, first come first served: the split follows the offered bursts, not fairness,
    // but both members draw on it.
    assert!(share_a > 0.02 * (share_a + share_b) && share_b > 0.02 * (share_a + share_b));
}

#[test]
fn a_resize_under_traffic_takes_effect_within_a_second_without_losing_a_counted_byte() {
    let eip = eip_v4(10);
    let topo = topo(&[eip]);
    let at = |mbps: u64| {
        config(
            &topo,
            "share = 1.0",
            "",
            &[(eip, &format!("bandwidth_mbps = {mbps}"))],
        )
    };
    let mut daemon = Daemon::start(binary(), &topo.router, &at(100), &[eip]).unwrap();
    let server = IperfServer::start(&topo.tenant, SocketAddr::new(eip, 5201)).unwrap();
    let rx0 = rx_octets(&topo.tenant);
    let client = iperf_spawn(
        &topo.internet,
        IpAddr::V4(INTERNET_V4),
        server.addr,
        udp(200_000_000),
        11,
    )
    .unwrap();
    thread::sleep(Duration::from_millis(700));
    let first = delivered_rate(&topo.tenant, Duration::from_secs(2));
    assert!(
        (first / 100e6 - 1.0).abs() <= 0.03,
        "before resize: {first:.0}"
    );

    // First by editing the file and SIGHUP, then with the `eip-meter eip set` command.
    for mbps in [20u64, 60] {
        let cap = mbps as f64 * 1e6;
        let signalled = Instant::now();
        let applied = if mbps == 20 {
            daemon.reload_applied(&at(mbps)).unwrap()
        } else {
            let out = daemon
                .subcommand(&["eip", "set", &eip.to_string(), "--bandwidth", "60"])
                .unwrap();
            assert!(out.contains("applied by the daemon"), "{out}");
            signalled.elapsed()
        };
        // The first 100 ms window whose rate is within 5% of the new cap.
        let mut effective = None;
        while signalled.elapsed() < Duration::from_millis(1500) {
            let r = delivered_rate(&topo.tenant, Duration::from_millis(100));
            if (r / cap - 1.0).abs() <= 0.05 {
                effective = Some(signalled.elapsed());
                break;
            }
        }
        let steady = delivered_rate(&topo.tenant, Duration::from_secs(2));
        println!(
            "resize to {mbps} Mbit/s: applied {} ms after SIGHUP, rate at the new cap within {:?}, then {:.1} Mbit/s",
            applied.as_millis(),
            effective,
            steady / 1e6
        );
        let effective = effective.expect("rate never reached the new cap");
        assert!(effective <= Duration::from_secs(1), "took {effective:?}");
        assert!(
            (steady / cap - 1.0).abs() <= 0.03,
            "after resize: {steady:.0}"
        );
    }
    iperf_wait(client, 11).unwrap();
    thread::sleep(Duration::from_millis(300));
    let rx1 = rx_octets(&topo.tenant);
    // Nothing delivered went uncounted across the reloads (no reattach, no map reset).
    assert_eq!(daemon.counters().unwrap().eip(eip).inbound_bytes, rx1 - rx0);
    // The uplink was attached once, at start: reloads never reattach.
    assert_eq!(daemon.log().matches(r#""message":"attached""#).count(), 1);
    assert!(!daemon.log().contains("uplink not metered"));
}

#[test]
fn a_blocked_eip_passes_nothing_both_ways_and_unblocking_restores_it_at_once() {
    let (blocked, other) = (eip_v4(10), eip_v4(11));
    let topo = topo(&[blocked, other]);
    let with_state = |state: &str| {
        config(
            &topo,
            "",
            "",
            &[
                (
                    blocked,
                    &format!("bandwidth_mbps = 100\nstate = \"{state}\""),
                ),
                (other, ""),
            ],
        )
    };
    let daemon = Daemon::start(
        binary(),
        &topo.router,
        &with_state("arrears"),
        &[blocked, other],
    )
    .unwrap();
    let inet = Topology::internet_addr(blocked, 0);
    let sink_in = UdpSink::bind(&topo.tenant, SocketAddr::new(blocked, 0)).unwrap();
    let sink_out = UdpSink::bind(&topo.internet, inet).unwrap();
    let sizes = mixed_sizes(500, false);

    let (rx_t, rx_i) = (rx_octets(&topo.tenant), rx_octets(&topo.internet));
    let sent_in = send_udp(&topo.internet, inet.ip(), sink_in.addr, sizes.clone()).unwrap();
    let sent_out = send_udp(&topo.tenant, blocked, sink_out.addr, sizes.clone()).unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        rx_octets(&topo.tenant),
        rx_t,
        "a blocked EIP received traffic"
    );
    assert_eq!(
        rx_octets(&topo.internet),
        rx_i,
        "a blocked EIP sent traffic"
    );
    let c = daemon.counters().unwrap();
    let e = c.enforcement(blocked);
    assert_eq!(e.state, "arrears");
    assert_eq!(
        c.eip(blocked).inbound_bytes + c.eip(blocked).outbound_bytes,
        0
    );
    assert_eq!(
        (
            e.inbound_drops.blocked_bytes,
            e.inbound_drops.blocked_packets
        ),
        (sent_in, 500)
    );
    assert_eq!(
        (
            e.outbound_drops.blocked_bytes,
            e.outbound_drops.blocked_packets
        ),
        (sent_out, 500)
    );
    assert_eq!(e.inbound_drops.rate_limited_bytes, 0);

    // The other EIP is untouched by its neighbour's block.
    let sink_other = UdpSink::bind(&topo.tenant, SocketAddr::new(other, 0)).unwrap();
    let sent_other = send_udp(&topo.internet, inet.ip(), sink_other.addr, sizes.clone()).unwrap();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        daemon.counters().unwrap().eip(other).inbound_bytes,
        sent_other
    );

    let started = Instant::now();
    let out = daemon
        .subcommand(&["eip", "set", &blocked.to_string(), "--state", "active"])
        .unwrap();
    assert!(out.contains("applied by the daemon"), "{out}");
    let applied = started.elapsed();
    let rx_t = rx_octets(&topo.tenant);
    let sent_in = send_udp(&topo.internet, inet.ip(), sink_in.addr, sizes).unwrap();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        rx_octets(&topo.tenant) - rx_t,
        sent_in,
        "unblocked EIP lost traffic"
    );
    let c = daemon.counters().unwrap();
    assert_eq!(c.enforcement(blocked).state, "active");
    assert_eq!(c.eip(blocked).inbound_bytes, sent_in);
    println!(
        "unblocked by `eip-meter eip set --state active` in {} ms",
        applied.as_millis()
    );
}

#[test]
fn one_eips_overload_does_not_slow_the_others() {
    let (flooded, busy) = (eip_v4(10), eip_v4(11));
    let topo = topo(&[flooded, busy]);
    let cfg = config(
        &topo,
        "share = 1.0",
        "",
        &[
            (flooded, "bandwidth_mbps = 10"),
            (busy, "bandwidth_mbps = 100"),
        ],
    );
    let daemon = Daemon::start(binary(), &topo.router, &cfg, &[flooded, busy]).unwrap();
    let src = IpAddr::V4(INTERNET_V4);
    let tcp = |port| {
        let server = IperfServer::start(&topo.tenant, SocketAddr::new(busy, port)).unwrap();
        iperf(
            &topo.internet,
            src,
            server.addr,
            Load::Tcp { streams: 1 },
            8,
        )
        .unwrap()
    };
    let alone = tcp(5301);
    let flood_server = IperfServer::start(&topo.tenant, SocketAddr::new(flooded, 5201)).unwrap();
    let flood = iperf_spawn(&topo.internet, src, flood_server.addr, udp(400_000_000), 10).unwrap();
    thread::sleep(Duration::from_millis(500));
    let beside = tcp(5302);
    iperf_wait(flood, 10).unwrap();
    let dropped = daemon
        .counters()
        .unwrap()
        .enforcement(flooded)
        .inbound_drops;
    println!(
        "100 Mbit/s EIP alone {:.1} Mbit/s, beside a 10 Mbit/s EIP offered 400: {:.1} Mbit/s ({} B dropped from the flooded one)",
        alone.goodput_bps() / 1e6,
        beside.goodput_bps() / 1e6,
        dropped.rate_limited_bytes
    );
    assert!(
        dropped.rate_limited_bytes > 0,
        "the flood was never policed"
    );
    assert!(
        beside.goodput_bps() >= 0.9 * alone.goodput_bps(),
        "neighbour's flood cut goodput from {:.0} to {:.0}",
        alone.goodput_bps(),
        beside.goodput_bps()
    );
}

#[test]
fn dual_active_routers_give_150_percent_to_many_flows_and_75_to_one() {
    use eip_meter_tests::topology::{DUAL_INTERNET_V4, DualTopology};
    require_root();
    let eip = eip_v4(10);
    let topo = DualTopology::new(&[eip]).unwrap();
    let rest =
        format!("[policing]\nshare = 0.75\n\n[[eip]]\naddress = \"{eip}\"\nbandwidth_mbps = 100\n");
    let daemons: Vec<Daemon> = (0..2)
        .map(|n| Daemon::start(binary(), &topo.routers[n], &topo.config(n, &rest), &[eip]).unwrap())
        .collect();
    let ping = topo
        .internet
        .command("ping")
        .unwrap()
        .args([
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            &DUAL_INTERNET_V4.to_string(),
            &eip.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "no path: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let bandwidth = 100e6;
    let src = IpAddr::V4(DUAL_INTERNET_V4);
    let mut port = 5400;
    let mut run = |streams: u32| {
        port += 1;
        let server = IperfServer::start(&topo.tenant, SocketAddr::new(eip, port)).unwrap();
        let before: Vec<u64> = daemons
            .iter()
            .map(|d| d.counters().unwrap().eip(eip).inbound_bytes)
            .collect();
        let r = iperf(&topo.internet, src, server.addr, Load::Tcp { streams }, 10).unwrap();
        let per_router: Vec<f64> = daemons
            .iter()
            .zip(&before)
            .map(|(d, b)| {
                (d.counters().unwrap().eip(eip).inbound_bytes - b) as f64 * 8.0 / r.seconds
            })
            .collect();
        (r, per_router)
    };

    let (many, per_router) = run(16);
    let total: f64 = per_router.iter().sum();
    println!(
        "16 flows: goodput {:.1} Mbit/s, IP-layer {:.1} Mbit/s = {:.1}% of the bandwidth (router a {:.1}, router b {:.1})",
        many.goodput_bps() / 1e6,
        total / 1e6,
        total / bandwidth * 100.0,
        per_router[0] / 1e6,
        per_router[1] / 1e6
    );
    assert!(
        (1.35..=1.5 * 1.03).contains(&(total / bandwidth)),
        "many flows: {total:.0} bit/s is not about 150% of {bandwidth}"
    );
    for r in &per_router {
        assert!(
            *r <= 0.75 * 1.03 * bandwidth,
            "one router passed {r:.0} bit/s"
        );
    }

    let (one, per_router) = run(1);
    let total: f64 = per_router.iter().sum();
    println!(
        "1 flow: goodput {:.1} Mbit/s, IP-layer {:.1} Mbit/s = {:.1}% of the bandwidth",
        one.goodput_bps() / 1e6,
        total / 1e6,
        total / bandwidth * 100.0
    );
    assert!(
        (0.675..=0.75 * 1.03).contains(&(total / bandwidth)),
        "one flow: {total:.0} bit/s is not about 75% of {bandwidth}"
    );
}

#[test]
fn ecn_capable_flows_are_marked_ce_near_the_cap_and_the_marks_are_counted() {
    let eip = eip_v4(10);
    let topo = topo(&[eip]);
    for ns in [&topo.internet, &topo.tenant] {
        ns.sysctl("net.ipv4.tcp_ecn", "1").unwrap();
    }
    let cfg = config(&topo, "share = 1.0", "", &[(eip, "bandwidth_mbps = 20")]);
    let daemon = Daemon::start(binary(), &topo.router, &cfg, &[eip]).unwrap();
    let server = IperfServer::start(&topo.tenant, SocketAddr::new(eip, 5201)).unwrap();
    let ce0 = IpStats::read(&topo.tenant).unwrap().get("IpExtInCEPkts");
    let r = iperf(
        &topo.internet,
        IpAddr::V4(INTERNET_V4),
        server.addr,
        Load::Tcp { streams: 1 },
        5,
    )
    .unwrap();
    // The receiver's own count of CE segments is the independent witness.
    let ce = IpStats::read(&topo.tenant).unwrap().get("IpExtInCEPkts") - ce0;
    let marks = daemon.counters().unwrap().enforcement(eip).inbound_drops;
    println!(
        "ECN flow at a 20 Mbit/s cap: goodput {:.1} Mbit/s, {} retransmits, {} segments marked CE (receiver saw {ce})",
        r.goodput_bps() / 1e6,
        r.retransmits,
        marks.ecn_marked_packets
    );
    assert!(marks.ecn_marked_packets > 0, "no packet was marked");
    assert_eq!(
        marks.ecn_marked_packets, ce,
        "marks counted != CE segments received"
    );
}
