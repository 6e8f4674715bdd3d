//! Throughput context, reported and not asserted: the router's small-packet forwarding rate
//! with no program, with the programs counting, and with every packet through a bucket (a
//! 100 Gbit/s cap, never reached). A UDP sender in the Internet namespace sends 64-byte frames
//! to one EIP for a few seconds; the rate is what the tenant's IP layer received. Everything
//! shares this machine's two cores, so the spread is wide: the per-packet figures above are the
//! ones to compare.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Result;
use eip_meter_tests::{
    IpStats,
    topology::{INTERNET_V4, Topology, TopologyOptions},
};
use metering_daemon::{dataplane::Dataplane, policy::DesiredPolicy};

use crate::{Spread, kernel::COUNTING_V4, plan};

const SECONDS: u64 = 3;
const MAX_PACKETS: u64 = 10_000_000;
const REPS: usize = 3;
/// UDP payload of a 64-byte frame (14 + 20 + 8 + 22).
const PAYLOAD: usize = 22;

pub const VARIANTS: [&str; 3] = ["no_program", "counting", "capped"];

/// Packets per second delivered, by variant, and what the sender managed.
pub struct Forwarding {
    pub delivered: Vec<Spread>,
    pub offered: Spread,
}

pub fn measure(mut dp: Dataplane, desired: &mut DesiredPolicy) -> Result<(Dataplane, Forwarding)> {
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![COUNTING_V4],
        ipv6: false,
    })?;
    let mut attached = false;
    let mut delivered: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut offered = Vec::new();
    for rep in 0..REPS {
        for turn in 0..VARIANTS.len() {
            let v = (rep + turn) % VARIANTS.len();
            if v == 0 && attached {
                dp.detach();
                attached = false;
            } else if v != 0 {
                for (addr, p) in desired.eips.iter_mut() {
                    if *addr == COUNTING_V4 {
                        *p = plan((v == 2).then_some(100_000));
                    }
                }
                dp.apply(desired)?;
                if !attached {
                    dp = topo.router.run(move || {
                        dp.attach()?;
                        Ok(dp)
                    })?;
                    attached = true;
                }
            }
            let before = IpStats::read(&topo.tenant)?.get("IpInReceives");
            let (sent, seconds) = topo.internet.run(send)?;
            // Let the last packets through the router before counting.
            std::thread::sleep(Duration::from_millis(200));
            let received = IpStats::read(&topo.tenant)?.get("IpInReceives") - before;
            eprintln!(
                "  {}: {:.0} packets/s delivered of {:.0} offered",
                VARIANTS[v],
                received as f64 / seconds,
                sent as f64 / seconds
            );
            delivered[v].push(received as f64 / seconds);
            offered.push(sent as f64 / seconds);
        }
    }
    if attached {
        dp.detach();
    }
    for (addr, p) in desired.eips.iter_mut() {
        if *addr == COUNTING_V4 {
            *p = plan(None);
        }
    }
    dp.apply(desired)?;
    Ok((
        dp,
        Forwarding {
            delivered: delivered.iter().map(|xs| Spread::of(xs)).collect(),
            offered: Spread::of(&offered),
        },
    ))
}

/// Sends small datagrams to the EIP for [`SECONDS`] (at most [`MAX_PACKETS`]).
fn send() -> Result<(u64, f64)> {
    let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(INTERNET_V4), 0))?;
    let dst = SocketAddr::new(COUNTING_V4, 9);
    let buf = [0u8; PAYLOAD];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SECONDS);
    let mut sent = 0u64;
    while sent < MAX_PACKETS {
        // A full socket buffer or a refused port (ICMP) only means fewer sent: keep going.
        if socket.send_to(&buf, dst).is_ok() {
            sent += 1;
        }
        if sent.is_multiple_of(1024) && Instant::now() > deadline {
            break;
        }
    }
    Ok((sent, started.elapsed().as_secs_f64()))
}
