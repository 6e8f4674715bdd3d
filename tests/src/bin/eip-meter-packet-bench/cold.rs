//! Cold against hot: the programs' time per packet when consecutive packets go to 100,000
//! different EIPs (their hash entries, policies and counters not in the CPU's caches, as on a
//! router carrying many customers) against the same sender's packets to one EIP. Measured with
//! the kernel's run-time statistics on the attached ingress program while a small-packet sender
//! in the Internet namespace sends through the uplink. The statistics add their own two clock
//! reads to every run, alike in both.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use eip_meter_tests::topology::{INTERNET_V6, Topology, TopologyOptions};
use metering_common::PROG_INGRESS;
use metering_daemon::{dataplane::Dataplane, policy::DesiredPolicy};

use crate::{Spread, plan};

/// Distinct EIPs of the cold traffic.
pub const COLD_EIPS: u32 = 100_000;
const SECONDS_PER_RUN: u64 = 3;
/// Upper bound of packets per run, whatever the sender's speed.
const MAX_PACKETS_PER_RUN: u64 = 5_000_000;
const REPS: usize = 3;

pub struct ColdHot {
    pub cold: Spread,
    /// The cold traffic's addresses, none an EIP: what the hash lookup alone costs cold.
    pub cold_non_eip: Spread,
    pub hot: Spread,
    pub packets_per_second: Spread,
}

/// Attaches `dp` in a fresh topology, makes the cold EIPs uncapped (every packet on the counting
/// path), and measures. Returns the data plane detached.
pub fn measure(mut dp: Dataplane, desired: &mut DesiredPolicy) -> Result<(Dataplane, ColdHot)> {
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: Vec::new(),
        ipv6: true,
    })?;
    // The bench EIPs (2001:db8:be::/96) are routed to the router, which discards them after
    // the programs have seen them: nothing comes back, no ICMP errors.
    topo.internet.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:be::/48",
        "via",
        "2001:db8:1::1",
    ])?;
    topo.router
        .ip(&["-6", "route", "add", "blackhole", "2001:db8:be::/48"])?;
    let targets: Vec<IpAddr> = (0..COLD_EIPS).map(eip_meter_tests::bench_eip).collect();
    for (addr, p) in desired.eips.iter_mut() {
        if targets.binary_search(addr).is_ok() {
            *p = plan(None);
        }
    }
    dp.apply(desired)?;
    let mut dp = topo.router.run(move || {
        dp.attach()?;
        Ok(dp)
    })?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enable BPF run-time statistics")?;
    // Addresses in the same range that are no EIP (the bench provisions fewer than 2^21).
    let strangers: Vec<IpAddr> = (0..COLD_EIPS)
        .map(|i| eip_meter_tests::bench_eip((1 << 21) + i))
        .collect();
    let mut ns_per_run: [Vec<f64>; 3] = Default::default();
    let mut rates = Vec::new();
    const NAMES: [&str; 3] = ["cold", "hot", "cold, no EIP"];
    for rep in 0..REPS {
        for turn in 0..3 {
            let variant = (rep + turn) % 3;
            let dsts: Vec<IpAddr> = match variant {
                0 => targets.clone(),
                1 => vec![targets[0]],
                _ => strangers.clone(),
            };
            let before = ingress_stats(&mut dp)?;
            let sent = topo.internet.run(move || send(&dsts))?;
            let after = ingress_stats(&mut dp)?;
            let runs = after.1 - before.1;
            ensure!(
                runs >= sent.0,
                "the ingress program ran {runs} times for {} packets sent",
                sent.0
            );
            let ns = (after.0 - before.0).as_nanos() as f64 / runs as f64;
            eprintln!(
                "  {}: {ns:.0} ns/run over {runs} runs ({:.0} packets/s)",
                NAMES[variant],
                sent.0 as f64 / sent.1
            );
            rates.push(sent.0 as f64 / sent.1);
            ns_per_run[variant].push(ns);
        }
    }
    dp.detach();
    Ok((
        dp,
        ColdHot {
            cold: Spread::of(&ns_per_run[0]),
            hot: Spread::of(&ns_per_run[1]),
            cold_non_eip: Spread::of(&ns_per_run[2]),
            packets_per_second: Spread::of(&rates),
        },
    ))
}

/// Sends 1-byte UDP datagrams to `dsts` in turn for [`SECONDS_PER_RUN`] (bounded by
/// [`MAX_PACKETS_PER_RUN`]); returns how many and over how many seconds.
fn send(dsts: &[IpAddr]) -> Result<(u64, f64)> {
    let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V6(INTERNET_V6), 0))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SECONDS_PER_RUN);
    let mut sent = 0u64;
    'outer: loop {
        for dst in dsts {
            socket.send_to(&[0], SocketAddr::new(*dst, 9))?;
            sent += 1;
            if sent.is_multiple_of(1024)
                && (Instant::now() > deadline || sent >= MAX_PACKETS_PER_RUN)
            {
                break 'outer;
            }
        }
    }
    Ok((sent, started.elapsed().as_secs_f64()))
}

fn ingress_stats(dp: &mut Dataplane) -> Result<(Duration, u64)> {
    let stats = dp.program_run_stats()?;
    let s = stats
        .iter()
        .find(|s| s.program == PROG_INGRESS)
        .context("ingress statistics")?;
    Ok((s.run_time, s.run_count))
}
