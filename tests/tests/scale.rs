//! A million EIPs provisioned, one of them counted exactly, every other one read back exactly.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use eip_meter_tests::{
    UdpSink, mixed_sizes, require_root, send_udp,
    topology::{Topology, TopologyOptions, UPLINK, eip_v4},
};
use metering_common::{DirectionCounters, MAP_EIP_COUNTERS, TrafficCounters};
use metering_daemon::{
    config::{DataplaneConfig, OnExit},
    dataplane::Dataplane,
};

#[test]
fn one_million_eips_load_and_one_is_counted_exactly() {
    require_root();
    const EIPS: u32 = 1_000_000;
    let eip = eip_v4(60);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })
    .unwrap();

    // 999,999 IPv6 EIPs in 2001:db8:ffff::/48 plus the one IPv4 EIP that gets traffic.
    let mut inventory: Vec<IpAddr> = (1..EIPS)
        .map(|i| {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0xffff,
                0,
                0,
                0,
                (i >> 16) as u16,
                i as u16,
            ))
        })
        .collect();
    inventory.push(eip);
    let inventory_copy = inventory.clone();

    let mut config = DataplaneConfig::with_interfaces(vec![UPLINK.to_owned()]);
    config.capacity = EIPS;
    config.bpffs_root = "/sys/fs/bpf/eip-meter-test".into();
    config.instance = topo.router.name().to_owned();
    config.on_exit = OnExit::Detach;
    let pin_dir = config.pin_dir();

    // Attaching resolves the interface in the caller's namespace: do it all in the router's.
    let dataplane = topo
        .router
        .run(move || {
            let started = Instant::now();
            let mut dp = Dataplane::load(&config)?;
            let report = dp.apply_inventory(&inventory)?;
            dp.attach()?;
            eprintln!(
                "provisioned {} EIPs in {:?}",
                report.added,
                started.elapsed()
            );
            Ok(dp)
        })
        .unwrap();
    assert_eq!(dataplane.slots().len(), EIPS as usize);

    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    let sent = send_udp(
        &topo.internet,
        Topology::internet_addr(eip, 0).ip(),
        sink.addr,
        mixed_sizes(500, false),
    )
    .unwrap();

    // Every other EIP gets distinct per-CPU values written straight into the map, so the
    // batched read (one slice of slots per core) is checked slot by slot against them.
    let mut map: PerCpuArray<MapData, TrafficCounters> = PerCpuArray::try_from(Map::PerCpuArray(
        MapData::from_pin(pin_dir.join(MAP_EIP_COUNTERS)).unwrap(),
    ))
    .unwrap();
    let nr_cpus = aya::util::nr_cpus().unwrap();
    let per_cpu = |i: u64, cpu: u64| TrafficCounters {
        inbound: DirectionCounters {
            bytes: i * 1000 + cpu,
            packets: i + cpu,
        },
        outbound: DirectionCounters {
            bytes: i * 7 + cpu,
            packets: cpu,
        },
    };
    let mut expected = std::collections::HashMap::new();
    for (i, addr) in inventory_copy
        .iter()
        .enumerate()
        .filter(|(_, a)| **a != eip)
    {
        let i = i as u64;
        let values: Vec<TrafficCounters> = (0..nr_cpus as u64).map(|cpu| per_cpu(i, cpu)).collect();
        let sum = values
            .iter()
            .fold(TrafficCounters::default(), |a, v| a.plus(*v));
        let slot = dataplane.slots().slot(addr).unwrap();
        map.set(slot, PerCpuValues::try_from(values).unwrap(), 0)
            .unwrap();
        expected.insert(*addr, sum);
    }

    let started = Instant::now();
    let counters = dataplane.read_counters().unwrap();
    eprintln!(
        "read {} EIPs' counters in {:?}",
        counters.len(),
        started.elapsed()
    );
    assert_eq!(counters.len(), EIPS as usize);
    let (_, mine) = counters.iter().find(|(a, _)| *a == eip).unwrap();
    assert_eq!((mine.inbound.bytes, mine.inbound.packets), (sent, 500));
    let mut checked = 0;
    for (addr, c) in counters.iter().filter(|(a, _)| *a != eip) {
        assert_eq!(c, &expected[addr], "{addr}");
        checked += 1;
    }
    assert_eq!(checked, EIPS as usize - 1);
    dataplane.shutdown().unwrap();
    assert!(!pin_dir.exists());
}

/// The batched apply keeps the one-at-a-time contract: when the slots run out part-way, the
/// EIPs before the first refused one are published (in the kernel map and the slot table
/// alike) and the rest are not; a removed EIP's slot, reused, starts from zero counters.
#[test]
fn a_full_table_mid_apply_publishes_what_came_before_and_nothing_after() {
    use metering_daemon::dataplane::DataplaneError;
    require_root();
    let mut config = DataplaneConfig::with_interfaces(Vec::new());
    config.capacity = 3;
    config.bpffs_root = "/sys/fs/bpf/eip-meter-test".into();
    config.instance = eip_meter_tests::unique_tag("full");
    config.on_exit = OnExit::Detach;
    let mut dp = Dataplane::load(&config).unwrap();
    let addr = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf0, 0, 0, 0, 0, i));
    let five: Vec<IpAddr> = (1..=5).map(addr).collect();

    let err = dp.apply_inventory(&five).unwrap_err();
    assert!(
        matches!(err, DataplaneError::Slots(_)),
        "expected the slots to run out, got {err}"
    );
    for (i, a) in five.iter().enumerate() {
        let published = dp.eip_status(*a).unwrap().is_some();
        assert_eq!(published, i < 3, "{a}: published {published}");
    }
    let pinned = metering_daemon::dataplane::PinnedMaps::open(dp.pin_dir()).unwrap();
    let mut in_kernel: Vec<IpAddr> = pinned
        .read_counters()
        .unwrap()
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    in_kernel.sort();
    assert_eq!(in_kernel, five[..3].to_vec(), "the kernel's EIP map");

    // Counts left in a slot by a removed EIP are gone when the slot serves another.
    let slot = dp.slots().slot(&five[0]).unwrap();
    let counters_pin = dp.pin_dir().join(MAP_EIP_COUNTERS);
    let mut counters: PerCpuArray<MapData, TrafficCounters> =
        PerCpuArray::try_from(Map::PerCpuArray(MapData::from_pin(&counters_pin).unwrap())).unwrap();
    let nr_cpus = aya::util::nr_cpus().unwrap();
    let mut dirty = vec![TrafficCounters::default(); nr_cpus];
    dirty[0].inbound = DirectionCounters {
        bytes: 1234,
        packets: 1,
    };
    counters
        .set(slot, PerCpuValues::try_from(dirty).unwrap(), 0)
        .unwrap();
    let report = dp.apply_inventory(&[five[1], five[2], five[3]]).unwrap();
    assert_eq!((report.added, report.removed.len()), (1, 1));
    assert_eq!(
        report.removed[0].1.inbound.bytes, 1234,
        "last counts of the removed EIP"
    );
    // The only free slot is the one just freed, dirty: the new EIP gets it, zeroed.
    let (reused, _, fresh) = dp.eip_status(five[3]).unwrap().expect("published");
    assert_eq!(reused, slot, "the freed slot serves the new EIP");
    assert_eq!(
        fresh,
        TrafficCounters::default(),
        "a new EIP starts from zero"
    );
    dp.shutdown().unwrap();
}
