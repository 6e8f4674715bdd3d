//! Bulk traffic with iperf3 and the kernel's HTB shaper as a side-by-side baseline.
//!
//! iperf3 runs as separate processes inside the namespaces (`Netns::command`), each bounded by
//! its own `-t` and by a hard timeout here, so a stuck run can never hang the suite.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::Netns;

/// What one iperf3 run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct IperfResult {
    /// Seconds the receiver measured.
    pub seconds: f64,
    /// Payload bytes the receiver got (goodput).
    pub received_bytes: u64,
    /// TCP retransmissions (0 for UDP).
    pub retransmits: u64,
    /// The sender's mean smoothed RTT in microseconds (TCP; 0 when iperf3 gives none).
    pub mean_rtt_us: u64,
    /// UDP datagrams sent and lost (0 for TCP).
    pub udp_packets: u64,
    pub udp_lost: u64,
}

impl IperfResult {
    pub fn goodput_bps(&self) -> f64 {
        self.received_bytes as f64 * 8.0 / self.seconds
    }
}

/// Traffic shape of an iperf3 run.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// `streams` TCP flows (default congestion control, CUBIC).
    Tcp { streams: u32 },
    /// One TCP flow with its sender and receiver pinned to `cpu`. veth delivers on the
    /// sending CPU (no RPS here), so the router's forwarding path, and any program on it, runs
    /// there too: the throughput is bound by that one CPU, and the other core's noise (the
    /// test itself, the host) stays out of it.
    TcpOnCpu { cpu: u32 },
    /// UDP offered at `rate_bps` in datagrams of `payload` bytes.
    Udp { rate_bps: u64, payload: u32 },
}

/// An iperf3 server for one test, listening on `addr` inside `ns`.
pub struct IperfServer {
    child: Child,
    pub addr: SocketAddr,
}

impl IperfServer {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let child = ns
            .command("iperf3")?
            .args([
                "-s",
                "-1",
                "-B",
                &addr.ip().to_string(),
                "-p",
                &addr.port().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s (is iperf3 installed? `cargo xtask setup`)")?;
        // Wait until it listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let listening = ns
                .command("ss")?
                .args(["-Hltn", &format!("sport = :{}", addr.port())])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if listening {
                return Ok(Self { child, addr });
            }
            ensure!(Instant::now() < deadline, "iperf3 server never listened");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an iperf3 client in `ns` from `src` to `server` for `seconds`; returns once it ends.
pub fn iperf(
    ns: &Netns,
    src: IpAddr,
    server: SocketAddr,
    load: Load,
    seconds: u32,
) -> Result<IperfResult> {
    let child = iperf_spawn(ns, src, server, load, seconds)?;
    iperf_wait(child, seconds)
}

/// Starts an iperf3 client without waiting (for concurrent runs); finish with [`iperf_wait`].
pub fn iperf_spawn(
    ns: &Netns,
    src: IpAddr,
    server: SocketAddr,
    load: Load,
    seconds: u32,
) -> Result<Child> {
    let mut cmd = ns.command("iperf3")?;
    cmd.args([
        "-c",
        &server.ip().to_string(),
        "-p",
        &server.port().to_string(),
        "-B",
        &src.to_string(),
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    match load {
        Load::Tcp { streams } => {
            cmd.args(["-P", &streams.to_string()]);
        }
        Load::TcpOnCpu { cpu } => {
            cmd.args(["-P", "1", "-A", &format!("{cpu},{cpu}")]);
        }
        Load::Udp { rate_bps, payload } => {
            cmd.args([
                "-u",
                "-b",
                &rate_bps.to_string(),
                "-l",
                &payload.to_string(),
            ]);
        }
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start iperf3 -c")
}

/// Waits (bounded) for a client started by [`iperf_spawn`] and parses its report. Output is
/// drained while it runs: many streams' JSON exceeds a pipe buffer.
pub fn iperf_wait(mut child: Child, seconds: u32) -> Result<IperfResult> {
    use std::io::Read as _;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let stderr = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "iperf3 client did not finish: {}",
                String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&stderr)))?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    if end.get("sum_received").is_some() {
        Ok(IperfResult {
            seconds: num(&end["sum_received"]["seconds"]),
            received_bytes: num(&end["sum_received"]["bytes"]) as u64,
            retransmits: num(&end["sum_sent"]["retransmits"]) as u64,
            mean_rtt_us: num(&end["streams"][0]["sender"]["mean_rtt"]) as u64,
            ..Default::default()
        })
    } else {
        let sum = &end["sum"];
        let packets = num(&sum["packets"]) as u64;
        let lost = num(&sum["lost_packets"]) as u64;
        Ok(IperfResult {
            seconds: num(&sum["seconds"]),
            received_bytes: 0,
            retransmits: 0,
            mean_rtt_us: 0,
            udp_packets: packets,
            udp_lost: lost,
        })
    }
}

/// Replaces `dev`'s root qdisc in `ns` with one HTB class at `rate_bps` (burst and quantum left
/// to tc's defaults, as an operator would): the kernel shaper per-subscriber systems use.
pub fn htb(ns: &Netns, dev: &str, rate_bps: u64) -> Result<()> {
    let rate = format!("{rate_bps}bit");
    ns.command("tc")?
        .args([
            "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
        ])
        .status()?
        .success()
        .then_some(())
        .context("add htb qdisc")?;
    ns.command("tc")?
        .args([
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", &rate,
            "ceil", &rate,
        ])
        .stderr(Stdio::null())
        .status()?
        .success()
        .then_some(())
        .context("add htb class")?;
    Ok(())
}

/// Removes whatever root qdisc [`htb`] installed.
pub fn clear_root_qdisc(ns: &Netns, dev: &str) -> Result<()> {
    ns.command("tc")?
        .args(["qdisc", "del", "dev", dev, "root"])
        .stderr(Stdio::null())
        .status()?;
    Ok(())
}
