//! Network-namespace harness for eip-meter's integration tests and demo.
//!
//! * [`Netns`]: a named network namespace, deleted on drop (also while a test panics).
//! * [`Topology`]: internet <-> router <-> tenant, with the EIPs on the tenant side and the
//!   daemon's uplink (`up0`) in the router.
//! * [`Daemon`] (`daemon.rs`): the `eip-meter` binary running in the router namespace, stopped on drop.
//! * [`postgres::Postgres`]: a private PostgreSQL 15 cluster for one test.
//! * Traffic helpers that send from inside a namespace and return the IP-layer bytes they sent,
//!   and [`IpStats`], the receiving stack's own counters, used as an independent reference.
//!
//! Addresses are documentation ranges only (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
//! 2001:db8::/32), inside namespaces this harness creates. Every loop is bounded.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

pub mod billing_store;
pub mod clock;
pub mod daemon;
pub mod delayline;
pub mod disk;
pub mod frames;
pub mod http;
pub mod packet_fuzz;
pub mod postgres;
pub mod prometheus;
pub mod sandbox;
pub mod tls;
pub mod topology;
pub mod traffic;
pub use daemon::Daemon;
pub use topology::{Topology, TopologyOptions};

/// Fails loudly when the harness cannot work: these tests are never skipped.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "network-namespace and eBPF tests need root (run `cargo xtask test` as root); they are never skipped"
    );
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A unique short tag for namespace, instance and file names of one test.
pub fn unique_tag(role: &str) -> String {
    format!(
        "em{}x{}{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed),
        role
    )
}

/// Runs a command and fails with its stderr if it does not succeed.
pub fn run_cmd(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command that may fail: whether it succeeded, and its stdout and stderr together.
pub fn outcome(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (installed by cargo xtask setup)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A named network namespace (`/run/netns/<name>`), removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(role: &str) -> Result<Self> {
        let name = unique_tag(role);
        run_cmd("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_cmd("ip", &full)
    }

    /// The MAC address of `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> Result<String> {
        let out = self.ip(&["-br", "link", "show", "dev", dev])?;
        out.split_whitespace()
            .nth(2)
            .map(str::to_owned)
            .with_context(|| format!("no MAC for {dev} in `{out}`"))
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value).with_context(|| format!("sysctl {path}")))
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets it creates belong here.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.spawn(f).join()
    }

    /// Starts `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> NsThread<T> {
        let path = self.path();
        NsThread(thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns {}", path.display()))?;
            f()
        }))
    }

    /// A `Command` that runs in this namespace (network only: the mount namespace, and so
    /// `/sys/fs/bpf`, stays the host's, unlike `ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        command_in(&self.path(), program)
    }
}

/// A `Command` that runs in the network namespace at `path` (see [`Netns::command`]).
pub fn command_in(path: &Path, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let file = File::open(path).with_context(|| format!("open netns {}", path.display()))?;
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; `file` outlives the fork because the closure owns it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A thread running inside a namespace.
pub struct NsThread<T>(thread::JoinHandle<Result<T>>);

impl<T> NsThread<T> {
    pub fn join(self) -> Result<T> {
        match self.0.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// IP-layer size of a UDP datagram with `payload` bytes.
pub fn udp_ip_len(dst: &SocketAddr, payload: usize) -> u64 {
    let ip_header = if dst.is_ipv4() { 20 } else { 40 };
    (ip_header + 8 + payload) as u64
}

/// IPv4 bytes (IP header + payload) a namespace has received so far.
pub fn rx_octets(ns: &Netns) -> u64 {
    IpStats::read(ns).map_or(0, |s| s.get("IpExtInOctets"))
}

/// Delivered IP-layer bit/s into `ns` over `window`.
pub fn delivered_rate(ns: &Netns, window: Duration) -> f64 {
    let (b0, t0) = (rx_octets(ns), Instant::now());
    thread::sleep(window);
    (rx_octets(ns) - b0) as f64 * 8.0 / t0.elapsed().as_secs_f64()
}

/// Sends one UDP datagram of each size from `src` (bound there) to `dst`, inside `ns`, paced so
/// no queue on the path overflows. Returns the IP-layer bytes sent.
pub fn send_udp(ns: &Netns, src: IpAddr, dst: SocketAddr, sizes: Vec<usize>) -> Result<u64> {
    ns.run(move || {
        let socket = UdpSocket::bind(SocketAddr::new(src, 0)).context("bind sender")?;
        let buf = vec![0xa5u8; sizes.iter().copied().max().unwrap_or(0)];
        let mut total = 0;
        for (i, &size) in sizes.iter().enumerate() {
            let sent = socket.send_to(&buf[..size], dst).context("send_to")?;
            ensure!(sent == size, "short send {sent} of {size}");
            total += udp_ip_len(&dst, size);
            if i % 32 == 31 {
                thread::sleep(Duration::from_micros(300));
            }
        }
        Ok(total)
    })
}

/// A UDP socket bound in a namespace so datagrams to it draw no ICMP error (which would be
/// traffic of its own). It does not need to read: drops at a full socket happen after the router.
pub struct UdpSink {
    _socket: UdpSocket,
    pub addr: SocketAddr,
}

impl UdpSink {
    pub fn bind(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let socket = ns.run(move || UdpSocket::bind(addr).context("bind sink"))?;
        let addr = socket.local_addr()?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }
}

/// Sizes covering the extremes of one MTU: 0-byte payload, small, odd, full 1500-byte packets.
pub fn mixed_sizes(count: usize, ipv6: bool) -> Vec<usize> {
    let full = if ipv6 { 1452 } else { 1472 };
    let pattern = [0, 1, 17, 64, 333, 512, 999, 1200, full];
    (0..count).map(|i| pattern[i % pattern.len()]).collect()
}

/// Streams `bytes` over one TCP connection from `src` in `sender` to `dst` in `receiver` and
/// returns once the receiver has read them all and both sides closed.
pub fn tcp_bulk(
    sender: &Netns,
    src: IpAddr,
    receiver: &Netns,
    dst: SocketAddr,
    bytes: u64,
) -> Result<()> {
    let listener = receiver.run(move || TcpListener::bind(dst).context("listen"))?;
    let dst = listener.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || -> Result<u64> {
        let (mut stream, _) = listener.accept().context("accept")?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = stream.read(&mut buf).context("read")?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        let _ = tx.send(());
        Ok(got)
    });
    sender.run(move || {
        let socket = socket2_connect(src, dst)?;
        let mut stream = socket;
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stream.write_all(&chunk[..n]).context("write")?;
            left -= n as u64;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        // Wait for the receiver's FIN so every segment (and its ACK) has crossed the router.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest)?;
        Ok(())
    })?;
    rx.recv_timeout(Duration::from_secs(60))
        .context("receiver never finished")?;
    let got = reader.join().expect("reader thread")?;
    ensure!(got == bytes, "receiver got {got} of {bytes} bytes");
    Ok(())
}

/// Connects from a chosen source address (std cannot bind before connect, so use raw libc).
fn socket2_connect(src: IpAddr, dst: SocketAddr) -> Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, socket,
    };
    let family = if dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).context("socket")?;
    bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(src, 0)),
    )
    .context("bind source")?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)).context("connect")?;
    Ok(TcpStream::from(fd))
}

/// A namespace's IP-stack counters (`/proc/net/snmp` + `/proc/net/netstat`), read from inside it.
///
/// Used as the independent reference for GSO traffic: `InOctets` counts each received
/// (super-)packet's IP length once, and the ECN counters count every *segment*
/// (`max(1, gso_segs)`), so `InOctets + (segments - InReceives) x header length` is the IP-layer
/// byte count of the segments on the wire.
#[derive(Debug, Clone, Default)]
pub struct IpStats(HashMap<String, u64>);

impl IpStats {
    pub fn read(ns: &Netns) -> Result<Self> {
        ns.run(|| {
            let mut map = HashMap::new();
            for file in ["snmp", "netstat", "snmp6"] {
                let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))?;
                if file == "snmp6" {
                    for line in text.lines() {
                        let mut parts = line.split_whitespace();
                        if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                            map.insert(k.to_owned(), v.parse().unwrap_or(0));
                        }
                    }
                    continue;
                }
                let lines: Vec<_> = text.lines().collect();
                for pair in lines.chunks(2) {
                    let [header, values] = pair else { continue };
                    let mut h = header.split_whitespace();
                    let prefix = h.next().unwrap_or("").trim_end_matches(':').to_owned();
                    for (k, v) in h.zip(values.split_whitespace().skip(1)) {
                        map.insert(format!("{prefix}{k}"), v.parse().unwrap_or(0));
                    }
                }
            }
            Ok(Self(map))
        })
    }

    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// IPv4 (super-)packets received, their bytes, and the wire segments they stood for.
    pub fn ipv4_in(&self) -> (u64, u64, u64) {
        let segments = [
            "IpExtInNoECTPkts",
            "IpExtInECT1Pkts",
            "IpExtInECT0Pkts",
            "IpExtInCEPkts",
        ]
        .iter()
        .map(|k| self.get(k))
        .sum();
        (
            self.get("IpInReceives"),
            self.get("IpExtInOctets"),
            segments,
        )
    }

    /// IPv6 unicast (super-)packets received, their bytes, and the wire segments they stood
    /// for. Multicast (MLD reports, neighbour solicitations) is link chatter, not the flow.
    pub fn ipv6_in(&self) -> (u64, u64, u64) {
        let segments: u64 = [
            "Ip6InNoECTPkts",
            "Ip6InECT1Pkts",
            "Ip6InECT0Pkts",
            "Ip6InCEPkts",
        ]
        .iter()
        .map(|k| self.get(k))
        .sum();
        let mcast = self.get("Ip6InMcastPkts");
        (
            self.get("Ip6InReceives") - mcast,
            self.get("Ip6InOctets") - self.get("Ip6InMcastOctets"),
            segments - mcast,
        )
    }
}

/// TCX programs attached to `iface` in `ns`, per direction (ingress, egress).
pub fn tcx_programs(ns: &Netns, iface: &str) -> Result<(usize, usize)> {
    let iface = iface.to_owned();
    ns.run(move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        let count = |t| {
            SchedClassifier::query_tcx(&iface, t)
                .map(|(_, p)| p.len())
                .map_err(|e| anyhow::anyhow!("query_tcx {iface}: {e}"))
        };
        Ok((count(TcAttachType::Ingress)?, count(TcAttachType::Egress)?))
    })
}

/// Kernel ids of the TCX programs on `iface` in `ns` (both directions).
pub fn tcx_program_ids(ns: &Netns, iface: &str) -> Result<Vec<u32>> {
    let iface = iface.to_owned();
    ns.run(move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        let mut ids = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, programs) = SchedClassifier::query_tcx(&iface, t)
                .map_err(|e| anyhow::anyhow!("query_tcx {iface}: {e}"))?;
            ids.extend(programs.iter().map(|p| p.id()));
        }
        Ok(ids)
    })
}

/// Polls `done` every 5 ms until it holds or `timeout` passes; returns how long it took.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if done()? {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// One row of `eip-meter samples`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRow {
    pub eip: IpAddr,
    /// UNIX seconds.
    pub start: i64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub host: String,
    /// `measured` or `partial`.
    pub state: String,
}

/// Parses `eip-meter samples` CSV (`eip,interval_start,bytes_in,bytes_out,host,state`).
pub fn parse_samples(csv: &str) -> Result<Vec<SampleRow>> {
    csv.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            ensure!(f.len() == 6, "unexpected samples row `{line}`");
            Ok(SampleRow {
                eip: f[0].parse()?,
                start: chrono::DateTime::parse_from_rfc3339(f[1])?.timestamp(),
                bytes_in: f[2].parse()?,
                bytes_out: f[3].parse()?,
                host: f[4].to_owned(),
                state: f[5].to_owned(),
            })
        })
        .collect()
}

/// Counters as `eip-meter counters --json` prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub inbound_bytes: u64,
    pub inbound_packets: u64,
    pub outbound_bytes: u64,
    pub outbound_packets: u64,
}

/// One direction's drop counters as `eip-meter counters --json` prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub rate_limited_bytes: u64,
    pub rate_limited_packets: u64,
    pub blocked_bytes: u64,
    pub blocked_packets: u64,
    pub ecn_marked_bytes: u64,
    pub ecn_marked_packets: u64,
}

/// An EIP's enforcement as `eip-meter counters --json` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforcement {
    pub state: String,
    pub inbound_cap_bps: Option<u64>,
    pub outbound_cap_bps: Option<u64>,
    pub inbound_drops: DropCounts,
    pub outbound_drops: DropCounts,
}

#[derive(Debug, Clone, Default)]
pub struct CounterSnapshot {
    pub eips: HashMap<IpAddr, Counts>,
    pub enforcement: HashMap<IpAddr, Enforcement>,
    pub non_eip: Counts,
    /// Each uplink's row (`interface`, `state`, `detachments`, ...) as printed.
    pub uplinks: Vec<serde_json::Value>,
}

impl CounterSnapshot {
    pub fn parse(json: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(json).context("counters JSON")?;
        let counts = |v: &serde_json::Value| -> Counts {
            let f = |k: &str| v[k].as_u64().unwrap_or(0);
            Counts {
                inbound_bytes: f("inbound_bytes"),
                inbound_packets: f("inbound_packets"),
                outbound_bytes: f("outbound_bytes"),
                outbound_packets: f("outbound_packets"),
            }
        };
        let drops = |v: &serde_json::Value| -> DropCounts {
            let f = |k: &str| v[k].as_u64().unwrap_or(0);
            DropCounts {
                rate_limited_bytes: f("rate_limited_bytes"),
                rate_limited_packets: f("rate_limited_packets"),
                blocked_bytes: f("blocked_bytes"),
                blocked_packets: f("blocked_packets"),
                ecn_marked_bytes: f("ecn_marked_bytes"),
                ecn_marked_packets: f("ecn_marked_packets"),
            }
        };
        let mut eips = HashMap::new();
        let mut enforcement = HashMap::new();
        for row in v["eips"].as_array().context("eips array")? {
            let addr: IpAddr = row["eip"].as_str().context("eip")?.parse()?;
            eips.insert(addr, counts(row));
            enforcement.insert(
                addr,
                Enforcement {
                    state: row["state"].as_str().unwrap_or("").to_owned(),
                    inbound_cap_bps: row["inbound_cap_bps"].as_u64(),
                    outbound_cap_bps: row["outbound_cap_bps"].as_u64(),
                    inbound_drops: drops(&row["inbound_drops"]),
                    outbound_drops: drops(&row["outbound_drops"]),
                },
            );
        }
        Ok(Self {
            eips,
            enforcement,
            non_eip: counts(&v["non_eip"]),
            uplinks: v["uplinks"].as_array().cloned().unwrap_or_default(),
        })
    }

    pub fn enforcement(&self, addr: IpAddr) -> Enforcement {
        self.enforcement.get(&addr).cloned().unwrap_or_default()
    }

    /// The printed state of uplink `name` (`attached`, `detached`, `missing`, `unknown`).
    pub fn uplink_state(&self, name: &str) -> Option<String> {
        self.uplinks
            .iter()
            .find(|u| u["interface"] == name)
            .and_then(|u| u["state"].as_str().map(str::to_owned))
    }

    pub fn eip(&self, addr: IpAddr) -> Counts {
        self.eips.get(&addr).copied().unwrap_or_default()
    }
}

/// A file of the repository's `deploy/` directory.
pub fn deploy_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// `binary validate` of `config` (text), run inside `ns`: whether it passed, and its stdout and
/// stderr together.
pub fn validate_in(ns: &Netns, binary: &Path, config: &str) -> Result<(bool, String)> {
    let dir = std::env::temp_dir().join(unique_tag("v"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("eip-meter.toml");
    std::fs::write(&path, config)?;
    let out = ns
        .command(binary)?
        .args(["validate", "--config"])
        .arg(&path)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// `binary compute --timezone TZ --interval N` over an exported samples CSV; the figures.
pub fn compute(
    binary: &Path,
    csv: &str,
    timezone: &str,
    interval: u32,
) -> Result<serde_json::Value> {
    compute_with(binary, csv, timezone, interval, &[])
}

/// [`compute`] with more input files: `(option, contents)` such as `("--groups", "eip,group\n...")`.
pub fn compute_with(
    binary: &Path,
    csv: &str,
    timezone: &str,
    interval: u32,
    inputs: &[(&str, &str)],
) -> Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(unique_tag("c"));
    std::fs::create_dir_all(&dir)?;
    let export = dir.join("samples.csv");
    std::fs::write(&export, csv)?;
    let mut cmd = Command::new(binary);
    cmd.args(["compute", "--timezone", timezone, "--interval"])
        .arg(interval.to_string())
        .arg("--samples")
        .arg(&export);
    for (i, (option, contents)) in inputs.iter().enumerate() {
        let path = dir.join(format!("input-{i}.csv"));
        std::fs::write(&path, contents)?;
        cmd.arg(option).arg(&path);
    }
    let out = cmd.output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    ensure!(
        out.status.success(),
        "compute: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Renders an SVG file as a PNG with headless Chromium (Debian's `chromium`), using `scratch`
/// for its profile.
pub fn render_svg(svg: &Path, png: &Path, scratch: &Path) -> Result<()> {
    let profile = scratch.join(unique_tag("chromium"));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1200,600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .output()
        .context("chromium (Debian package, installed by cargo xtask setup)");
    let _ = std::fs::remove_dir_all(&profile);
    let out = out?;
    ensure!(
        out.status.success() && png.exists(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The daemon's default metrics address (inside the namespace it runs in).
pub const METRICS_ADDR: &str = "127.0.0.1:10317";

/// The value of an unlabelled or fully labelled sample in a text exposition (`name{labels}`
/// exactly as written), if present.
pub fn exposition_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Writes a benchmark's figures as pretty JSON to `path` (its directory created), and says so.
pub fn write_bench_report(path: impl AsRef<Path>, report: &impl serde::Serialize) -> Result<()> {
    let path = path.as_ref();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The `i`th EIP of the benchmarks: 2001:db8:be::/96, room for 2^32.
pub fn bench_eip(i: u32) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(
        0x2001,
        0xdb8,
        0xbe,
        0,
        0,
        0,
        (i >> 16) as u16,
        i as u16,
    ))
}
