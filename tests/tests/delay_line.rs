//! The harness's delay line (a TUN relay standing in for netem, which this kernel lacks) adds
//! the round trip it is asked for, loses and reorders nothing, and leaves the router as it was.
//! The TCP benchmarks at 10 and 50 ms rest on it.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use eip_meter_tests::{
    UdpSink,
    delayline::DelayLine,
    mixed_sizes, require_root, rx_octets, send_udp,
    topology::{INTERNET_V4, Topology, TopologyOptions, UPLINK, eip_v4},
    wait_until,
};

/// The time one TCP handshake from the Internet host to `eip` takes: one round trip.
fn handshake(topo: &Topology, eip: std::net::IpAddr, port: u16) -> Result<Duration> {
    let addr = SocketAddr::new(eip, port);
    let listener = topo
        .tenant
        .run(move || TcpListener::bind(addr).context("listen"))?;
    let rtt = topo.internet.run(move || {
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        let rtt = started.elapsed();
        drop(stream);
        Ok(rtt)
    })?;
    drop(listener);
    Ok(rtt)
}

#[test]
fn delay_line_adds_its_round_trip_loses_nothing_and_cleans_up() -> Result<()> {
    require_root();
    let eip = eip_v4(10);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })?;
    let direct = handshake(&topo, eip, 7000)?;
    ensure!(direct < Duration::from_millis(20), "no line: {direct:?}");

    let hold = Duration::from_millis(20);
    let line = DelayLine::start(&topo.router, UPLINK, "dn0", hold)?;
    let mut rtts = Vec::new();
    for port in 7001..7006 {
        rtts.push(handshake(&topo, eip, port)?);
    }
    let (min, max) = (rtts.iter().min().unwrap(), rtts.iter().max().unwrap());
    ensure!(
        *min >= 2 * hold && *max < 2 * hold + Duration::from_millis(25),
        "round trips through a {hold:?} line each way: {rtts:?}"
    );

    // Every byte crosses: the tenant's IP layer receives what was sent, in UDP of all sizes.
    // (The handshakes' connections finish closing first: their FINs cross the line too.)
    std::thread::sleep(Duration::from_millis(300));
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 9000))?;
    let before = rx_octets(&topo.tenant);
    let sent = send_udp(
        &topo.internet,
        INTERNET_V4.into(),
        sink.addr,
        mixed_sizes(2000, false),
    )?;
    wait_until(Duration::from_secs(5), "the datagrams to arrive", || {
        Ok(rx_octets(&topo.tenant) - before >= sent)
    })?;
    let received = rx_octets(&topo.tenant) - before;
    ensure!(
        received == sent,
        "sent {sent} IP bytes, the tenant received {received}"
    );
    ensure!(
        line.relayed.load(std::sync::atomic::Ordering::Relaxed) >= 2000,
        "the datagrams did not go through the line"
    );

    drop(line);
    let after = handshake(&topo, eip, 7010)?;
    ensure!(
        after < Duration::from_millis(20),
        "the line's rules stayed: {after:?}"
    );
    Ok(())
}
