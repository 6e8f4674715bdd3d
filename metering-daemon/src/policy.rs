//! From configuration to what the kernel enforces (pure: no maps, no clock).
//!
//! A cap is `purchased Mbit/s x 10^6 x share` bit/s at the IP layer, per direction. An EIP in a
//! group has no bucket of its own and draws on the group's; an EIP with no bandwidth at all is
//! metered but not capped. Blocked EIPs keep their caps (unblocking restores them at once).

use std::net::IpAddr;

use metering_common::{BucketConfig, BucketPairConfig};

use crate::config::{Config, EipConfig, EipState, GroupConfig, PolicingConfig};

/// Where an EIP's caps come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caps {
    /// Metered only.
    None,
    /// Its own bucket pair.
    Own(BucketPairConfig),
    /// The named group's bucket pair.
    Group(String),
}

/// What one EIP should be held to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EipPlan {
    pub state: EipState,
    pub caps: Caps,
}

/// The whole policy the kernel should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredPolicy {
    pub groups: Vec<(String, BucketPairConfig)>,
    pub eips: Vec<(IpAddr, EipPlan)>,
    /// Mark CE near the cap (policy flag of every EIP).
    pub ecn: bool,
}

/// A few changes to the policy the kernel holds (`None`: remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    pub groups: Vec<(String, Option<BucketPairConfig>)>,
    pub eips: Vec<(IpAddr, Option<EipPlan>)>,
    pub ecn: bool,
}

const NS_PER_MS: f64 = 1e6;

/// One direction's bucket for a purchased bandwidth (`None`: uncapped).
pub fn bucket(purchased_mbps: Option<u64>, policing: &PolicingConfig) -> BucketConfig {
    let Some(mbps) = purchased_mbps else {
        return BucketConfig::default();
    };
    // Truncated to whole bit/s; at least 1 so a tiny share never means "uncapped".
    let rate_bps = ((mbps as f64) * 1e6 * policing.share).floor().max(1.0) as u64;
    BucketConfig {
        rate_bps,
        burst_ns: (policing.burst_ms * NS_PER_MS) as u64,
        mark_ns: (policing.ecn_mark_ms * NS_PER_MS) as u64,
        _reserved: 0,
    }
}

/// Both directions' buckets; `None` when neither direction is capped.
pub fn bucket_pair(
    bandwidth_mbps: Option<u64>,
    inbound_mbps: Option<u64>,
    outbound_mbps: Option<u64>,
    policing: &PolicingConfig,
) -> Option<BucketPairConfig> {
    let pair = BucketPairConfig {
        inbound: bucket(inbound_mbps.or(bandwidth_mbps), policing),
        outbound: bucket(outbound_mbps.or(bandwidth_mbps), policing),
    };
    (pair.inbound.rate_bps != 0 || pair.outbound.rate_bps != 0).then_some(pair)
}

/// The policy a validated configuration asks for.
pub fn desired(config: &Config) -> DesiredPolicy {
    desired_of(&config.groups, &config.eips, &config.policing)
}

/// The policy of an inventory under `policing`.
pub fn desired_of(
    groups: &[GroupConfig],
    eips: &[EipConfig],
    policing: &PolicingConfig,
) -> DesiredPolicy {
    DesiredPolicy {
        groups: groups
            .iter()
            .map(|g| (g.name.clone(), group_caps(g, policing)))
            .collect(),
        eips: eips
            .iter()
            .map(|e| (e.address, eip_plan(e, policing)))
            .collect(),
        ecn: policing.ecn,
    }
}

/// A group's bucket pair.
pub fn group_caps(g: &GroupConfig, policing: &PolicingConfig) -> BucketPairConfig {
    bucket_pair(
        Some(g.bandwidth_mbps),
        g.inbound_mbps,
        g.outbound_mbps,
        policing,
    )
    .expect("a group always has a bandwidth")
}

/// What one EIP is held to.
pub fn eip_plan(e: &EipConfig, policing: &PolicingConfig) -> EipPlan {
    let caps = match &e.group {
        Some(group) => Caps::Group(group.clone()),
        None => bucket_pair(e.bandwidth_mbps, e.inbound_mbps, e.outbound_mbps, policing)
            .map_or(Caps::None, Caps::Own),
    };
    EipPlan {
        state: crate::rating::lifecycle::enforced_state(e),
        caps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AnyInterface;

    fn parse(extra: &str) -> Config {
        Config::parse(
            &format!("[dataplane]\ninterfaces = [\"x\"]\n{extra}"),
            &AnyInterface,
        )
        .unwrap()
    }

    #[test]
    fn dual_active_share_is_75_percent_of_the_purchase() {
        let c = parse("[[eip]]\naddress = \"203.0.113.1\"\nbandwidth_mbps = 100\n");
        let d = desired(&c);
        let Caps::Own(pair) = &d.eips[0].1.caps else {
            panic!("own caps expected")
        };
        assert_eq!(pair.inbound.rate_bps, 75_000_000);
        assert_eq!(pair.outbound.rate_bps, 75_000_000);
        assert_eq!(pair.inbound.burst_ns, 250_000_000);
        assert_eq!(pair.inbound.mark_ns, 125_000_000);
        assert!(d.ecn);
    }

    #[test]
    fn directions_can_differ_and_a_single_router_takes_all() {
        let c = parse(
            "[policing]\nshare = 1.0\n[[eip]]\naddress = \"203.0.113.1\"\nbandwidth_mbps = 10\noutbound_mbps = 1000\n",
        );
        let Caps::Own(pair) = &desired(&c).eips[0].1.caps else {
            panic!()
        };
        assert_eq!(pair.inbound.rate_bps, 10_000_000);
        assert_eq!(pair.outbound.rate_bps, 1_000_000_000);
    }

    #[test]
    fn one_direction_only_leaves_the_other_uncapped() {
        let c = parse("[[eip]]\naddress = \"203.0.113.1\"\ninbound_mbps = 8\n");
        let Caps::Own(pair) = &desired(&c).eips[0].1.caps else {
            panic!()
        };
        assert_eq!(pair.inbound.rate_bps, 6_000_000);
        assert_eq!(pair.outbound.rate_bps, 0);
    }

    #[test]
    fn no_bandwidth_means_metered_only_and_groups_are_shared() {
        let c = parse(
            "[[group]]\nname = \"g1\"\nbandwidth_mbps = 200\n\
             [[eip]]\naddress = \"203.0.113.1\"\n\
             [[eip]]\naddress = \"203.0.113.2\"\ngroup = \"g1\"\nstate = \"arrears\"\n",
        );
        let d = desired(&c);
        assert_eq!(d.eips[0].1.caps, Caps::None);
        assert_eq!(d.eips[1].1.caps, Caps::Group("g1".into()));
        assert_eq!(d.eips[1].1.state, EipState::Arrears);
        assert_eq!(d.groups[0].1.outbound.rate_bps, 150_000_000);
    }

    #[test]
    fn bad_policing_and_groups_are_located() {
        let text = "[dataplane]\ninterfaces = [\"x\"]\n[policing]\nshare = 1.5\n\
                    [[group]]\nname = \"g 1\"\nbandwidth_mbps = 0\n\
                    [[eip]]\naddress = \"203.0.113.1\"\ngroup = \"nope\"\nbandwidth_mbps = 5\n";
        let problems: Vec<String> = Config::parse(text, &AnyInterface)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        let all = problems.join("\n");
        assert!(all.contains("share must be in (0, 1]"), "{all}");
        assert!(all.contains("group name must match"), "{all}");
        assert!(all.contains("at least 1 Mbit/s"), "{all}");
        assert!(all.contains("group `nope` is not defined"), "{all}");
        assert!(all.contains("capped by the group's bandwidth"), "{all}");
    }
}
