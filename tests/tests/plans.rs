//! Each EIP's lifecycle on the router, with real traffic: a monthly package stops passing
//! traffic at its expiry second (delivered before, dropped as `expired` after), a renewal
//! restores it at once, an EIP in arrears is released after a (shortened) retention and its
//! traffic then goes to the non-EIP counter, and a restart across an expiry applies it at
//! start, effective at its second. Package expiry is 23:59:59 by the product; the tests move
//! `[lifecycle] package_expiry_time` to a few seconds ahead instead of waiting for midnight.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chrono::{Datelike, Months, TimeZone, Utc};
use eip_meter_tests::{
    Daemon, UdpSink, mixed_sizes, require_root, send_udp,
    topology::{Topology, TopologyOptions, eip_v4},
};
use serde_json::Value;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A package start and length (1-9 months) whose expiry is the day of `expiry` (UTC).
fn package_ending(expiry: i64) -> (String, u32) {
    let day = Utc.timestamp_opt(expiry, 0).unwrap().date_naive();
    for months in 1..=9 {
        let start = day.checked_sub_months(Months::new(months)).unwrap();
        if start.day() == day.day() {
            let t = start.and_hms_opt(0, 0, 0).unwrap().and_utc().to_rfc3339();
            return (t, months);
        }
    }
    unreachable!("one of nine months back has the same day")
}

/// The config: UTC, packages expiring at the time of day of `expiry`, a 3 s retention.
fn config(topo: &Topology, expiry: i64) -> String {
    let tod = Utc.timestamp_opt(expiry, 0).unwrap().format("%H:%M:%S");
    format!(
        "{}\n[lifecycle]\npackage_expiry_time = \"{tod}\"\nretention_seconds = 3\n",
        topo.config_with(&[], "", "timezone = \"UTC\"")
    )
}

fn topo(addresses: &[IpAddr]) -> Topology {
    require_root();
    Topology::new(&TopologyOptions {
        tenant_addresses: addresses.to_vec(),
        ipv6: false,
    })
    .expect("topology")
}

fn put_package(daemon: &Daemon, eip: IpAddr, expiry: i64) {
    let (start, months) = package_ending(expiry);
    daemon.api_ok("PUT",
        &format!("/v1/eips/{eip}"),
        Some(&format!(
            r#"{{"bandwidth_mbps": 100, "plan": "monthly", "plan_start": "{start}", "plan_months": {months}}}"#
        )),
    );
}

#[test]
fn a_package_stops_at_its_expiry_second_renewal_restores_it_and_release_removes_an_eip() {
    let (pkg, owing) = (eip_v4(70), eip_v4(71));
    let topo = topo(&[pkg, owing]);
    let expiry = now().ceil() as i64 + 4;
    let daemon = Daemon::start(binary(), &topo.router, &config(&topo, expiry), &[]).unwrap();
    put_package(&daemon, pkg, expiry);
    let shown = daemon.api_ok("GET", &format!("/v1/eips/{pkg}"), None);
    assert_eq!(shown["kernel"]["state"], "active", "{shown}");
    // Removing it before it expires is refused.
    let (status, v) = daemon
        .api("DELETE", &format!("/v1/eips/{pkg}"), None)
        .unwrap();
    assert_eq!(
        (status, v["error"].as_str()),
        (422, Some("package_not_expired")),
        "{v}"
    );

    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(pkg, 0)).unwrap();
    let (sent, received) = topo
        .inbound_udp(sink.addr, 100, Duration::from_millis(100))
        .unwrap();
    assert!(
        now() < expiry as f64,
        "the test was too slow to send before the expiry"
    );
    assert_eq!(received, sent, "delivered before the expiry");

    // Blocked at its second, without any call.
    let mut blocked_at = None;
    while now() < expiry as f64 + 3.0 {
        let c = daemon.counters().unwrap();
        if c.enforcement(pkg).state == "expired" {
            blocked_at = Some(now());
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let blocked_at = blocked_at.expect("never expired");
    println!(
        "expired {:.3} s after its expiry second",
        blocked_at - expiry as f64
    );
    assert!(blocked_at - (expiry as f64) < 1.0);
    let before = daemon.counters().unwrap();
    let (sent, received) = topo
        .inbound_udp(sink.addr, 100, Duration::from_millis(150))
        .unwrap();
    assert_eq!(received, 0, "an expired package passed traffic");
    let after = daemon.counters().unwrap();
    assert_eq!(
        after.enforcement(pkg).inbound_drops.blocked_bytes
            - before.enforcement(pkg).inbound_drops.blocked_bytes,
        sent
    );

    // Renewed before its release: active at once.
    let v = daemon.api_ok(
        "PATCH",
        &format!("/v1/eips/{pkg}"),
        Some(r#"{"renew_months": 1}"#),
    );
    assert_eq!(v["changed"], 1);
    assert_eq!(daemon.counters().unwrap().enforcement(pkg).state, "active");
    let (sent, received) = topo
        .inbound_udp(sink.addr, 100, Duration::from_millis(150))
        .unwrap();
    assert_eq!(received, sent, "renewed, delivered again");

    // Arrears: blocked, then released after the 3 s retention; its traffic is then nobody's.
    let out = daemon
        .subcommand(&["eip", "set", &owing.to_string(), "--plan", "hourly"])
        .unwrap();
    assert!(out.contains("admin API"), "{out}");
    let shown = daemon.api_ok("GET", &format!("/v1/eips/{owing}"), None);
    assert_eq!(shown["plan"], "hourly", "{shown}");
    daemon.api_ok(
        "PATCH",
        &format!("/v1/eips/{owing}"),
        Some(r#"{"state": "arrears"}"#),
    );
    assert_eq!(
        daemon.counters().unwrap().enforcement(owing).state,
        "arrears"
    );
    let mut released = false;
    for _ in 0..100 {
        if !daemon.counters().unwrap().eips.contains_key(&owing) {
            released = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(released, "not released after its retention");
    assert_eq!(
        daemon
            .api("GET", &format!("/v1/eips/{owing}"), None)
            .unwrap()
            .0,
        404
    );
    let sink_owing = UdpSink::bind(&topo.tenant, SocketAddr::new(owing, 0)).unwrap();
    let non_eip = daemon.counters().unwrap().non_eip.inbound_bytes;
    let sent = send_udp(
        &topo.internet,
        Topology::internet_addr(owing, 0).ip(),
        sink_owing.addr,
        mixed_sizes(50, false),
    )
    .unwrap();
    thread::sleep(Duration::from_millis(150));
    let grew = daemon.counters().unwrap().non_eip.inbound_bytes - non_eip;
    assert!(
        (sent..sent + 2000).contains(&grew),
        "non-EIP grew {grew}, sent {sent}"
    );

    // Every transition is in the trail, from the lifecycle, effective at its second.
    let out = daemon
        .subcommand(&["history", "--eip", &pkg.to_string(), "--json"])
        .unwrap();
    let rows: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let expired = rows
        .iter()
        .find(|r| r["source"] == "lifecycle")
        .expect("the expiry in the trail");
    assert_eq!(expired["after"]["state"], "expired");
    assert_eq!(
        expired["effective_from"],
        Utc.timestamp_opt(expiry, 0).unwrap().to_rfc3339()
    );
    let out = daemon
        .subcommand(&["history", "--eip", &owing.to_string(), "--json"])
        .unwrap();
    assert!(
        out.lines().last().unwrap().contains(r#""after":null"#),
        "{out}"
    );
    assert!(out.contains(r#""source":"lifecycle""#), "{out}");
    assert!(daemon.log().contains(r#""transition":"release""#));
    // And `report` shows them.
    let report = daemon.subcommand(&["report"]).unwrap();
    assert!(
        report.contains(&format!("lifecycle: EIP {pkg} active -> expired at"))
            && report.contains(&format!("lifecycle: EIP {owing} arrears -> released at")),
        "{report}"
    );
}

#[test]
fn a_restart_across_an_expiry_applies_it_at_start_effective_at_its_second() {
    let pkg = eip_v4(72);
    let topo = topo(&[pkg]);
    let expiry = now().ceil() as i64 + 3;
    let mut daemon = Daemon::start(binary(), &topo.router, &config(&topo, expiry), &[]).unwrap();
    put_package(&daemon, pkg, expiry);
    assert!(daemon.stop().unwrap());
    assert!(
        now() < expiry as f64,
        "stopped after the expiry: the test was too slow"
    );
    while now() < expiry as f64 + 1.0 {
        thread::sleep(Duration::from_millis(100));
    }
    daemon.spawn(&topo.router).unwrap();
    daemon.wait_ready(Duration::from_secs(30)).unwrap();
    let c = daemon.counters().unwrap();
    assert_eq!(c.enforcement(pkg).state, "expired", "applied at start");
    let out = daemon
        .subcommand(&["history", "--eip", &pkg.to_string(), "--json"])
        .unwrap();
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["source"], "lifecycle");
    assert_eq!(
        last["effective_from"],
        Utc.timestamp_opt(expiry, 0).unwrap().to_rfc3339()
    );
    let log = daemon.log();
    let transition = log
        .lines()
        .find(|l| l.contains(r#""transition":"expire""#))
        .expect("logged");
    assert!(transition.contains(r#""late_seconds":"#), "{transition}");
}
