//! What the daemon leaves behind: `on_exit = "detach"` restores the host, `on_exit = "keep"`
//! keeps counting while the daemon is down and hands over to the next start without a gap.

use std::{net::SocketAddr, path::Path};

use eip_meter_tests::{
    Daemon, UdpSink, mixed_sizes, require_root, send_udp,
    topology::{Topology, TopologyOptions, UPLINK, eip_v4},
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

/// TCX programs attached to the uplink, per direction.
fn attached(topo: &Topology) -> (usize, usize) {
    eip_meter_tests::tcx_programs(&topo.router, UPLINK).unwrap()
}

#[test]
fn sigterm_with_detach_removes_programs_and_pins() {
    require_root();
    let eip = eip_v4(50);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })
    .unwrap();
    let mut daemon =
        Daemon::start(binary(), &topo.router, &topo.config(&[eip], ""), &[eip]).unwrap();
    assert_eq!(attached(&topo), (1, 1));
    assert!(daemon.pin_dir.join("EIP_SLOTS").exists());

    assert!(daemon.stop().unwrap(), "clean exit on SIGTERM");
    assert_eq!(attached(&topo), (0, 0), "programs detached");
    assert!(
        !daemon.pin_dir.exists(),
        "pins removed: {}",
        daemon.pin_dir.display()
    );
}

#[test]
fn keep_counts_while_down_and_a_restart_takes_over_without_loss() {
    require_root();
    let eip = eip_v4(51);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })
    .unwrap();
    let config = topo.config(&[eip], "on_exit = \"keep\"");
    let mut daemon = Daemon::start(binary(), &topo.router, &config, &[eip]).unwrap();
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    let inet = Topology::internet_addr(eip, 0).ip();
    let mut sent = send_udp(&topo.internet, inet, sink.addr, mixed_sizes(200, false)).unwrap();

    // Stopped: programs stay attached and keep counting into the pinned maps.
    assert!(daemon.stop().unwrap());
    assert_eq!(attached(&topo), (1, 1), "programs stay attached");
    sent += send_udp(&topo.internet, inet, sink.addr, mixed_sizes(200, false)).unwrap();
    assert_eq!(
        daemon.counters().unwrap().eip(eip).inbound_bytes,
        sent,
        "counted while down"
    );

    // Crash-restart: SIGKILL, more traffic, start again: the pinned link is taken over.
    daemon.spawn(&topo.router).unwrap();
    daemon
        .wait_ready(std::time::Duration::from_secs(30))
        .unwrap();
    daemon.kill().unwrap();
    sent += send_udp(&topo.internet, inet, sink.addr, mixed_sizes(100, false)).unwrap();
    daemon.spawn(&topo.router).unwrap();
    daemon
        .wait_ready(std::time::Duration::from_secs(30))
        .unwrap();
    assert!(daemon.log().contains("taking over pinned link"));
    assert!(daemon.log().contains("reusing pinned maps"));
    assert_eq!(attached(&topo), (1, 1), "one program per hook, not two");
    sent += send_udp(&topo.internet, inet, sink.addr, mixed_sizes(100, false)).unwrap();
    assert_eq!(
        daemon.counters().unwrap().eip(eip).inbound_bytes,
        sent,
        "no byte lost or doubled"
    );
    // `Daemon`'s drop removes the kept pins (and so detaches the links).
}

#[test]
fn a_capacity_change_against_kept_maps_is_refused_clearly() {
    require_root();
    let eip = eip_v4(52);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })
    .unwrap();
    let mut daemon = Daemon::start(
        binary(),
        &topo.router,
        &topo.config(&[eip], "on_exit = \"keep\""),
        &[eip],
    )
    .unwrap();
    assert!(daemon.stop().unwrap());
    std::fs::write(
        &daemon.config_path,
        topo.config(&[eip], "on_exit = \"keep\"\ncapacity = 1024"),
    )
    .unwrap();
    daemon.spawn(&topo.router).unwrap();
    let err = daemon
        .wait_ready(std::time::Duration::from_secs(20))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("created with capacity 65536, config says 1024"),
        "{err}"
    );
}

/// The fallback for kernels without TCX: clsact + cls_bpf filters over netlink. Counts the same
/// and leaves no filter behind.
#[test]
fn netlink_attach_mode_counts_exactly_and_detaches() {
    require_root();
    let eip = eip_v4(53);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })
    .unwrap();
    let config = topo.config(&[eip], "attach_mode = \"netlink\"");
    let mut daemon = Daemon::start(binary(), &topo.router, &config, &[eip]).unwrap();
    assert!(
        daemon.log().contains(r#""mode":"netlink""#),
        "{}",
        daemon.log()
    );
    let filters = |dir: &str| {
        topo.router.run({
            let dir = dir.to_owned();
            move || eip_meter_tests::run_cmd("tc", &["filter", "show", "dev", UPLINK, &dir])
        })
    };
    assert!(filters("ingress").unwrap().contains("eip_ingress"));
    assert!(filters("egress").unwrap().contains("eip_egress"));

    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    let inet = Topology::internet_addr(eip, 0).ip();
    let sent = send_udp(&topo.internet, inet, sink.addr, mixed_sizes(300, false)).unwrap();
    assert_eq!(daemon.counters().unwrap().eip(eip).inbound_bytes, sent);

    assert!(daemon.stop().unwrap());
    assert!(
        !filters("ingress").unwrap().contains("eip_ingress"),
        "filter left behind"
    );
    assert!(
        !filters("egress").unwrap().contains("eip_egress"),
        "filter left behind"
    );
}
