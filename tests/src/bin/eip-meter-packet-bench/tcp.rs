//! One CUBIC flow through a 100 Mbit/s cap at real round-trip times, made by the harness's
//! delay line (this kernel has no netem): our policer, with and without ECN at the sender,
//! against the kernel's HTB shaper at the same rate (the EIP uncapped, HTB on the router's
//! downlink). Goodput and retransmissions per MB are iperf3's; the policer's own drop and mark
//! counters and the delay line's drops are read beside them, so a reader sees who dropped what.
//! Each run is repeated and the median reported with the range. At 50 ms a sweep of bucket
//! depths and marking thresholds follows (one run each): the operator's two knobs.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use eip_meter_tests::{
    delayline::{DELAY_DEVICE, DelayLine},
    topology::{INTERNET_V4, Topology, TopologyOptions, UPLINK},
    traffic::{IperfResult, IperfServer, Load, clear_root_qdisc, htb, iperf},
};
use metering_daemon::{config::PolicingConfig, dataplane::Dataplane, policy::DesiredPolicy};
use serde_json::json;

use crate::{Spread, kernel::COUNTING_V4, plan_with};

pub const CAP_MBPS: u64 = 100;
pub const RTTS_MS: [u64; 2] = [10, 50];
const SECONDS: u32 = 8;
const REPS: usize = 3;
/// (bucket depth, marking threshold) in ms tried at 50 ms RTT besides the defaults.
const SWEEP: [(f64, f64); 3] = [(100.0, 50.0), (250.0, 10.0), (2000.0, 10.0)];

/// How the flow is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    /// Our cap; the sender does not negotiate ECN.
    Policer,
    /// Our cap; the sender negotiates ECN, so the policer marks before it drops.
    PolicerEcn,
    /// HTB on the downlink, the EIP uncapped.
    Htb,
}

impl Limiter {
    pub const ALL: [Limiter; 3] = [Self::Policer, Self::PolicerEcn, Self::Htb];

    /// Prefix of the figures' names.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Policer => "tcp",
            Self::PolicerEcn => "tcp_ecn",
            Self::Htb => "htb_tcp",
        }
    }
}

/// The medians of one limiter at one RTT.
pub struct TcpFigures {
    pub rtt_target_ms: u64,
    pub limiter: Limiter,
    pub goodput_pct_of_cap: Spread,
    pub retransmits_per_mb: Spread,
    pub rtt_ms: Spread,
}

/// One run: iperf3's figures and the drops and marks behind them.
struct Run {
    result: IperfResult,
    policer_dropped: u64,
    policer_marked: u64,
    line_dropped: u64,
}

impl Run {
    fn goodput_pct(&self) -> f64 {
        self.result.goodput_bps() / (CAP_MBPS as f64 * 1e6) * 100.0
    }

    fn retransmits_per_mb(&self) -> f64 {
        self.result.retransmits as f64 / (self.result.received_bytes as f64 / 1e6)
    }
}

struct Bench {
    topo: Topology,
    dp: Dataplane,
    port: u16,
}

impl Bench {
    fn run(
        &mut self,
        desired: &mut DesiredPolicy,
        limiter: Limiter,
        policing: &PolicingConfig,
    ) -> Result<Run> {
        let ecn = if limiter == Limiter::PolicerEcn {
            "1"
        } else {
            "0"
        };
        self.topo.internet.sysctl("net.ipv4.tcp_ecn", ecn)?;
        let cap = (limiter != Limiter::Htb).then_some(CAP_MBPS);
        for (addr, p) in desired.eips.iter_mut() {
            if *addr == COUNTING_V4 {
                *p = plan_with(cap, policing);
            }
        }
        self.dp.apply(desired)?;
        if limiter == Limiter::Htb {
            htb(&self.topo.router, "dn0", CAP_MBPS * 1_000_000)?;
        }
        let before = (policer_counts(&self.dp)?, line_drops(&self.topo)?);
        self.port += 1;
        let server =
            IperfServer::start(&self.topo.tenant, SocketAddr::new(COUNTING_V4, self.port))?;
        let result = iperf(
            &self.topo.internet,
            INTERNET_V4.into(),
            server.addr,
            Load::Tcp { streams: 1 },
            SECONDS,
        );
        clear_root_qdisc(&self.topo.router, "dn0")?;
        let result = result?;
        let after = (policer_counts(&self.dp)?, line_drops(&self.topo)?);
        let run = Run {
            result,
            policer_dropped: after.0.0 - before.0.0,
            policer_marked: after.0.1 - before.0.1,
            line_dropped: after.1 - before.1,
        };
        eprintln!(
            "  {limiter:?} (bucket {} ms, marks from {} ms): {:.1}% of cap, {} retransmits ({:.1}/MB), mean RTT {:.1} ms; policer dropped {} and marked {} segments, delay line dropped {}",
            policing.burst_ms,
            policing.ecn_mark_ms,
            run.goodput_pct(),
            run.result.retransmits,
            run.retransmits_per_mb(),
            run.result.mean_rtt_us as f64 / 1000.0,
            run.policer_dropped,
            run.policer_marked,
            run.line_dropped,
        );
        Ok(run)
    }
}

/// Runs every limiter at every RTT, then the sweep, with `dp` attached in a new topology;
/// returns it detached, the figures, and the sweep as JSON.
pub fn measure(
    mut dp: Dataplane,
    desired: &mut DesiredPolicy,
) -> Result<(Dataplane, Vec<TcpFigures>, serde_json::Value)> {
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![COUNTING_V4],
        ipv6: false,
    })?;
    dp = topo.router.run(move || {
        dp.attach()?;
        Ok(dp)
    })?;
    let mut bench = Bench {
        topo,
        dp,
        port: 7000,
    };
    let defaults = PolicingConfig {
        share: 1.0,
        ..PolicingConfig::default()
    };
    let mut figures = Vec::new();
    let mut sweep = Vec::new();
    for rtt in RTTS_MS {
        eprintln!("  round-trip time {rtt} ms");
        let _line = DelayLine::start(
            &bench.topo.router,
            UPLINK,
            "dn0",
            Duration::from_millis(rtt / 2),
        )?;
        let mut runs: Vec<Vec<Run>> = Limiter::ALL.iter().map(|_| Vec::new()).collect();
        for rep in 0..REPS {
            for turn in 0..Limiter::ALL.len() {
                let i = (rep + turn) % Limiter::ALL.len();
                runs[i].push(bench.run(desired, Limiter::ALL[i], &defaults)?);
            }
        }
        for (limiter, runs) in Limiter::ALL.into_iter().zip(runs) {
            let of = |f: fn(&Run) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
            figures.push(TcpFigures {
                rtt_target_ms: rtt,
                limiter,
                goodput_pct_of_cap: of(Run::goodput_pct),
                retransmits_per_mb: of(Run::retransmits_per_mb),
                rtt_ms: of(|r| r.result.mean_rtt_us as f64 / 1000.0),
            });
        }
        if rtt == 50 {
            for (burst_ms, ecn_mark_ms) in SWEEP {
                let policing = PolicingConfig {
                    burst_ms,
                    ecn_mark_ms,
                    ..defaults.clone()
                };
                for limiter in [Limiter::Policer, Limiter::PolicerEcn] {
                    let run = bench.run(desired, limiter, &policing)?;
                    sweep.push(json!({
                        "rtt_ms": rtt,
                        "burst_ms": burst_ms,
                        "ecn_mark_ms": ecn_mark_ms,
                        "sender_ecn": limiter == Limiter::PolicerEcn,
                        "goodput_pct_of_cap": run.goodput_pct(),
                        "retransmits_per_mb": run.retransmits_per_mb(),
                        "policer_dropped_segments": run.policer_dropped,
                        "policer_marked_segments": run.policer_marked,
                    }));
                }
            }
        }
    }
    let Bench { mut dp, .. } = bench;
    dp.detach();
    Ok((dp, figures, serde_json::Value::Array(sweep)))
}

/// The measured EIP's inbound segments dropped over its cap and marked CE so far.
fn policer_counts(dp: &Dataplane) -> Result<(u64, u64)> {
    let (_, enforcement, _) = dp.eip_status(COUNTING_V4)?.expect("provisioned");
    let d = enforcement.drops.inbound;
    Ok((d.rate_limited_packets, d.ecn_marked_packets))
}

/// Packets the delay line's device dropped (its queue full) so far.
fn line_drops(topo: &Topology) -> Result<u64> {
    let out = topo
        .router
        .ip(&["-s", "-j", "link", "show", DELAY_DEVICE])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0))
}
