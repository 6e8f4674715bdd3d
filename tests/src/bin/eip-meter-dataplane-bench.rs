//! `cargo xtask bench`, data-plane part: the same topology and traffic with (a) no program,
//! (b) counting only, (c) counting and caps with 1,000,000 EIPs provisioned, (d) the kernel's
//! HTB at the same rate. Prints a table and writes the JSON file named by the first argument.
//! Every figure is a ratio against a baseline from this same run (the machine is noisy).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use eip_meter_tests::{
    IpStats,
    topology::{INTERNET_V4, Topology, TopologyOptions, UPLINK, eip_v4},
    traffic::{IperfServer, Load, clear_root_qdisc, htb, iperf, iperf_spawn, iperf_wait},
};
use metering_common::PROG_INGRESS;
use metering_daemon::{
    config::{DataplaneConfig, EipState, OnExit, PolicingConfig},
    dataplane::Dataplane,
    policy::{Caps, DesiredPolicy, EipPlan, bucket_pair},
};

const EIPS: u32 = 1_000_000;
const CAP_MBPS: u64 = 100;
const UNCAPPED_RUNS: usize = 3;
const UNCAPPED_SECONDS: u32 = 4;

fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .context("usage: eip-meter-dataplane-bench OUT.json")?;
    let eip = eip_v4(10);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })?;
    let src = IpAddr::V4(INTERNET_V4);
    let mut port = 6000u16;
    let mut tcp = |seconds: u32| -> Result<eip_meter_tests::traffic::IperfResult> {
        port += 1;
        let server = IperfServer::start(&topo.tenant, SocketAddr::new(eip, port))?;
        iperf(
            &topo.internet,
            src,
            server.addr,
            Load::Tcp { streams: 1 },
            seconds,
        )
    };
    let median_tput = |tcp: &mut dyn FnMut(
        u32,
    )
        -> Result<eip_meter_tests::traffic::IperfResult>|
     -> Result<f64> {
        let mut xs = (0..UNCAPPED_RUNS)
            .map(|_| tcp(UNCAPPED_SECONDS).map(|r| r.goodput_bps()))
            .collect::<Result<Vec<_>>>()?;
        xs.sort_by(f64::total_cmp);
        Ok(xs[xs.len() / 2])
    };

    eprintln!("(a) no program");
    let none = median_tput(&mut tcp)?;

    eprintln!("(b) counting only: provisioning {EIPS} EIPs");
    let mut config = DataplaneConfig::with_interfaces(vec![UPLINK.to_owned()]);
    config.capacity = EIPS + 1;
    config.bpffs_root = "/sys/fs/bpf/eip-meter-bench".into();
    config.instance = format!("dp{}", std::process::id());
    config.on_exit = OnExit::Detach;
    let mut addrs: Vec<IpAddr> = (0..EIPS)
        .map(|i| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_ff00_u128 << 80 | u128::from(i))))
        .collect();
    addrs.push(eip);
    let mut dp = {
        let config = config.clone();
        let addrs = addrs.clone();
        topo.router.run(move || {
            let mut dp = Dataplane::load(&config)?;
            dp.apply_inventory(&addrs)?;
            dp.attach()?;
            Ok(dp)
        })?
    };
    let counting = median_tput(&mut tcp)?;

    eprintln!("(c) counting and caps on all {EIPS} EIPs");
    let policing = PolicingConfig {
        share: 1.0,
        ..PolicingConfig::default()
    };
    let plan = |mbps: u64| EipPlan {
        state: EipState::Active,
        caps: Caps::Own(bucket_pair(Some(mbps), None, None, &policing).expect("capped")),
    };
    let mut desired = DesiredPolicy {
        groups: Vec::new(),
        eips: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, plan(1 + (i as u64 * 7919) % 1000)))
            .collect(),
        ecn: true,
    };
    // The measured EIP's cap (100 Gbit/s) is never reached: every packet takes the bucket path.
    desired.eips.last_mut().expect("test EIP").1 = plan(100_000);
    let started = Instant::now();
    dp.apply(&desired)?;
    let apply_seconds = started.elapsed().as_secs_f64();
    let capped_uncapped = median_tput(&mut tcp)?;

    let frame = udp_frame(eip, 64);
    let (_, ns_per_packet) = dp.test_run(PROG_INGRESS, &frame, 1_000_000)?;

    eprintln!("(c) one TCP flow and UDP at 2x through a {CAP_MBPS} Mbit/s cap");
    desired.eips.last_mut().expect("test EIP").1 = plan(CAP_MBPS);
    dp.apply(&desired)?;
    let cap = CAP_MBPS as f64 * 1e6;
    let ours = tcp(10)?;
    let server = IperfServer::start(&topo.tenant, SocketAddr::new(eip, 5999))?;
    let client = iperf_spawn(
        &topo.internet,
        src,
        server.addr,
        Load::Udp {
            rate_bps: 2 * CAP_MBPS * 1_000_000,
            payload: 1400,
        },
        12,
    )?;
    thread::sleep(Duration::from_secs(1));
    let rx = |ns| IpStats::read(ns).map(|s| s.get("IpExtInOctets"));
    let (b0, t0) = (rx(&topo.tenant)?, Instant::now());
    thread::sleep(Duration::from_secs(10));
    let (b1, t1) = (rx(&topo.tenant)?, Instant::now());
    iperf_wait(client, 12)?;
    drop(server);
    let udp_rate = (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64();
    dp.shutdown()?;

    eprintln!("(d) HTB at {CAP_MBPS} Mbit/s, no program");
    htb(&topo.router, "dn0", CAP_MBPS * 1_000_000)?;
    let theirs = tcp(10)?;
    clear_root_qdisc(&topo.router, "dn0")?;

    let mb = ours.received_bytes as f64 / 1e6;
    let report = serde_json::json!({
        "eips_provisioned": EIPS,
        "cap_mbps": CAP_MBPS,
        "uncapped_throughput_bps_no_program": none,
        "uncapped_throughput_bps_counting": counting,
        "uncapped_throughput_bps_capped": capped_uncapped,
        "uncapped_throughput_ratio_counting": counting / none,
        "uncapped_throughput_ratio_capped": capped_uncapped / none,
        "tcp_goodput_pct_of_cap": ours.goodput_bps() / cap * 100.0,
        "htb_tcp_goodput_pct_of_cap": theirs.goodput_bps() / cap * 100.0,
        "tcp_goodput_ratio_vs_htb": ours.goodput_bps() / theirs.goodput_bps(),
        "tcp_retransmits": ours.retransmits,
        "htb_tcp_retransmits": theirs.retransmits,
        "tcp_retransmits_per_mb": ours.retransmits as f64 / mb,
        "udp_delivered_pct_of_cap": udp_rate / cap * 100.0,
        "ns_per_packet": ns_per_packet,
        "policy_apply_seconds_1m_eips": apply_seconds,
    });
    println!("| figure | value | baseline in the same run |");
    println!("|---|---|---|");
    println!(
        "| uncapped TCP, counting only ({EIPS} EIPs) | {:.2} Gbit/s, ratio {:.3} | no program {:.2} Gbit/s |",
        counting / 1e9,
        counting / none,
        none / 1e9
    );
    println!(
        "| uncapped TCP, counting + caps on {EIPS} EIPs | {:.2} Gbit/s, ratio {:.3} | no program |",
        capped_uncapped / 1e9,
        capped_uncapped / none
    );
    println!(
        "| one TCP flow, {CAP_MBPS} Mbit/s cap: goodput | {:.1}% of cap ({} retransmits, {:.1}/MB) | HTB {:.1}% ({} retransmits); ours/HTB {:.3} |",
        ours.goodput_bps() / cap * 100.0,
        ours.retransmits,
        ours.retransmits as f64 / mb,
        theirs.goodput_bps() / cap * 100.0,
        theirs.retransmits,
        ours.goodput_bps() / theirs.goodput_bps()
    );
    println!(
        "| UDP offered at 2x cap: delivered (IP layer) | {:.2}% of cap | |",
        udp_rate / cap * 100.0
    );
    println!("| BPF_PROG_TEST_RUN, ingress, {EIPS}-EIP maps | {ns_per_packet} ns/packet | |");
    println!("| policy for {EIPS} EIPs applied | {apply_seconds:.2} s | |");
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {out}");
    Ok(())
}

/// An Ethernet + IPv4 + UDP frame towards `dst` with `payload` bytes.
fn udp_frame(dst: IpAddr, payload: usize) -> Vec<u8> {
    let IpAddr::V4(dst) = dst else {
        unreachable!("the benchmark EIP is IPv4")
    };
    let total = 20 + 8 + payload;
    let mut f = vec![0u8; 14 + total];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&INTERNET_V4.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    f
}
