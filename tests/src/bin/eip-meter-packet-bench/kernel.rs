//! The programs' own cost per packet with `BPF_PROG_TEST_RUN`: the kernel runs a program on
//! one frame `REPEAT` times against the live 1,000,000-EIP maps and reports the average time
//! per run. Every variant runs in every repetition, in rotating order, so drift in the
//! machine's speed lands on all of them alike; the median repetition is reported with the
//! range. The floor is a classifier that only returns, run the same way.
//!
//! Afterwards the counters are checked against what was run: the bench measures the counting
//! path only if it counted every run exactly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use eip_meter_tests::frames::{Transport, frame, ip_bytes};
use metering_common::{PROG_FLOOR, PROG_INGRESS};
use metering_daemon::{
    config::EipState,
    dataplane::Dataplane,
    policy::{Caps, DesiredPolicy, EipPlan},
};

use crate::{Spread, plan};

/// Runs per `BPF_PROG_TEST_RUN` call.
const REPEAT: u32 = 1_000_000;
/// Repetitions of each variant.
const REPS: usize = 11;
/// Frame size of the small-packet variants (Ethernet header included, no FCS).
const SMALL_FRAME: usize = 64;
/// Segments and segment size of the GSO variant (a 64 KB TSO burst of 1448-byte segments).
const GSO_SEGMENTS: u32 = 44;
const GSO_SIZE: u32 = 1448;

const SOURCE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const COUNTING_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
pub const COUNTING_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 10));
pub const CAPPED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 11));
pub const BLOCKED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 12));
const NON_EIP_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 200));

/// The measured EIPs' plans, added to the 1,000,000 others.
pub fn measured_eips() -> Vec<(IpAddr, EipPlan)> {
    vec![
        (COUNTING_V4, plan(None)),
        (COUNTING_V6, plan(None)),
        // 100 Gbit/s: every packet goes through the bucket, none is ever over it.
        (CAPPED_V4, plan(Some(100_000))),
        (
            BLOCKED_V4,
            EipPlan {
                state: EipState::Arrears,
                caps: Caps::None,
            },
        ),
    ]
}

struct Variant {
    name: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    gso: Option<(u32, u32)>,
    /// The return code the program must give (`TC_ACT_UNSPEC` = pass on, `TC_ACT_SHOT`).
    retval: u32,
}

const PASS_ON: u32 = u32::MAX; // TC_ACT_UNSPEC (-1)
const SHOT: u32 = 2;

fn small(dst: IpAddr) -> Vec<u8> {
    let src = match dst {
        IpAddr::V4(_) => IpAddr::V4(SOURCE_V4),
        IpAddr::V6(_) => IpAddr::V6(SOURCE_V6),
    };
    let headers = frame(src, dst, Transport::Udp, 0).len();
    frame(src, dst, Transport::Udp, SMALL_FRAME - headers)
}

fn variants() -> Vec<Variant> {
    let pass = |name, dst| Variant {
        name,
        program: PROG_INGRESS,
        frame: small(dst),
        gso: None,
        retval: PASS_ON,
    };
    let gso_frame = frame(
        IpAddr::V4(SOURCE_V4),
        COUNTING_V4,
        Transport::Tcp,
        GSO_SIZE as usize,
    );
    vec![
        Variant {
            name: "empty",
            program: PROG_FLOOR,
            frame: small(COUNTING_V4),
            gso: None,
            retval: PASS_ON,
        },
        pass("counting_v4", COUNTING_V4),
        pass("counting_v6", COUNTING_V6),
        pass("capped_v4", CAPPED_V4),
        pass("non_eip", NON_EIP_V4),
        Variant {
            retval: SHOT,
            ..pass("blocked", BLOCKED_V4)
        },
        Variant {
            name: "gso_tcp",
            program: PROG_INGRESS,
            frame: gso_frame,
            gso: Some((GSO_SEGMENTS, GSO_SIZE)),
            retval: PASS_ON,
        },
    ]
}

/// Nanoseconds per packet of each variant (median of [`REPS`], with the range), by name.
pub fn measure(dp: &mut Dataplane) -> Result<Vec<(&'static str, Spread)>> {
    let variants = variants();
    let before = counts(dp)?;
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for rep in 0..REPS {
        for turn in 0..variants.len() {
            let i = (rep + turn) % variants.len();
            let v = &variants[i];
            let (retval, duration) = dp.test_run_gso(v.program, &v.frame, REPEAT, v.gso)?;
            ensure!(
                retval == v.retval,
                "{}: the program returned {retval}, expected {}",
                v.name,
                v.retval
            );
            ns[i].push(f64::from(duration));
        }
    }
    check_counts(dp, &before, &variants)?;
    Ok(variants
        .iter()
        .zip(ns)
        .map(|(v, xs)| (v.name, Spread::of(&xs)))
        .collect())
}

/// Inbound (bytes, packets) of the counting EIPs, the capped one, and the blocked one's drops.
fn counts(dp: &Dataplane) -> Result<[(u64, u64); 4]> {
    let of = |addr| -> Result<(u64, u64)> {
        let (_, enforcement, counters) = dp.eip_status(addr)?.expect("provisioned");
        Ok(if addr == BLOCKED_V4 {
            (
                enforcement.drops.inbound.blocked_bytes,
                enforcement.drops.inbound.blocked_packets,
            )
        } else {
            (counters.inbound.bytes, counters.inbound.packets)
        })
    };
    Ok([
        of(COUNTING_V4)?,
        of(COUNTING_V6)?,
        of(CAPPED_V4)?,
        of(BLOCKED_V4)?,
    ])
}

/// Every run counted exactly: bytes and packets added equal runs x the frame's IP-layer bytes
/// (a GSO run: the super-packet's IP bytes plus one IP + TCP header per extra segment).
fn check_counts(dp: &Dataplane, before: &[(u64, u64); 4], variants: &[Variant]) -> Result<()> {
    let after = counts(dp)?;
    let runs = REPS as u64 * u64::from(REPEAT);
    let per_run = |name: &str| {
        let v = variants.iter().find(|v| v.name == name).expect("variant");
        match v.gso {
            None => (ip_bytes(&v.frame), 1),
            Some((segments, _)) => {
                let headers = (20 + Transport::Tcp.header_len()) as u64;
                (
                    ip_bytes(&v.frame) + u64::from(segments - 1) * headers,
                    u64::from(segments),
                )
            }
        }
    };
    let expected = |names: &[&str]| {
        names.iter().fold((0, 0), |(b, p), name| {
            let (bytes, packets) = per_run(name);
            (b + bytes * runs, p + packets * runs)
        })
    };
    for (i, (what, names)) in [
        ("counting_v4", &["counting_v4", "gso_tcp"][..]),
        ("counting_v6", &["counting_v6"][..]),
        ("capped_v4", &["capped_v4"][..]),
        ("blocked (drop counters)", &["blocked"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let got = (after[i].0 - before[i].0, after[i].1 - before[i].1);
        ensure!(
            got == expected(names),
            "{what}: counted {got:?} (bytes, packets), ran {:?}",
            expected(names)
        );
    }
    Ok(())
}

/// Adds the measured EIPs to `desired` (the 1,000,000 others are already there).
pub fn add_measured(desired: &mut DesiredPolicy) {
    desired.eips.extend(measured_eips());
}
