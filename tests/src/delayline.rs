//! A delay line for the harness: this kernel has neither `netem` nor `fq`, so round-trip times
//! are made in user space. A TUN device in the router namespace takes every packet the router
//! forwards between its uplink and downlink (policy routing by input interface); a relay holds
//! each for a fixed time and writes it back into the same device, from where the kernel routes
//! it on as usual. Packets cross the line once each way, so the round trip grows by twice the
//! hold. Packets leave in the order they came (the hold is the same for all).
//!
//! ```text
//! internet -- up0 [router: TC programs on up0] dl0 (TUN) <-> relay (hold) ; dn0 -- tenant
//! ```

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::Netns;

/// The TUN device's name in the router namespace.
pub const DELAY_DEVICE: &str = "dl0";
/// Routing table of the packets sent into the line.
const TABLE: &str = "100";

/// A running delay line; removed (rules, device, threads) when dropped.
pub struct DelayLine {
    /// The router namespace's name (the namespace itself belongs to the topology).
    router: String,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    /// Packets that went through.
    pub relayed: Arc<std::sync::atomic::AtomicU64>,
}

/// Packets held in the line: (when to release, bytes).
type Held = Arc<(Mutex<VecDeque<(Instant, Vec<u8>)>>, Condvar)>;

impl DelayLine {
    /// Puts a line holding each packet `one_way` between `uplink` and `downlink` of `router`.
    pub fn start(router: &Netns, uplink: &str, downlink: &str, one_way: Duration) -> Result<Self> {
        let tun = router.run(|| open_tun(DELAY_DEVICE))?;
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            router.sysctl(key, "0")?;
        }
        router.sysctl(&format!("net.ipv4.conf.{DELAY_DEVICE}.rp_filter"), "0")?;
        router.ip(&["link", "set", DELAY_DEVICE, "up"])?;
        router.ip(&[
            "route",
            "add",
            "default",
            "dev",
            DELAY_DEVICE,
            "table",
            TABLE,
        ])?;
        for iif in [uplink, downlink] {
            router.ip(&["rule", "add", "iif", iif, "lookup", TABLE, "pref", "100"])?;
        }
        let reader = tun.try_clone().context("dup the TUN descriptor")?;
        let writer = tun;
        let held: Held = Arc::new((Mutex::new(VecDeque::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let relayed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads = vec![
            {
                let (held, stop) = (held.clone(), stop.clone());
                thread::spawn(move || receive(reader, one_way, &held, &stop))
            },
            {
                let (held, stop, relayed) = (held, stop.clone(), relayed.clone());
                thread::spawn(move || release(writer, &held, &stop, &relayed))
            },
        ];
        Ok(Self {
            router: router.name().to_owned(),
            stop,
            threads,
            relayed,
        })
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let ip = |args: &[&str]| {
            let mut full = vec!["-n", self.router.as_str()];
            full.extend_from_slice(args);
            crate::run_cmd("ip", &full)
        };
        for _ in 0..2 {
            let _ = ip(&["rule", "del", "pref", "100"]);
        }
        let _ = ip(&["route", "flush", "table", TABLE]);
        // The device goes with its last descriptor (closed with the threads).
    }
}

/// Reads packets from the device and queues each with its release time.
fn receive(mut tun: File, hold: Duration, held: &Held, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::SeqCst) {
        if !readable(&tun, 50) {
            continue;
        }
        match tun.read(&mut buf) {
            Ok(n) if n > 0 => {
                let (queue, wake) = &**held;
                queue
                    .lock()
                    .expect("delay line queue")
                    .push_back((Instant::now() + hold, buf[..n].to_vec()));
                wake.notify_one();
            }
            _ => {}
        }
    }
}

/// Writes each queued packet back into the device at its release time.
fn release(mut tun: File, held: &Held, stop: &AtomicBool, relayed: &std::sync::atomic::AtomicU64) {
    let (queue, wake) = &**held;
    let mut q = queue.lock().expect("delay line queue");
    while !stop.load(Ordering::SeqCst) {
        let Some(&(due, _)) = q.front() else {
            q = wake
                .wait_timeout(q, Duration::from_millis(50))
                .expect("delay line queue")
                .0;
            continue;
        };
        let now = Instant::now();
        if due > now {
            drop(q);
            thread::sleep(due - now);
            q = queue.lock().expect("delay line queue");
            continue;
        }
        let (_, packet) = q.pop_front().expect("front exists");
        drop(q);
        // A packet the kernel refuses (no route any more) is dropped, as a real link would.
        if tun.write(&packet).is_ok() {
            relayed.fetch_add(1, Ordering::Relaxed);
        }
        q = queue.lock().expect("delay line queue");
    }
}

/// Waits up to `ms` for the device to have a packet.
fn readable(tun: &File, ms: i32) -> bool {
    let mut fd = libc::pollfd {
        fd: tun.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, ms) > 0 }
}

/// Creates the TUN device `name` (layer 3, no packet information header) in the calling
/// thread's network namespace.
fn open_tun(name: &str) -> Result<File> {
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("open /dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        bail!("device name {name} is too long");
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a valid `struct ifreq` for TUNSETIFF and outlives the call.
    let ret = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
    }
    Ok(tun)
}
