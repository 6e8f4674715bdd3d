//! The test topology: three namespaces joined by two veth pairs.
//!
//! ```text
//!  internet                 router (eip-meter)                    tenant
//!  inet0 192.0.2.2/24  ---  up0 192.0.2.1/24      dn0 198.51.100.1/24  ---  ten0 198.51.100.2/24
//!        2001:db8:1::2/64       2001:db8:1::1/64      2001:db8:2::1/64           2001:db8:2::2/64
//!                           (programs on up0)                          EIPs on lo: 203.0.113.x/32,
//!                                                                      2001:db8:e1::x/128
//! ```
//! Inbound traffic enters the router on `up0` (TC ingress); outbound leaves on `up0` (TC egress).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Result;

use crate::Netns;

pub const INTERNET_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const TENANT_LINK_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const TENANT_LINK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
/// The uplink the daemon attaches to.
pub const UPLINK: &str = "up0";

/// The `n`th IPv4 EIP (203.0.113.n).
pub fn eip_v4(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, n))
}

/// The `n`th IPv6 EIP (2001:db8:e1::n).
pub fn eip_v6(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xe1, 0, 0, 0, 0, n))
}

#[derive(Debug, Clone, Default)]
pub struct TopologyOptions {
    /// Addresses the tenant owns (put on its loopback). They are EIPs only if the config says so.
    pub tenant_addresses: Vec<IpAddr>,
    /// Keep IPv6 on (the default turns it off so no neighbour discovery or MLD chatter adds
    /// non-EIP traffic that an exact test would have to allow for).
    pub ipv6: bool,
}

pub struct Topology {
    pub internet: Netns,
    pub router: Netns,
    pub tenant: Netns,
    ipv6: bool,
}

impl Topology {
    pub fn new(options: &TopologyOptions) -> Result<Self> {
        let topo = Self {
            internet: Netns::new("i")?,
            router: Netns::new("r")?,
            tenant: Netns::new("t")?,
            ipv6: options.ipv6,
        };
        for ns in [&topo.internet, &topo.router, &topo.tenant] {
            let off = if options.ipv6 { "0" } else { "1" };
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", off)?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", off)?;
            // Hosts on a router's link would solicit routers: chatter an exact test must not see.
            ns.sysctl("net.ipv6.conf.default.router_solicitations", "0")?;
            // Linux's defaults, pinned: the GSO reference assumes timestamps (32-byte TCP header).
            ns.sysctl("net.ipv4.tcp_timestamps", "1")?;
        }
        // veth ends are created straight in their namespaces, so names never clash across tests.
        veth_pair(&topo.router, "dn0", &topo.tenant, "ten0")?;
        let r = &topo.router;
        let t = &topo.tenant;
        r.ip(&["addr", "add", "198.51.100.1/24", "dev", "dn0"])?;
        t.ip(&["addr", "add", "198.51.100.2/24", "dev", "ten0"])?;
        r.ip(&["link", "set", "dn0", "up"])?;
        t.ip(&["link", "set", "ten0", "up"])?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.ip(&["route", "add", "203.0.113.0/24", "via", "198.51.100.2"])?;
        t.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        if options.ipv6 {
            r.ip(&["addr", "add", "2001:db8:2::1/64", "dev", "dn0", "nodad"])?;
            t.ip(&["addr", "add", "2001:db8:2::2/64", "dev", "ten0", "nodad"])?;
            r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            r.ip(&[
                "-6",
                "route",
                "add",
                "2001:db8:e1::/48",
                "via",
                "2001:db8:2::2",
            ])?;
            t.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])?;
            static_neighbours(&[
                (r, "dn0", "2001:db8:2::2", t, "ten0"),
                (t, "ten0", "2001:db8:2::1", r, "dn0"),
            ])?;
        }
        topo.connect_uplink("inet0")?;
        for addr in &options.tenant_addresses {
            let prefix = if addr.is_ipv4() { "32" } else { "128" };
            let cidr = format!("{addr}/{prefix}");
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", "lo"];
            if addr.is_ipv6() {
                args.push("nodad");
            }
            t.ip(&args)?;
        }
        Ok(topo)
    }

    /// Creates the uplink: `up0` in the router, `internet_if` in the Internet namespace, with
    /// their addresses, the Internet's routes to the EIPs through it, and (IPv6) static
    /// neighbours.
    pub fn connect_uplink(&self, internet_if: &str) -> Result<()> {
        let (i, r) = (&self.internet, &self.router);
        veth_pair(r, UPLINK, i, internet_if)?;
        i.ip(&["addr", "add", "192.0.2.2/24", "dev", internet_if])?;
        r.ip(&["addr", "add", "192.0.2.1/24", "dev", UPLINK])?;
        if self.ipv6 {
            i.ip(&[
                "addr",
                "add",
                "2001:db8:1::2/64",
                "dev",
                internet_if,
                "nodad",
            ])?;
            r.ip(&["addr", "add", "2001:db8:1::1/64", "dev", UPLINK, "nodad"])?;
        }
        i.ip(&["link", "set", internet_if, "up"])?;
        r.ip(&["link", "set", UPLINK, "up"])?;
        i.ip(&["route", "add", "203.0.113.0/24", "via", "192.0.2.1"])?;
        if self.ipv6 {
            for net in ["2001:db8:e1::/48", "2001:db8:2::/64"] {
                i.ip(&["-6", "route", "add", net, "via", "2001:db8:1::1"])?;
            }
            static_neighbours(&[
                (i, internet_if, "2001:db8:1::1", r, UPLINK),
                (r, UPLINK, "2001:db8:1::2", i, internet_if),
            ])?;
        }
        Ok(())
    }

    /// Deletes the uplink (its peer and every route through it go with it), as a bond
    /// reconfiguration, a VF reset or a driver reload does.
    pub fn delete_uplink(&self) -> Result<()> {
        self.router.ip(&["link", "del", UPLINK]).map(drop)
    }

    /// A config for a daemon on this topology's uplink, with its own pin directory and sample
    /// store.
    pub fn config(&self, eips: &[IpAddr], extra_dataplane: &str) -> String {
        self.config_with(eips, extra_dataplane, "")
    }

    /// [`Topology::config`] with extra `[sampler]` lines (e.g. a short interval).
    pub fn config_with(
        &self,
        eips: &[IpAddr],
        extra_dataplane: &str,
        extra_sampler: &str,
    ) -> String {
        let state_dir = std::env::temp_dir().join(format!("{}-state", self.router.name()));
        let mut s = format!(
            "[dataplane]\ninterfaces = [\"{UPLINK}\"]\nbpffs_root = \"/sys/fs/bpf/eip-meter-test\"\ninstance = \"{}\"\n{extra_dataplane}\n\n[sampler]\nstate_dir = \"{}\"\nhost = \"router-a\"\n{extra_sampler}\n",
            self.router.name(),
            state_dir.display()
        );
        for eip in eips {
            s.push_str(&format!("\n[[eip]]\naddress = \"{eip}\"\n"));
        }
        s
    }

    /// Sends `count` datagrams of mixed sizes from the Internet host to `sink` (a socket at one
    /// of the tenant's EIPs), waits `settle` for them to cross the router, and returns the
    /// IP-layer bytes sent and what the tenant's IP layer received meanwhile: equal when the
    /// EIP passes traffic, 0 received when it is blocked.
    pub fn inbound_udp(
        &self,
        sink: SocketAddr,
        count: usize,
        settle: std::time::Duration,
    ) -> Result<(u64, u64)> {
        let received_before = crate::rx_octets(&self.tenant);
        let sent = crate::send_udp(
            &self.internet,
            Self::internet_addr(sink.ip(), 0).ip(),
            sink,
            crate::mixed_sizes(count, sink.is_ipv6()),
        )?;
        std::thread::sleep(settle);
        Ok((sent, crate::rx_octets(&self.tenant) - received_before))
    }

    /// An "Internet" endpoint of the same family as `eip`.
    pub fn internet_addr(eip: IpAddr, port: u16) -> SocketAddr {
        match eip {
            IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(INTERNET_V4), port),
            IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(INTERNET_V6), port),
        }
    }
}

/// Permanent neighbour entries `(namespace, device, address, peer namespace, peer device)`:
/// no solicitations crossing the links while a test measures.
fn static_neighbours(entries: &[(&Netns, &str, &str, &Netns, &str)]) -> Result<()> {
    for (ns, dev, addr, peer_ns, peer_dev) in entries {
        let mac = peer_ns.mac(peer_dev)?;
        ns.ip(&[
            "-6",
            "neigh",
            "replace",
            addr,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// A veth pair with one end in each namespace, created straight there so interface names never
/// clash across tests running in parallel.
fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    crate::run_cmd(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    Ok(())
}

/// Two dual-active routers between the Internet host and the tenant, with ECMP and layer-4
/// hashing on both sides, so each flow takes one router and many flows spread over both.
///
/// ```text
///                 +-- inet0 192.0.2.2/30 --- up0 [router a] dn0 --- ten0 198.51.100.2/30 --+
///  internet       |                                                                       | tenant
///  192.0.2.100/32 +-- inet1 192.0.2.6/30 --- up0 [router b] dn0 --- ten1 198.51.100.6/30 --+ EIPs on lo
/// ```
pub struct DualTopology {
    pub internet: Netns,
    pub routers: [Netns; 2],
    pub tenant: Netns,
}

/// The Internet host's address in [`DualTopology`] (on its loopback, reachable via both).
pub const DUAL_INTERNET_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

impl DualTopology {
    pub fn new(eips: &[IpAddr]) -> Result<Self> {
        let topo = Self {
            internet: Netns::new("i")?,
            routers: [Netns::new("ra")?, Netns::new("rb")?],
            tenant: Netns::new("t")?,
        };
        let (i, t) = (&topo.internet, &topo.tenant);
        for ns in [i, &topo.routers[0], &topo.routers[1], t] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
            // Layer-4 hashing: each flow sticks to one router, flows spread over both.
            ns.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        for (n, r) in topo.routers.iter().enumerate() {
            let (inet_if, ten_if) = (format!("inet{n}"), format!("ten{n}"));
            veth_pair(r, UPLINK, i, &inet_if)?;
            veth_pair(r, "dn0", t, &ten_if)?;
            let base = 4 * n as u8;
            let a = |net: &str, host: u8| format!("{net}.{}/30", base + host);
            i.ip(&["addr", "add", &a("192.0.2", 2), "dev", &inet_if])?;
            r.ip(&["addr", "add", &a("192.0.2", 1), "dev", UPLINK])?;
            r.ip(&["addr", "add", &a("198.51.100", 1), "dev", "dn0"])?;
            t.ip(&["addr", "add", &a("198.51.100", 2), "dev", &ten_if])?;
            for (ns, dev) in [
                (i, inet_if.as_str()),
                (r, UPLINK),
                (r, "dn0"),
                (t, ten_if.as_str()),
            ] {
                ns.ip(&["link", "set", dev, "up"])?;
            }
            r.sysctl("net.ipv4.ip_forward", "1")?;
            r.ip(&[
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                &format!("198.51.100.{}", base + 2),
            ])?;
            r.ip(&[
                "route",
                "add",
                &format!("{DUAL_INTERNET_V4}/32"),
                "via",
                &format!("192.0.2.{}", base + 2),
            ])?;
        }
        i.ip(&[
            "addr",
            "add",
            &format!("{DUAL_INTERNET_V4}/32"),
            "dev",
            "lo",
        ])?;
        i.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "nexthop",
            "via",
            "192.0.2.1",
            "nexthop",
            "via",
            "192.0.2.5",
        ])?;
        t.ip(&[
            "route",
            "add",
            "default",
            "nexthop",
            "via",
            "198.51.100.1",
            "nexthop",
            "via",
            "198.51.100.5",
        ])?;
        for eip in eips {
            t.ip(&["addr", "add", &format!("{eip}/32"), "dev", "lo"])?;
        }
        Ok(topo)
    }

    /// Config of router `n`'s daemon (own pins and state), followed by `rest` (policing, EIPs).
    pub fn config(&self, n: usize, rest: &str) -> String {
        let name = self.routers[n].name();
        let state_dir = std::env::temp_dir().join(format!("{name}-state"));
        format!(
            "[dataplane]\ninterfaces = [\"{UPLINK}\"]\nbpffs_root = \"/sys/fs/bpf/eip-meter-test\"\ninstance = \"{name}\"\n\n[sampler]\nstate_dir = \"{}\"\nhost = \"router-{}\"\n\n{rest}\n",
            state_dir.display(),
            ["a", "b"][n]
        )
    }
}
