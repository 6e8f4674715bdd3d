//! Uplinks that change under the daemon: deleted and recreated, rebuilt across a `keep`
//! restart, missing at start, stripped of our program, renamed away. After each, the daemon
//! must meter again within a second (or by the next round where the kernel sends no
//! notification), count the traffic sent afterwards exactly, say so in its log and in
//! `eip-meter counters`, and mark the samples of the intervals it could not meter `partial`.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use eip_meter_tests::{
    Daemon, Netns, SampleRow, UdpSink, mixed_sizes, require_root, run_cmd, send_udp,
    tcx_program_ids, tcx_programs,
    topology::{Topology, TopologyOptions, UPLINK, eip_v4},
    wait_until,
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

/// One-second rounds, so a test sees several; UTC so sample times read plainly.
const FAST_ROUNDS: &str = "interval_seconds = 1\ntimezone = \"UTC\"";

fn topology(eip: IpAddr) -> Topology {
    Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })
    .unwrap()
}

/// A topology with `eip` on the tenant, a daemon metering it (extra `[dataplane]` and
/// `[sampler]` lines), and a sink for traffic to it.
fn start(eip: IpAddr, dataplane: &str, sampler: &str) -> (Topology, Daemon, UdpSink) {
    let topo = topology(eip);
    let config = topo.config_with(&[eip], dataplane, sampler);
    let daemon = Daemon::start(binary(), &topo.router, &config, &[eip]).unwrap();
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    (topo, daemon, sink)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Sends `count` datagrams of mixed sizes from the Internet to `eip`; returns the IP bytes.
/// A ping first resolves the neighbours on the (new) uplink, so no datagram waits on ARP.
fn send_inbound(topo: &Topology, sink: &UdpSink, eip: IpAddr, count: usize) -> u64 {
    warm_neighbours(topo);
    let inet = Topology::internet_addr(eip, 0).ip();
    send_udp(&topo.internet, inet, sink.addr, mixed_sizes(count, false)).unwrap()
}

fn warm_neighbours(topo: &Topology) {
    let mut ping = topo.internet.command("ping").unwrap();
    let out = ping
        .args(["-c", "1", "-W", "2", "192.0.2.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ping over the uplink failed");
}

/// Waits until the daemon's programs are on the uplink called `up0` (one per hook); returns
/// how long that took from `since`.
fn wait_attached(topo: &Topology, what: &str) -> Duration {
    wait_until(Duration::from_secs(10), what, || {
        Ok(tcx_programs(&topo.router, UPLINK).unwrap_or((0, 0)) == (1, 1))
    })
    .unwrap()
}

const LOST: &str =
    "uplink not metered: its traffic is not counted until the programs are back on it";
const BACK: &str = "uplink metered again";

/// Waits (1 s at most) until the daemon has logged `message` `count` times: it logs right
/// after the kernel shows the change, so a test can see the programs a moment before.
fn wait_logged(daemon: &Daemon, message: &str, count: usize) {
    wait_until(Duration::from_secs(1), message, || {
        Ok(daemon.log_events(message).len() >= count)
    })
    .unwrap();
}

fn inbound(daemon: &Daemon, eip: IpAddr) -> u64 {
    daemon.counters().unwrap().eip(eip).inbound_bytes
}

/// Waits for two more rounds to be committed, so every interval so far has its sample.
fn settle_rounds(daemon: &Daemon) {
    let before = daemon.log_events("sampled").len();
    wait_until(Duration::from_secs(10), "two more rounds", || {
        Ok(daemon.log_events("sampled").len() >= before + 2)
    })
    .unwrap();
}

/// Every sample after two more rounds, checked: `eip`'s intervals each once and in order,
/// and its inbound bytes summing to `inbound` exactly.
fn settled_samples(daemon: &Daemon, eip: IpAddr, inbound: u64) -> Vec<SampleRow> {
    settle_rounds(daemon);
    let rows = daemon.samples().unwrap();
    assert_contiguous(&rows, eip);
    let total: u64 = rows
        .iter()
        .filter(|r| r.eip == eip)
        .map(|r| r.bytes_in)
        .sum();
    assert_eq!(total, inbound, "samples hold every counted byte once");
    rows
}

/// The samples of `eip` whose interval `[start, start + 1)` overlaps `[from, to]`.
fn overlapping(rows: &[SampleRow], eip: IpAddr, from: f64, to: f64) -> Vec<&SampleRow> {
    rows.iter()
        .filter(|r| r.eip == eip && (r.start as f64) < to && (r.start + 1) as f64 > from)
        .collect()
}

fn assert_contiguous(rows: &[SampleRow], eip: IpAddr) {
    let starts: Vec<i64> = rows
        .iter()
        .filter(|r| r.eip == eip)
        .map(|r| r.start)
        .collect();
    for pair in starts.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "every interval once, in order: {starts:?}"
        );
    }
}

#[test]
fn an_uplink_deleted_and_recreated_while_running_meters_again_within_a_second() {
    require_root();
    let eip = eip_v4(80);
    let (topo, daemon, sink) = start(eip, "", FAST_ROUNDS);
    settle_rounds(&daemon);

    let before = send_inbound(&topo, &sink, eip, 300);
    assert_eq!(inbound(&daemon, eip), before);
    thread::sleep(Duration::from_millis(1500));

    let deleted_at = unix_now();
    topo.delete_uplink().unwrap();
    thread::sleep(Duration::from_millis(400));
    let recreated_at = unix_now();
    topo.connect_uplink("inet0").unwrap();
    let took = wait_attached(&topo, "programs back on the recreated uplink");
    println!("programs back on the recreated uplink after {took:?}");
    assert!(took < Duration::from_secs(1), "reattached after {took:?}");
    let attached_at = unix_now();

    wait_logged(&daemon, BACK, 1);
    // Counting resumes from the same maps: nothing reset, the new bytes added exactly.
    let after = send_inbound(&topo, &sink, eip, 300);
    assert_eq!(inbound(&daemon, eip), before + after);

    let lost = daemon.log_events(LOST);
    assert_eq!(lost.len(), 1, "{}", daemon.log());
    assert_eq!(lost[0]["level"], "WARN");
    assert_eq!(lost[0]["fields"]["interface"], UPLINK);
    let cause = lost[0]["fields"]["cause"].as_str().unwrap();
    assert!(
        cause.contains("deleted") || cause.contains("recreated"),
        "{cause}"
    );
    let back = daemon.log_events(BACK);
    assert_eq!(back.len(), 1, "{}", daemon.log());
    assert_eq!(back[0]["level"], "INFO");
    let detached: f64 = back[0]["fields"]["detached_seconds"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        detached >= attached_at - took.as_secs_f64() - deleted_at - 0.05 && detached < 8.0,
        "detached for {detached} s"
    );

    let counters = daemon.counters().unwrap();
    assert_eq!(counters.uplink_state(UPLINK).as_deref(), Some("attached"));
    let row = &counters.uplinks[0];
    assert_eq!(row["detachments"], 1);
    assert!(row["detached_seconds"].as_f64().unwrap() >= 0.3);
    let table = daemon.subcommand(&["counters"]).unwrap();
    assert!(
        table.starts_with("uplink up0: attached (tcx, ifindex "),
        "{table}"
    );
    assert!(table.contains("lost 1 time(s)"), "{table}");

    // Rounds up to two whole intervals after the reattachment.
    while unix_now() < attached_at.ceil() + 2.2 {
        thread::sleep(Duration::from_millis(100));
    }
    let rows = settled_samples(&daemon, eip, before + after);
    let gap = overlapping(&rows, eip, deleted_at, recreated_at);
    assert!(!gap.is_empty());
    assert!(
        gap.iter().all(|r| r.state == "partial"),
        "intervals without metering are partial: {gap:?}"
    );
    // After the reattachment the intervals are whole again.
    let later: Vec<_> = rows
        .iter()
        .filter(|r| r.eip == eip && r.start as f64 >= attached_at.ceil() + 1.0)
        .collect();
    assert!(!later.is_empty());
    assert!(later.iter().all(|r| r.state == "measured"), "{later:?}");
}

#[test]
fn a_keep_restart_after_the_uplink_was_rebuilt_replaces_the_severed_link() {
    require_root();
    let eip = eip_v4(81);
    let (topo, mut daemon, sink) = start(eip, "on_exit = \"keep\"", FAST_ROUNDS);
    let before = send_inbound(&topo, &sink, eip, 200);
    settle_rounds(&daemon);
    assert!(daemon.stop().unwrap());
    assert_eq!(
        daemon.counters().unwrap().uplink_state(UPLINK).as_deref(),
        Some("unknown"),
        "nobody checks the uplink while the daemon is down"
    );

    // Rebuilt while the daemon is down: the pinned links lose their interface.
    let rebuilt_at = unix_now();
    topo.delete_uplink().unwrap();
    topo.connect_uplink("inet0").unwrap();
    assert_eq!(tcx_programs(&topo.router, UPLINK).unwrap(), (0, 0));
    assert!(daemon.pin_dir.join("link_up0_ingress").exists());

    daemon.spawn(&topo.router).unwrap();
    daemon.wait_ready(Duration::from_secs(30)).unwrap();
    let started_at = unix_now();
    assert_eq!(tcx_programs(&topo.router, UPLINK).unwrap(), (1, 1));
    let lost = daemon.log_events(LOST);
    assert_eq!(lost.len(), 1, "{}", daemon.log());
    assert!(
        lost[0]["fields"]["cause"]
            .as_str()
            .unwrap()
            .contains("pinned link lost its interface"),
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.log_events(BACK).len(), 1);

    let after = send_inbound(&topo, &sink, eip, 200);
    assert_eq!(
        inbound(&daemon, eip),
        before + after,
        "maps kept, nothing lost"
    );
    assert!(
        daemon.pin_dir.join("link_up0_ingress").exists(),
        "the new link is pinned for the next restart"
    );

    // The next keep restart takes the new link over without a gap.
    assert!(daemon.stop().unwrap());
    daemon.spawn(&topo.router).unwrap();
    daemon.wait_ready(Duration::from_secs(30)).unwrap();
    assert!(daemon.log().contains("taking over pinned link"));
    assert_eq!(daemon.log_events(LOST).len(), 1, "no new loss");
    assert_eq!(tcx_programs(&topo.router, UPLINK).unwrap(), (1, 1));

    let rows = settled_samples(&daemon, eip, before + after);
    let gap = overlapping(&rows, eip, rebuilt_at, started_at);
    assert!(!gap.is_empty());
    assert!(
        gap.iter().all(|r| r.state == "partial"),
        "{gap:?} {rebuilt_at} {started_at}\n{}",
        daemon.log()
    );
}

#[test]
fn an_uplink_missing_at_start_is_attached_when_it_appears() {
    require_root();
    let eip = eip_v4(82);
    let topo = topology(eip);
    topo.delete_uplink().unwrap();
    let config = topo.config_with(&[eip], "", FAST_ROUNDS);

    // `validate` still reports it...
    let (ok, out) = eip_meter_tests::validate_in(&topo.router, binary(), &config).unwrap();
    assert!(!ok);
    assert!(out.contains("interface `up0` does not exist"), "{out}");

    // ... but `run` warns and goes on.
    let daemon = Daemon::start(binary(), &topo.router, &config, &[eip]).unwrap();
    let lost = daemon.log_events(LOST);
    assert_eq!(lost.len(), 1, "{}", daemon.log());
    assert_eq!(lost[0]["fields"]["cause"], "no such interface at start");
    assert_eq!(
        daemon.counters().unwrap().uplink_state(UPLINK).as_deref(),
        Some("missing")
    );

    thread::sleep(Duration::from_millis(1200));
    let created_at = unix_now();
    topo.connect_uplink("inet0").unwrap();
    let took = wait_attached(&topo, "programs on the new uplink");
    assert!(took < Duration::from_secs(1), "attached after {took:?}");
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    let sent = send_inbound(&topo, &sink, eip, 300);
    assert_eq!(inbound(&daemon, eip), sent);
    assert_eq!(
        daemon.counters().unwrap().uplink_state(UPLINK).as_deref(),
        Some("attached")
    );

    let rows = settled_samples(&daemon, eip, sent);
    let before_uplink: Vec<_> = rows
        .iter()
        .filter(|r| r.eip == eip && (r.start as f64) < created_at)
        .collect();
    assert!(!before_uplink.is_empty());
    assert!(
        before_uplink.iter().all(|r| r.state == "partial"),
        "{before_uplink:?}"
    );
}

/// Another program (here `bpftool`, as an operator would) detaches our TCX link: no netlink
/// notification says so, and the daemon finds it at its next check (a round at the latest).
#[test]
fn a_program_detached_behind_the_daemons_back_is_back_by_the_next_round() {
    require_root();
    let eip = eip_v4(83);
    let (topo, daemon, sink) = start(eip, "", "interval_seconds = 2\ntimezone = \"UTC\"");
    let before = send_inbound(&topo, &sink, eip, 200);

    let ours = tcx_program_ids(&topo.router, UPLINK).unwrap();
    assert_eq!(ours.len(), 2);
    let links: serde_json::Value =
        serde_json::from_str(&run_cmd("bpftool", &["-j", "link", "show"]).unwrap()).unwrap();
    let ingress_link = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["prog_id"].as_u64() == Some(u64::from(ours[0])))
        .expect("our ingress link is listed")["id"]
        .as_u64()
        .unwrap();
    run_cmd(
        "bpftool",
        &["link", "detach", "id", &ingress_link.to_string()],
    )
    .unwrap();
    assert_eq!(tcx_programs(&topo.router, UPLINK).unwrap(), (0, 1));

    // Back by the next round (2 s) at the latest.
    let took = wait_attached(&topo, "ingress program back");
    assert!(took <= Duration::from_millis(2500), "back after {took:?}");
    wait_logged(&daemon, BACK, 1);
    let lost = daemon.log_events(LOST);
    assert_eq!(lost.len(), 1, "{}", daemon.log());
    assert_eq!(
        lost[0]["fields"]["cause"],
        "our program was removed from the interface"
    );
    assert_eq!(daemon.log_events(BACK).len(), 1);
    let after = send_inbound(&topo, &sink, eip, 200);
    assert_eq!(inbound(&daemon, eip), before + after);
    assert_eq!(tcx_program_ids(&topo.router, UPLINK).unwrap().len(), 2);
}

#[test]
fn an_uplink_renamed_away_and_replaced_is_followed_by_its_name() {
    require_root();
    let eip = eip_v4(84);
    let (topo, daemon, sink) = start(eip, "", FAST_ROUNDS);
    let before = send_inbound(&topo, &sink, eip, 200);

    // The old device keeps existing under another name; a new one takes the name.
    let r = &topo.router;
    r.ip(&["link", "set", UPLINK, "down"]).unwrap();
    r.ip(&["link", "set", UPLINK, "name", "upold"]).unwrap();
    r.ip(&["addr", "flush", "dev", "upold"]).unwrap();
    topo.internet
        .ip(&["addr", "flush", "dev", "inet0"])
        .unwrap();
    wait_until(
        Duration::from_secs(1),
        "programs off the renamed device",
        || Ok(tcx_programs(r, "upold")? == (0, 0)),
    )
    .unwrap();
    topo.connect_uplink("inet1").unwrap();
    let took = wait_attached(&topo, "programs on the new up0");
    assert!(took < Duration::from_secs(1), "attached after {took:?}");
    assert_eq!(tcx_programs(r, "upold").unwrap(), (0, 0));
    wait_logged(&daemon, BACK, 1);

    let lost = daemon.log_events(LOST);
    assert_eq!(lost.len(), 1, "{}", daemon.log());
    assert_eq!(lost[0]["fields"]["cause"], "interface renamed to upold");

    let after = send_inbound(&topo, &sink, eip, 200);
    assert_eq!(inbound(&daemon, eip), before + after);
}

/// The netlink (clsact) attach mode, for kernels without TCX: an operator's `tc filter del`
/// and a rebuilt uplink are both repaired from the notifications.
#[test]
fn netlink_mode_repairs_a_deleted_filter_and_a_rebuilt_uplink() {
    require_root();
    let eip = eip_v4(85);
    let (topo, daemon, sink) = start(eip, "attach_mode = \"netlink\"", FAST_ROUNDS);
    let filters = |ns: &Netns, dir: &str| {
        let dir = dir.to_owned();
        ns.run(move || run_cmd("tc", &["filter", "show", "dev", UPLINK, &dir]))
            .unwrap_or_default()
    };
    let both = |ns: &Netns| {
        filters(ns, "ingress").contains("eip_ingress")
            && filters(ns, "egress").contains("eip_egress")
    };
    assert!(both(&topo.router));
    let mut sent = send_inbound(&topo, &sink, eip, 200);

    topo.router
        .run(|| run_cmd("tc", &["filter", "del", "dev", UPLINK, "ingress"]))
        .unwrap();
    let took = wait_until(Duration::from_secs(5), "filter back", || {
        Ok(both(&topo.router))
    })
    .unwrap();
    assert!(took < Duration::from_secs(1), "filter back after {took:?}");
    sent += send_inbound(&topo, &sink, eip, 200);
    assert_eq!(inbound(&daemon, eip), sent);

    topo.delete_uplink().unwrap();
    topo.connect_uplink("inet0").unwrap();
    let took = wait_until(
        Duration::from_secs(5),
        "filters on the rebuilt uplink",
        || Ok(both(&topo.router)),
    )
    .unwrap();
    assert!(took < Duration::from_secs(1), "filters back after {took:?}");
    sent += send_inbound(&topo, &sink, eip, 200);
    assert_eq!(inbound(&daemon, eip), sent);
    assert_eq!(
        filters(&topo.router, "ingress")
            .lines()
            .filter(|l| l.contains("eip_ingress"))
            .count(),
        1,
        "one filter, not two"
    );
    wait_logged(&daemon, BACK, 2);
    assert_eq!(daemon.log_events(BACK).len(), 2, "{}", daemon.log());
}
