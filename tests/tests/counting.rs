//! Real traffic through the namespace topology, counted by the eBPF data plane and compared
//! with an independent expectation: the bytes the test itself sent, or the receiving host's own
//! IP counters.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use eip_meter_tests::{
    Daemon, IpStats, UdpSink, mixed_sizes, require_root, send_udp, tcp_bulk,
    topology::{self, Topology, TopologyOptions, eip_v4, eip_v6},
    udp_ip_len,
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

fn topo(addresses: &[IpAddr], ipv6: bool) -> Topology {
    require_root();
    Topology::new(&TopologyOptions {
        tenant_addresses: addresses.to_vec(),
        ipv6,
    })
    .expect("topology")
}

/// Sends UDP both ways between `eip` and the Internet host; returns (inbound, outbound) IP bytes
/// and packet counts.
fn udp_both_ways(topo: &Topology, eip: IpAddr, count: usize) -> ((u64, u64), (u64, u64)) {
    let inet = Topology::internet_addr(eip, 0);
    let sink_in = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    let sink_out = UdpSink::bind(&topo.internet, inet).unwrap();
    let sizes = mixed_sizes(count, eip.is_ipv6());
    let inbound = send_udp(&topo.internet, inet.ip(), sink_in.addr, sizes.clone()).unwrap();
    let outbound = send_udp(&topo.tenant, eip, sink_out.addr, sizes).unwrap();
    ((inbound, count as u64), (outbound, count as u64))
}

#[test]
fn udp_datagrams_are_counted_exactly_both_ways() {
    let eips = [eip_v4(10), eip_v4(11)];
    let topo = topo(&eips, false);
    let daemon = Daemon::start(binary(), &topo.router, &topo.config(&eips, ""), &eips).unwrap();

    let ((in_bytes, in_pkts), (out_bytes, out_pkts)) = udp_both_ways(&topo, eips[0], 1000);
    // Sanity of the expectation itself: 1000 datagrams of the mixed sizes.
    assert_eq!(
        in_bytes,
        mixed_sizes(1000, false)
            .iter()
            .map(|&s| udp_ip_len(&Topology::internet_addr(eips[0], 1), s))
            .sum::<u64>()
    );

    let c = daemon.counters().unwrap();
    let got = c.eip(eips[0]);
    assert_eq!(
        (got.inbound_bytes, got.inbound_packets),
        (in_bytes, in_pkts),
        "inbound"
    );
    assert_eq!(
        (got.outbound_bytes, got.outbound_packets),
        (out_bytes, out_pkts),
        "outbound"
    );
    // The other EIP saw nothing, and nothing leaked to the non-EIP counters.
    assert_eq!(c.eip(eips[1]), Default::default());
    assert_eq!(c.non_eip, Default::default());
}

#[test]
fn ipv6_eips_are_counted_exactly_and_non_eip_traffic_is_kept_apart() {
    let eips = [eip_v6(10), eip_v4(12)];
    let topo = topo(&eips, true);
    let daemon = Daemon::start(binary(), &topo.router, &topo.config(&eips, ""), &eips).unwrap();

    let ((in_bytes, in_pkts), (out_bytes, out_pkts)) = udp_both_ways(&topo, eips[0], 900);
    // Traffic from the tenant's own link address (not an EIP), both families.
    let non_eip_v6 = IpAddr::V6(topology::TENANT_LINK_V6);
    let non_eip_v4 = IpAddr::V4(topology::TENANT_LINK_V4);
    let sink6 = UdpSink::bind(&topo.internet, Topology::internet_addr(non_eip_v6, 0)).unwrap();
    let sink4 = UdpSink::bind(&topo.internet, Topology::internet_addr(non_eip_v4, 0)).unwrap();
    let other6 = send_udp(&topo.tenant, non_eip_v6, sink6.addr, mixed_sizes(50, true)).unwrap();
    let other4 = send_udp(&topo.tenant, non_eip_v4, sink4.addr, mixed_sizes(50, false)).unwrap();

    let c = daemon.counters().unwrap();
    let got = c.eip(eips[0]);
    assert_eq!(
        (got.inbound_bytes, got.inbound_packets),
        (in_bytes, in_pkts),
        "inbound v6"
    );
    assert_eq!(
        (got.outbound_bytes, got.outbound_packets),
        (out_bytes, out_pkts),
        "outbound v6"
    );
    assert_eq!(c.eip(eips[1]), Default::default(), "idle IPv4 EIP");
    // Non-EIP outbound holds our 100 datagrams plus whatever neighbour discovery the
    // IPv6 link needed; none of it reached an EIP.
    assert!(
        c.non_eip.outbound_bytes >= other6 + other4 && c.non_eip.outbound_packets >= 100,
        "non-EIP outbound {:?} < sent {}",
        c.non_eip,
        other6 + other4
    );
}

#[test]
fn non_eip_traffic_is_attributed_to_no_eip_exactly() {
    let eip = eip_v4(20);
    let not_eip = eip_v4(21); // owned by the tenant, but not in the inventory
    let topo = topo(&[eip, not_eip], false);
    let daemon = Daemon::start(binary(), &topo.router, &topo.config(&[eip], ""), &[eip]).unwrap();

    let ((in_bytes, _), (out_bytes, _)) = udp_both_ways(&topo, not_eip, 300);
    let c = daemon.counters().unwrap();
    assert_eq!(c.eip(eip), Default::default());
    assert_eq!(c.non_eip.inbound_bytes, in_bytes);
    assert_eq!(c.non_eip.outbound_bytes, out_bytes);
    assert_eq!(
        (c.non_eip.inbound_packets, c.non_eip.outbound_packets),
        (300, 300)
    );
}

/// Reference for GSO traffic: the receiving stack's IP counters (see `IpStats`). Each extra
/// segment of a super-packet carries another IP + TCP header: 20 + 32 (timestamps) for IPv4,
/// 40 + 32 for IPv6.
fn reference_bytes(before: &IpStats, after: &IpStats, ipv6: bool) -> (u64, u64, u64) {
    let (pick, header) = if ipv6 {
        (IpStats::ipv6_in as fn(&IpStats) -> (u64, u64, u64), 72)
    } else {
        (IpStats::ipv4_in as fn(&IpStats) -> (u64, u64, u64), 52)
    };
    let (r0, o0, s0) = pick(before);
    let (r1, o1, s1) = pick(after);
    let (receives, octets, segments) = (r1 - r0, o1 - o0, s1 - s0);
    (octets + (segments - receives) * header, segments, receives)
}

fn assert_within(counted: u64, reference: u64, what: &str) {
    let diff = counted.abs_diff(reference) as f64 / reference as f64;
    eprintln!("{what}: counted {counted}, reference {reference}, relative difference {diff:.2e}");
    assert!(
        diff <= 1e-4,
        "{what}: counted {counted} vs reference {reference} ({diff:.2e} > 0.01%)"
    );
}

fn tcp_bulk_case(eip: IpAddr, ipv6: bool) {
    const BYTES: u64 = 100 * 1000 * 1000;
    let topo = topo(&[eip], ipv6);
    let daemon = Daemon::start(binary(), &topo.router, &topo.config(&[eip], ""), &[eip]).unwrap();
    let inet = Topology::internet_addr(eip, 0);

    // Outbound bulk: the EIP sends, the Internet host receives (and ACKs inbound).
    let (i0, t0) = (
        IpStats::read(&topo.internet).unwrap(),
        IpStats::read(&topo.tenant).unwrap(),
    );
    let c0 = daemon.counters().unwrap().eip(eip);
    tcp_bulk(&topo.tenant, eip, &topo.internet, inet, BYTES).unwrap();
    let (i1, t1) = (
        IpStats::read(&topo.internet).unwrap(),
        IpStats::read(&topo.tenant).unwrap(),
    );
    let c1 = daemon.counters().unwrap().eip(eip);
    let (out_ref, out_segs, out_receives) = reference_bytes(&i0, &i1, ipv6);
    assert!(
        out_segs > 4 * out_receives,
        "no GSO seen: {out_segs} segments in {out_receives} skbs"
    );
    assert_within(
        c1.outbound_bytes - c0.outbound_bytes,
        out_ref,
        "outbound bulk",
    );
    assert_eq!(
        c1.outbound_packets - c0.outbound_packets,
        out_segs,
        "outbound segments"
    );
    let (ack_ref, ack_segs, _) = reference_bytes(&t0, &t1, ipv6);
    assert_within(c1.inbound_bytes - c0.inbound_bytes, ack_ref, "inbound ACKs");
    assert_eq!(
        c1.inbound_packets - c0.inbound_packets,
        ack_segs,
        "inbound ACK packets"
    );

    // Inbound bulk: the Internet host sends to the EIP.
    let t1 = IpStats::read(&topo.tenant).unwrap();
    tcp_bulk(
        &topo.internet,
        inet.ip(),
        &topo.tenant,
        SocketAddr::new(eip, 0),
        BYTES,
    )
    .unwrap();
    let t2 = IpStats::read(&topo.tenant).unwrap();
    let c2 = daemon.counters().unwrap().eip(eip);
    let (in_ref, in_segs, in_receives) = reference_bytes(&t1, &t2, ipv6);
    assert!(in_segs > 4 * in_receives, "no GSO seen inbound");
    assert_within(c2.inbound_bytes - c1.inbound_bytes, in_ref, "inbound bulk");
    assert!(
        c2.inbound_bytes - c1.inbound_bytes > BYTES,
        "IP bytes include headers"
    );
}

#[test]
fn tcp_bulk_with_gso_matches_the_receivers_ip_counters_ipv4() {
    tcp_bulk_case(eip_v4(30), false);
}

#[test]
fn tcp_bulk_with_gso_matches_the_receivers_ip_counters_ipv6() {
    tcp_bulk_case(eip_v6(30), true);
}

#[test]
fn eips_added_and_removed_while_traffic_flows() {
    let (steady, added, removed) = (eip_v4(40), eip_v4(41), eip_v4(42));
    let topo = topo(&[steady, added, removed], false);
    let mut daemon = Daemon::start(
        binary(),
        &topo.router,
        &topo.config(&[steady, removed], ""),
        &[steady, removed],
    )
    .unwrap();
    let sink_steady = UdpSink::bind(&topo.tenant, SocketAddr::new(steady, 0)).unwrap();
    let sink_added = UdpSink::bind(&topo.tenant, SocketAddr::new(added, 0)).unwrap();
    let sink_removed = UdpSink::bind(&topo.tenant, SocketAddr::new(removed, 0)).unwrap();
    let inet = IpAddr::V4(topology::INTERNET_V4);

    // Steady traffic to one EIP for the whole test (bounded: 2,000 datagrams, at most ~20 s).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady_sender = {
        let stop = stop.clone();
        let dst = sink_steady.addr;
        topo.internet.spawn(move || {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(inet, 0))?;
            let (mut bytes, deadline) = (0u64, Instant::now() + Duration::from_secs(20));
            for i in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) && i > 200
                    || Instant::now() > deadline
                {
                    break;
                }
                socket.send_to(&[7u8; 700], dst)?;
                bytes += udp_ip_len(&dst, 700);
                thread::sleep(Duration::from_millis(2));
            }
            Ok(bytes)
        })
    };

    // Phase 1: `added` is not an EIP yet, `removed` still is.
    let p1_added = send_udp(
        &topo.internet,
        inet,
        sink_added.addr,
        mixed_sizes(100, false),
    )
    .unwrap();
    let p1_removed = send_udp(
        &topo.internet,
        inet,
        sink_removed.addr,
        mixed_sizes(100, false),
    )
    .unwrap();
    let c1 = daemon.counters().unwrap();
    assert_eq!(c1.eip(removed).inbound_bytes, p1_removed);

    daemon.reload(&topo.config(&[steady, added], "")).unwrap();
    daemon
        .wait_for_eips(&[steady, added], Duration::from_secs(5))
        .unwrap();

    // Phase 2: `added` is an EIP, `removed` is not.
    let p2_added = send_udp(
        &topo.internet,
        inet,
        sink_added.addr,
        mixed_sizes(100, false),
    )
    .unwrap();
    let p2_removed = send_udp(
        &topo.internet,
        inet,
        sink_removed.addr,
        mixed_sizes(100, false),
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let steady_bytes = steady_sender.join().unwrap();

    let c2 = daemon.counters().unwrap();
    assert_eq!(
        c2.eip(steady).inbound_bytes,
        steady_bytes,
        "steady EIP lost bytes across the change"
    );
    assert_eq!(
        c2.eip(added).inbound_bytes,
        p2_added,
        "added EIP counts from its addition"
    );
    assert_eq!(
        c2.non_eip.inbound_bytes,
        p1_added + p2_removed,
        "non-EIP before/after"
    );
    assert!(!c2.eips.contains_key(&removed));
    assert!(
        daemon.log().contains("EIP removed"),
        "removal (with final counts) is logged"
    );
}
