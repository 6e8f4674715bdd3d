//! Shipping to a real PostgreSQL 15 (a private cluster per test, `initdb` as `nobody`, Unix
//! socket only) and fleet figures with `eip-meter bill`:
//!
//! * an ECMP pair: the fleet figures equal `eip-meter compute` over both routers' exports, and
//!   the bytes shipped equal the bytes sent;
//! * PostgreSQL down for several rounds, then back: every round arrives, none twice;
//! * `kill -9` of the daemon at three points of a ship: none lost, none twice;
//! * a conflicting row is refused and counted; the same host name on a second machine is refused;
//! * a wrong password or URL: a clear error in `validate` and at start, metering goes on;
//! * `bill` twice changes nothing; a late sample adds a revision; the roles keep to their rows;
//! * over TCP, TLS with the server's certificate verified, never plain text.

mod billing;
mod shipping;
mod tls;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::Duration,
};

use eip_meter_tests::{
    Daemon, SampleRow, UdpSink, billing_store, exposition_value, mixed_sizes,
    postgres::Postgres,
    send_udp,
    topology::{Topology, TopologyOptions},
};

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

/// One-second rounds in UTC: a test sees many of them.
pub const SAMPLER: &str = "interval_seconds = 1\ntimezone = \"UTC\"";

/// Checks `done` every `every` until it holds (true) or `timeout` passes (false).
pub fn poll(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        thread::sleep(every);
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub use eip_meter_tests::billing_store::shipped_boundary;

/// Waits until the billing store holds `host`'s rounds up to at least `t`.
pub fn wait_shipped(pg: &Postgres, daemon: &Daemon, host: &str, t: i64, timeout: Duration) {
    let reached = poll(timeout, Duration::from_millis(100), || {
        shipped_boundary(pg, host) >= t
    });
    assert!(
        reached,
        "{host} not shipped up to {t} within {timeout:?} (at {}); log:\n{}",
        shipped_boundary(pg, host),
        daemon.log()
    );
}

/// `(eip, interval_start) -> (bytes_in, bytes_out, state)` of `host` in the billing store.
pub fn stored_rows(pg: &Postgres, host: &str) -> billing_store::StoredRows {
    billing_store::stored_rows(pg, host).unwrap()
}

/// Checks the billing store against the local store of `daemon` (stopped) up to what it
/// shipped ([`billing_store::compare_with_local`]); returns the local samples compared.
pub fn assert_store_matches_local(pg: &Postgres, daemon: &Daemon, host: &str) -> Vec<SampleRow> {
    let local = daemon.samples().unwrap();
    let compared =
        billing_store::compare_with_local(pg, &local, host).unwrap_or_else(|e| panic!("{e:#}"));
    local
        .into_iter()
        .filter(|s| s.start < compared.boundary)
        .collect()
}

/// Stops `daemon` and checks the billing store holds its rounds exactly once
/// ([`assert_store_matches_local`]) and refused nothing.
pub fn assert_shipped_exactly_once(pg: &Postgres, daemon: &mut Daemon, host: &str) {
    assert!(daemon.stop().unwrap());
    assert_store_matches_local(pg, daemon, host);
    assert_eq!(
        pg.value::<i64>("SELECT count(*) FROM sample_conflicts")
            .unwrap(),
        0
    );
}

/// One metric of a daemon's exposition.
pub fn metric(daemon: &Daemon, ns: &eip_meter_tests::Netns, series: &str) -> f64 {
    let text = daemon.scrape(ns).unwrap().body;
    exposition_value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// A single router shipping to `pg` as role `router_a`.
pub struct OneRouter {
    pub topo: Topology,
    pub eip: IpAddr,
    pub sink: UdpSink,
}

impl OneRouter {
    pub fn new(eip: IpAddr) -> Self {
        let topo = Topology::new(&TopologyOptions {
            tenant_addresses: vec![eip],
            ipv6: false,
        })
        .unwrap();
        let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
        Self { topo, eip, sink }
    }

    pub fn config(&self, store: &str) -> String {
        let mut c = self.topo.config_with(&[], "", SAMPLER);
        c.push_str(&format!("\n[[eip]]\naddress = \"{}\"\n{store}", self.eip));
        c
    }

    /// A burst of mixed-size datagrams from the Internet to the EIP; the IP-layer bytes.
    pub fn burst(&self, count: usize) -> u64 {
        let inet = Topology::internet_addr(self.eip, 0).ip();
        send_udp(
            &self.topo.internet,
            inet,
            self.sink.addr,
            mixed_sizes(count, false),
        )
        .unwrap()
    }
}
