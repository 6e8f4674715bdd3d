use super::*;

struct FakeHost(&'static [&'static str]);
impl HostCheck for FakeHost {
    fn interface_exists(&self, name: &str) -> bool {
        self.0.contains(&name)
    }
}
const HOST: FakeHost = FakeHost(&["eth0", "eth1"]);

fn problems(text: &str) -> Vec<String> {
    Config::parse(text, &HOST)
        .expect_err("config should be rejected")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::parse("[dataplane]\ninterfaces = [\"eth0\"]\n", &HOST).unwrap();
    assert_eq!(
        c.dataplane,
        DataplaneConfig::with_interfaces(vec!["eth0".into()])
    );
    assert_eq!(c.dataplane.capacity, 65_536);
    assert_eq!(
        c.dataplane.pin_dir(),
        PathBuf::from("/sys/fs/bpf/eip-meter/v2/default")
    );
    assert!(c.eips.is_empty());
}

#[test]
fn full_config_parses() {
    let c = Config::parse(
        r#"
[dataplane]
interfaces = ["eth0", "eth1"]
capacity = 1000000
bpffs_root = "/sys/fs/bpf/x"
instance = "edge-1"
on_exit = "keep"
attach_mode = "tcx"

[sampler]
interval_seconds = 60
timezone = "UTC"
state_dir = "/tmp/x"
host = "r1"

[[eip]]
address = "203.0.113.10"
bandwidth_mbps = 300

[[eip]]
address = "2001:db8::10"

[[eip]]
address = "::ffff:198.51.100.7"
"#,
        &HOST,
    )
    .unwrap();
    assert_eq!(c.dataplane.capacity, 1_000_000);
    assert_eq!(c.dataplane.on_exit, OnExit::Keep);
    assert_eq!(c.dataplane.attach_mode, AttachMode::Tcx);
    assert_eq!(c.eips.len(), 3);
    assert_eq!(c.eips[0].bandwidth_mbps, Some(300));
    assert_eq!(c.sampler.interval_seconds, 60);
    assert_eq!(c.sampler.timezone, "UTC");
    assert_eq!(c.eips[2].address, "198.51.100.7".parse::<IpAddr>().unwrap());
}

#[test]
fn bad_address_is_located() {
    let p =
        problems("[dataplane]\ninterfaces = [\"eth0\"]\n[[eip]]\naddress = \"203.0.113.300\"\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("line 4, column 11:"), "{p:?}");
    assert!(p[0].contains("invalid IP address"), "{p:?}");
}

#[test]
fn duplicate_eip_names_both_lines() {
    let p = problems(
        "[dataplane]\ninterfaces = [\"eth0\"]\n[[eip]]\naddress = \"203.0.113.1\"\n[[eip]]\naddress = \"::ffff:203.0.113.1\"\n",
    );
    assert_eq!(
        p,
        vec!["line 6, column 11: EIP 203.0.113.1 is listed twice (first on line 4)"]
    );
}

#[test]
fn unknown_field_is_located() {
    let p = problems("[dataplane]\ninterfaces = [\"eth0\"]\ncapacty = 5\n");
    assert!(p[0].starts_with("line 3, column 1:"), "{p:?}");
    assert!(p[0].contains("unknown field `capacty`"), "{p:?}");
}

#[test]
fn missing_interface_is_located() {
    let p = problems("[dataplane]\ninterfaces = [\"eth0\", \"wan9\"]\n");
    assert_eq!(
        p,
        vec!["line 2, column 23: interface `wan9` does not exist in this network namespace"]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = problems(
        "[dataplane]\ninterfaces = [\"nope\"]\ncapacity = 0\ninstance = \"a/b\"\n[[eip]]\naddress = \"127.0.0.1\"\n",
    );
    assert_eq!(p.len(), 4, "{p:?}");
}

#[test]
fn more_eips_than_capacity_is_rejected() {
    let p = problems(
        "[dataplane]\ninterfaces = [\"eth0\"]\ncapacity = 1\n[[eip]]\naddress = \"192.0.2.1\"\n[[eip]]\naddress = \"192.0.2.2\"\n",
    );
    assert_eq!(p, vec!["line 1, column 1: 2 EIPs do not fit in capacity 1"]);
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../../deploy/eip-meter.toml");
    let c = Config::parse(text, &AnyInterface).unwrap();
    assert_eq!(
        c.dataplane,
        DataplaneConfig::with_interfaces(vec!["eth0".into()])
    );
    assert_eq!(c.eips.len(), 2);
}

#[test]
fn bad_sampler_settings_are_located() {
    let p = problems(
        "[dataplane]\ninterfaces = [\"eth0\"]\n[sampler]\ntimezone = \"Mars/Base\"\ninterval_seconds = 7\n",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("line 3, column 1: [sampler]: unknown time zone `Mars/Base`"),
        "{p:?}"
    );
}

#[test]
fn keep_with_netlink_is_rejected() {
    let p = problems(
        "[dataplane]\ninterfaces = [\"eth0\"]\non_exit = \"keep\"\nattach_mode = \"netlink\"\n",
    );
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("needs pinnable TCX links"));
}

#[test]
fn plans_and_the_lifecycle_are_parsed_and_every_problem_located() {
    let c = Config::parse(
        "[dataplane]\ninterfaces = [\"eth0\"]\n[lifecycle]\nretention_seconds = 60\npackage_expiry_time = \"12:00:00\"\n\
         [[eip]]\naddress = \"203.0.113.1\"\nplan = \"monthly\"\nplan_start = \"2017-08-02T10:00:00+08:00\"\nplan_months = 12\n\
         [[eip]]\naddress = \"203.0.113.2\"\nplan = \"traffic\"\n",
        &AnyInterface,
    )
    .unwrap();
    assert_eq!(
        c.eips[0].plan,
        Some(crate::billing::plans::Plan::Monthly {
            start: 1_501_639_200,
            months: 12
        })
    );
    assert_eq!(c.eips[1].plan, Some(crate::billing::plans::Plan::Traffic));
    assert_eq!(c.lifecycle.retention_seconds, 60);
    assert_eq!(c.lifecycle.grace_seconds, 7 * 86_400);
    let p = problems(
        "[dataplane]\ninterfaces = [\"eth0\"]\n[lifecycle]\npackage_expiry_time = \"25:00\"\n\
         [[eip]]\naddress = \"203.0.113.1\"\nplan = \"monthly\"\nplan_months = 10\n\
         [[eip]]\naddress = \"203.0.113.2\"\nplan = \"hourly\"\nplan_months = 1\n\
         [[eip]]\naddress = \"203.0.113.3\"\nplan = \"weekly\"\n",
    );
    let all = p.join("\n");
    assert!(
        all.contains("package_expiry_time `25:00` is not HH:MM:SS"),
        "{all}"
    );
    assert!(
        all.contains("line 7, column 8: a monthly package needs plan_start"),
        "{all}"
    );
    assert!(
        all.contains("line 8, column 15: plan_months must be 1-9"),
        "{all}"
    );
    assert!(
        all.contains("line 12, column 15: plan_months only goes with plan = \"monthly\""),
        "{all}"
    );
    assert!(
        all.contains("line 15, column 8: plan `weekly` is not one of"),
        "{all}"
    );
}

#[test]
fn a_shared_bandwidth_has_a_plan_and_the_enhanced_95th_needs_300_mbps() {
    let c = Config::parse(
        "[dataplane]\ninterfaces = [\"eth0\"]\n[[group]]\nname = \"g1\"\nbandwidth_mbps = 300\nplan = \"enhanced95\"\n",
        &AnyInterface,
    )
    .unwrap();
    assert_eq!(
        c.groups[0].plan,
        Some(crate::billing::plans::Plan::Enhanced95)
    );
    let p = problems(
        "[dataplane]\ninterfaces = [\"eth0\"]\n[[group]]\nname = \"g1\"\nbandwidth_mbps = 200\nplan = \"enhanced95\"\n",
    );
    assert!(
        p[0].contains("line 6, column 8: the enhanced 95th applies to shared bandwidths of 300 Mbit/s and more"),
        "{p:?}"
    );
}
