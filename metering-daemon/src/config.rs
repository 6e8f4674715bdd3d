//! The daemon's TOML configuration: parsing, validation with source locations, defaults.
//!
//! Two layers: [`ConfigFile`] mirrors the file (every field spanned so a problem can name its
//! line), and [`Config`] is the validated form the rest of the daemon uses. Tests and embedders
//! build a [`Config`] directly.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use metering_common::PIN_LAYOUT_VERSION;

use crate::addr::normalize;
use crate::billing::{
    GbUnit, SampleRule,
    calendar::{Calendar, DEFAULT_INTERVAL_SECONDS, DEFAULT_TIMEZONE},
};
use serde::Deserialize;
use toml::Spanned;

/// Largest capacity accepted: 16 Mi slots (the per-CPU counters alone are 32 bytes x CPUs each).
pub const MAX_CAPACITY: u32 = 1 << 24;
/// Default number of EIP slots.
pub const DEFAULT_CAPACITY: u32 = metering_common::DEFAULT_CAPACITY;
/// Default bpffs directory; the layout version and instance name are appended.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/eip-meter";
/// Default instance name (one daemon per instance on a host).
pub const DEFAULT_INSTANCE: &str = "default";

/// Validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub sampler: SamplerConfig,
    pub policing: PolicingConfig,
    /// Shared bandwidths, by name.
    pub groups: Vec<GroupConfig>,
    pub eips: Vec<EipConfig>,
}

/// Default share of each purchased bandwidth this router enforces (one of a dual-active pair).
pub const DEFAULT_SHARE: f64 = 0.75;
/// Default bucket depth in milliseconds at the capped rate, chosen from measurements (README,
/// "Choosing the burst"): one CUBIC flow got 49% of the cap with 100 ms, 94% with 200 ms, 97.5%
/// with 250 ms; GCRA bounds any 10 s window to `cap x (1 + burst / 10 s)` = 102.5%.
pub const DEFAULT_BURST_MS: f64 = 250.0;
/// Default backlog beyond which ECN-capable packets are marked CE (half the burst: 40% fewer
/// retransmissions than without marks, same goodput, in the same measurement).
pub const DEFAULT_ECN_MARK_MS: f64 = 125.0;
/// Default number of shared-bandwidth groups the bucket maps have room for.
pub const DEFAULT_GROUP_CAPACITY: u32 = 4096;

/// How caps are enforced; every field takes effect on reload.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicingConfig {
    /// This router's share of each purchased bandwidth: 0.75 for a dual-active pair (each
    /// router caps at 75%, together 150%), 1.0 for a single router.
    pub share: f64,
    /// Bucket depth in ms at the capped rate: how far an EIP may run ahead of its cap.
    pub burst_ms: f64,
    /// Backlog in ms beyond which ECN-capable packets are marked CE.
    pub ecn_mark_ms: f64,
    /// Mark ECN-capable packets CE when their EIP nears its cap.
    pub ecn: bool,
}

impl Default for PolicingConfig {
    fn default() -> Self {
        Self {
            share: DEFAULT_SHARE,
            burst_ms: DEFAULT_BURST_MS,
            ecn_mark_ms: DEFAULT_ECN_MARK_MS,
            ecn: true,
        }
    }
}

/// Why an EIP gets service or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EipState {
    #[default]
    Active,
    /// The subscription ran out.
    Expired,
    /// The account is in arrears.
    Arrears,
    /// Frozen by the operator.
    Frozen,
}

impl EipState {
    pub const ALL: [EipState; 4] = [Self::Active, Self::Expired, Self::Arrears, Self::Frozen];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Arrears => "arrears",
            Self::Frozen => "frozen",
        }
    }

    /// The kernel's `EipPolicy::state` code.
    pub fn code(self) -> u32 {
        match self {
            Self::Active => metering_common::STATE_ACTIVE,
            Self::Expired => metering_common::STATE_BLOCKED_EXPIRED,
            Self::Arrears => metering_common::STATE_BLOCKED_ARREARS,
            Self::Frozen => metering_common::STATE_BLOCKED_FROZEN,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// A shared bandwidth: every member EIP draws on one cap per direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    /// Purchased bandwidth, Mbit/s (the cap of both directions unless overridden).
    pub bandwidth_mbps: u64,
    pub inbound_mbps: Option<u64>,
    pub outbound_mbps: Option<u64>,
}

/// Default directory of the sample store.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/eip-meter";

/// How and where billing samples are taken and kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Sampling interval (default 300 s; must divide a day).
    pub interval_seconds: u32,
    /// IANA time zone of billing days and months (default Asia/Shanghai).
    pub timezone: String,
    /// Directory of the SQLite sample store `samples.db` (default /var/lib/eip-meter).
    pub state_dir: PathBuf,
    /// Name of this router in the samples (default: the host name).
    pub host: String,
    pub sample_rule: SampleRule,
    pub gb_unit: GbUnit,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            interval_seconds: DEFAULT_INTERVAL_SECONDS,
            timezone: DEFAULT_TIMEZONE.to_owned(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            host: default_host(),
            sample_rule: SampleRule::default(),
            gb_unit: GbUnit::default(),
        }
    }
}

impl SamplerConfig {
    pub fn calendar(&self) -> Calendar {
        Calendar::new(&self.timezone, self.interval_seconds).expect("validated")
    }

    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("samples.db")
    }
}

fn default_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Where and how the data plane is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Uplink interfaces: ingress is inbound (towards EIPs), egress is outbound.
    pub interfaces: Vec<String>,
    /// EIP slots, fixed when the maps are created.
    pub capacity: u32,
    /// bpffs directory under which `<layout version>/<instance>/` holds the pins.
    pub bpffs_root: PathBuf,
    /// Distinguishes several daemons on one host (and parallel tests).
    pub instance: String,
    pub on_exit: OnExit,
    pub attach_mode: AttachMode,
    /// Shared-bandwidth groups the bucket maps have room for, fixed when the maps are created.
    pub group_capacity: u32,
}

impl DataplaneConfig {
    /// A data plane on `interfaces` with every other field at its default.
    pub fn with_interfaces(interfaces: Vec<String>) -> Self {
        Self {
            interfaces,
            capacity: DEFAULT_CAPACITY,
            bpffs_root: PathBuf::from(DEFAULT_BPFFS_ROOT),
            instance: DEFAULT_INSTANCE.to_owned(),
            on_exit: OnExit::default(),
            attach_mode: AttachMode::default(),
            group_capacity: DEFAULT_GROUP_CAPACITY,
        }
    }

    /// The versioned directory holding this instance's pinned maps and links.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs_root
            .join(PIN_LAYOUT_VERSION)
            .join(&self.instance)
    }
}

/// One EIP in the inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EipConfig {
    pub address: IpAddr,
    /// Purchased bandwidth in Mbit/s: the enhanced-95 baseline and, times the share, the cap of
    /// both directions. `None`: metered, not capped.
    pub bandwidth_mbps: Option<u64>,
    /// Per-direction purchased bandwidths overriding `bandwidth_mbps` for the cap.
    pub inbound_mbps: Option<u64>,
    pub outbound_mbps: Option<u64>,
    /// The shared bandwidth this EIP draws on (then it has no caps of its own).
    pub group: Option<String>,
    pub state: EipState,
}

impl EipConfig {
    pub fn new(address: IpAddr) -> Self {
        Self {
            address,
            bandwidth_mbps: None,
            inbound_mbps: None,
            outbound_mbps: None,
            group: None,
            state: EipState::Active,
        }
    }
}

/// What the daemon leaves behind when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnExit {
    /// Detach the programs and remove every pin: the host is as before the daemon started.
    #[default]
    Detach,
    /// Leave programs attached and maps pinned, so counting goes on while the daemon is down and
    /// the next start picks up where this one stopped (upgrades, crashes).
    Keep,
}

/// How programs are attached to the interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// TCX links on kernels >= 6.6, netlink clsact filters before.
    #[default]
    Auto,
    /// TCX links only (pinnable, so `on_exit = "keep"` works).
    Tcx,
    /// Legacy clsact + cls_bpf filters via netlink (cannot be kept across a restart).
    Netlink,
}

// ---- The file as written -----------------------------------------------------------------

/// The configuration file. Unknown fields are errors, so a typo never silently means "default".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub dataplane: DataplaneSection,
    #[serde(default)]
    pub sampler: Option<Spanned<SamplerSection>>,
    #[serde(default)]
    pub policing: Option<Spanned<PolicingSection>>,
    /// Shared bandwidths, one `[[group]]` table each.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupSection>,
    /// The EIP inventory, one `[[eip]]` table each.
    #[serde(default, rename = "eip")]
    pub eips: Vec<EipSection>,
}

/// `[policing]`; every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicingSection {
    /// 0 < share <= 1 (default 0.75).
    pub share: Option<f64>,
    /// Milliseconds, > 0 (default 250).
    pub burst_ms: Option<f64>,
    /// Milliseconds, <= burst_ms (default 125, or burst_ms if that is smaller).
    pub ecn_mark_ms: Option<f64>,
    /// Default true.
    pub ecn: Option<bool>,
}

/// `[[group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// `[A-Za-z0-9_.-]{1,64}`, unique.
    pub name: Spanned<String>,
    pub bandwidth_mbps: Spanned<u64>,
    pub inbound_mbps: Option<Spanned<u64>>,
    pub outbound_mbps: Option<Spanned<u64>>,
}

/// `[dataplane]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSection {
    /// Uplink interfaces the programs attach to (required, at least one).
    pub interfaces: Vec<Spanned<String>>,
    /// EIP slots (default 65536, at most 16777216).
    #[serde(default)]
    pub capacity: Option<Spanned<u32>>,
    /// bpffs directory for pins (default `/sys/fs/bpf/eip-meter`).
    #[serde(default)]
    pub bpffs_root: Option<Spanned<PathBuf>>,
    /// Instance name, `[A-Za-z0-9_-]{1,64}` (default `default`).
    #[serde(default)]
    pub instance: Option<Spanned<String>>,
    /// `detach` (default) or `keep`.
    #[serde(default)]
    pub on_exit: Option<Spanned<OnExit>>,
    /// `auto` (default), `tcx` or `netlink`.
    #[serde(default)]
    pub attach_mode: Option<Spanned<AttachMode>>,
    /// Groups the bucket maps have room for (default 4096, at most `capacity`).
    #[serde(default)]
    pub group_capacity: Option<Spanned<u32>>,
}

/// `[sampler]`; every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSection {
    /// Seconds, dividing 86400 (default 300).
    pub interval_seconds: Option<u32>,
    /// IANA name (default "Asia/Shanghai").
    pub timezone: Option<String>,
    /// Absolute directory (default "/var/lib/eip-meter").
    pub state_dir: Option<PathBuf>,
    /// This router's name in the samples (default: the host name).
    pub host: Option<String>,
    /// "max" (default), "inbound" or "outbound".
    pub sample_rule: Option<SampleRule>,
    /// "decimal" (10^9 bytes, default) or "binary" (2^30).
    pub gb_unit: Option<GbUnit>,
}

/// `[[eip]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EipSection {
    /// The EIP, IPv4 or IPv6.
    pub address: Spanned<IpAddr>,
    /// Purchased bandwidth, Mbit/s.
    pub bandwidth_mbps: Option<Spanned<u64>>,
    /// Inbound purchased bandwidth, Mbit/s, if it differs.
    pub inbound_mbps: Option<Spanned<u64>>,
    /// Outbound purchased bandwidth, Mbit/s, if it differs.
    pub outbound_mbps: Option<Spanned<u64>>,
    /// Name of a `[[group]]`.
    pub group: Option<Spanned<String>>,
    /// "active" (default), "expired", "arrears" or "frozen".
    pub state: Option<EipState>,
}

// ---- Errors ------------------------------------------------------------------------------

/// One problem found in a configuration file, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column, when the problem has a place in the file.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => write!(f, "line {line}, column {col}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}:\n{}", .problems.iter().map(|p| format!("  {}: {p}", .path.display())).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

// ---- Loading and validation --------------------------------------------------------------

/// Checks that the host can satisfy the config (interfaces exist). Behind a trait so unit tests
/// validate without a network namespace.
pub trait HostCheck {
    fn interface_exists(&self, name: &str) -> bool;
}

/// The real host: the interface must exist in the caller's network namespace.
pub struct CurrentNetns;

impl HostCheck for CurrentNetns {
    fn interface_exists(&self, name: &str) -> bool {
        nix::net::if_::if_nametoindex(name).is_ok()
    }
}

/// Accepts every interface name: for commands that only read pins, and for tools that parse a
/// config written for another network namespace.
pub struct AnyInterface;

impl HostCheck for AnyInterface {
    fn interface_exists(&self, _: &str) -> bool {
        true
    }
}

impl Config {
    /// Reads, parses and validates `path` against the current host.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &CurrentNetns).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates config text; every problem found is returned, not just the first.
    pub fn parse(text: &str, host: &dyn HostCheck) -> Result<Config, Vec<Problem>> {
        let locate = |span: Range<usize>| Some(line_col(text, span.start));
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            vec![Problem {
                location: e.span().and_then(&locate),
                message: e.message().trim().to_owned(),
            }]
        })?;

        let mut problems = Vec::new();
        let mut problem = |span: Range<usize>, message: String| {
            problems.push(Problem {
                location: locate(span),
                message,
            })
        };

        let d = file.dataplane;
        if d.interfaces.is_empty() {
            problems_push_global(
                &mut problem,
                "dataplane.interfaces must name at least one uplink",
            );
        }
        let mut seen_if = HashMap::new();
        for iface in &d.interfaces {
            let name = iface.get_ref();
            if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
                problem(
                    iface.span(),
                    format!("`{name}` is not a valid interface name"),
                );
            } else if let Some(first) = seen_if.insert(name.clone(), iface.span()) {
                let (l, _) = line_col(text, first.start);
                problem(
                    iface.span(),
                    format!("interface `{name}` is listed twice (first on line {l})"),
                );
            } else if !host.interface_exists(name) {
                problem(
                    iface.span(),
                    format!("interface `{name}` does not exist in this network namespace"),
                );
            }
        }

        let capacity = d
            .capacity
            .as_ref()
            .map_or(DEFAULT_CAPACITY, |c| *c.get_ref());
        if let Some(c) = &d.capacity
            && !(1..=MAX_CAPACITY).contains(c.get_ref())
        {
            problem(
                c.span(),
                format!("capacity must be between 1 and {MAX_CAPACITY}"),
            );
        }
        let instance = d
            .instance
            .as_ref()
            .map_or(DEFAULT_INSTANCE.to_owned(), |i| i.get_ref().clone());
        if let Some(i) = &d.instance
            && !valid_instance(i.get_ref())
        {
            problem(
                i.span(),
                "instance must match [A-Za-z0-9_-]{1,64}".to_owned(),
            );
        }
        let bpffs_root = d
            .bpffs_root
            .as_ref()
            .map_or(PathBuf::from(DEFAULT_BPFFS_ROOT), |p| p.get_ref().clone());
        if let Some(p) = &d.bpffs_root
            && !p.get_ref().is_absolute()
        {
            problem(p.span(), "bpffs_root must be an absolute path".to_owned());
        }
        let on_exit = d
            .on_exit
            .as_ref()
            .map_or(OnExit::default(), |o| *o.get_ref());
        let attach_mode = d
            .attach_mode
            .as_ref()
            .map_or(AttachMode::default(), |a| *a.get_ref());
        if let (Some(o), AttachMode::Netlink) = (&d.on_exit, attach_mode)
            && *o.get_ref() == OnExit::Keep
        {
            problem(
                o.span(),
                "on_exit = \"keep\" needs pinnable TCX links; attach_mode = \"netlink\" cannot keep them".to_owned(),
            );
        }

        let mut sampler = SamplerConfig::default();
        if let Some(section) = &file.sampler {
            let span = section.span();
            let section = section.get_ref();
            sampler.interval_seconds = section.interval_seconds.unwrap_or(sampler.interval_seconds);
            sampler.timezone = section.timezone.clone().unwrap_or(sampler.timezone);
            sampler.state_dir = section.state_dir.clone().unwrap_or(sampler.state_dir);
            sampler.host = section.host.clone().unwrap_or(sampler.host);
            sampler.sample_rule = section.sample_rule.unwrap_or_default();
            sampler.gb_unit = section.gb_unit.unwrap_or_default();
            if let Err(e) = Calendar::new(&sampler.timezone, sampler.interval_seconds) {
                problem(span.clone(), format!("[sampler]: {e}"));
            }
            if !sampler.state_dir.is_absolute() {
                problem(
                    span.clone(),
                    "[sampler]: state_dir must be an absolute path".to_owned(),
                );
            }
            if sampler.host.is_empty() || sampler.host.contains([',', '\n', '"']) {
                problem(
                    span,
                    "[sampler]: host must be non-empty, without commas or quotes".to_owned(),
                );
            }
        }

        let group_capacity = d
            .group_capacity
            .as_ref()
            .map_or(DEFAULT_GROUP_CAPACITY, |g| *g.get_ref());
        if let Some(g) = &d.group_capacity
            && (*g.get_ref() == 0 || *g.get_ref() > MAX_CAPACITY)
        {
            problem(
                g.span(),
                format!("group_capacity must be between 1 and {MAX_CAPACITY}"),
            );
        }

        let mut policing = PolicingConfig::default();
        if let Some(section) = &file.policing {
            let span = section.span();
            let p = section.get_ref();
            policing.share = p.share.unwrap_or(policing.share);
            policing.burst_ms = p.burst_ms.unwrap_or(policing.burst_ms);
            policing.ecn_mark_ms = p
                .ecn_mark_ms
                .unwrap_or(policing.ecn_mark_ms.min(policing.burst_ms));
            policing.ecn = p.ecn.unwrap_or(policing.ecn);
            if !(policing.share > 0.0 && policing.share <= 1.0) {
                problem(
                    span.clone(),
                    "[policing]: share must be in (0, 1] (0.75 for a dual-active pair, 1.0 alone)"
                        .to_owned(),
                );
            }
            if !(policing.burst_ms > 0.0 && policing.burst_ms <= 10_000.0) {
                problem(
                    span.clone(),
                    "[policing]: burst_ms must be in (0, 10000]".to_owned(),
                );
            }
            if !(policing.ecn_mark_ms >= 0.0 && policing.ecn_mark_ms <= policing.burst_ms) {
                problem(
                    span,
                    "[policing]: ecn_mark_ms must be between 0 and burst_ms".to_owned(),
                );
            }
        }

        let mut seen_group: HashMap<String, Range<usize>> = HashMap::new();
        for g in &file.groups {
            let name = g.name.get_ref();
            if !valid_group_name(name) {
                problem(
                    g.name.span(),
                    "group name must match [A-Za-z0-9_.-]{1,64}".to_owned(),
                );
            } else if let Some(first) = seen_group.get(name) {
                let (l, _) = line_col(text, first.start);
                problem(
                    g.name.span(),
                    format!("group `{name}` is defined twice (first on line {l})"),
                );
            } else {
                seen_group.insert(name.clone(), g.name.span());
            }
            for bw in [
                Some(&g.bandwidth_mbps),
                g.inbound_mbps.as_ref(),
                g.outbound_mbps.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                if *bw.get_ref() == 0 {
                    problem(
                        bw.span(),
                        "a bandwidth must be at least 1 Mbit/s".to_owned(),
                    );
                }
            }
        }
        if file.groups.len() > group_capacity as usize {
            problems_push_global(
                &mut problem,
                &format!(
                    "{} groups do not fit in dataplane.group_capacity {group_capacity}",
                    file.groups.len()
                ),
            );
        }

        let mut seen_eip: HashMap<IpAddr, Range<usize>> = HashMap::new();
        for eip in &file.eips {
            let addr = normalize(*eip.address.get_ref());
            if let Some(first) = seen_eip.get(&addr) {
                let (l, _) = line_col(text, first.start);
                problem(
                    eip.address.span(),
                    format!("EIP {addr} is listed twice (first on line {l})"),
                );
            } else if !is_assignable(addr) {
                problem(
                    eip.address.span(),
                    format!(
                        "{addr} cannot be an EIP (unspecified, loopback, multicast or broadcast)"
                    ),
                );
            } else {
                seen_eip.insert(addr, eip.address.span());
            }
            for bw in [&eip.bandwidth_mbps, &eip.inbound_mbps, &eip.outbound_mbps]
                .into_iter()
                .flatten()
            {
                if *bw.get_ref() == 0 {
                    problem(
                        bw.span(),
                        "a bandwidth must be at least 1 Mbit/s".to_owned(),
                    );
                }
            }
            if let Some(group) = &eip.group {
                if !seen_group.contains_key(group.get_ref()) {
                    problem(
                        group.span(),
                        format!("group `{}` is not defined by a [[group]]", group.get_ref()),
                    );
                }
                if let Some(bw) = [&eip.bandwidth_mbps, &eip.inbound_mbps, &eip.outbound_mbps]
                    .into_iter()
                    .flatten()
                    .next()
                {
                    problem(
                        bw.span(),
                        "an EIP in a group is capped by the group's bandwidth; remove its own"
                            .to_owned(),
                    );
                }
            }
        }
        if (1..=MAX_CAPACITY).contains(&capacity) && file.eips.len() > capacity as usize {
            problems_push_global(
                &mut problem,
                &format!("{} EIPs do not fit in capacity {capacity}", file.eips.len()),
            );
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            dataplane: DataplaneConfig {
                interfaces: d.interfaces.into_iter().map(|i| i.into_inner()).collect(),
                capacity,
                bpffs_root,
                instance,
                on_exit,
                attach_mode,
                group_capacity,
            },
            sampler,
            policing,
            groups: file
                .groups
                .into_iter()
                .map(|g| GroupConfig {
                    name: g.name.into_inner(),
                    bandwidth_mbps: g.bandwidth_mbps.into_inner(),
                    inbound_mbps: g.inbound_mbps.map(Spanned::into_inner),
                    outbound_mbps: g.outbound_mbps.map(Spanned::into_inner),
                })
                .collect(),
            eips: file
                .eips
                .into_iter()
                .map(|e| EipConfig {
                    address: normalize(e.address.into_inner()),
                    bandwidth_mbps: e.bandwidth_mbps.map(Spanned::into_inner),
                    inbound_mbps: e.inbound_mbps.map(Spanned::into_inner),
                    outbound_mbps: e.outbound_mbps.map(Spanned::into_inner),
                    group: e.group.map(Spanned::into_inner),
                    state: e.state.unwrap_or_default(),
                })
                .collect(),
        })
    }
}

fn problems_push_global(problem: &mut impl FnMut(Range<usize>, String), message: &str) {
    // Problems about the file as a whole point at its start.
    problem(0..0, message.to_owned());
}

fn is_assignable(addr: IpAddr) -> bool {
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || matches!(addr, IpAddr::V4(v4) if v4.is_broadcast()))
}

fn valid_group_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn valid_instance(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
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
        let p = problems(
            "[dataplane]\ninterfaces = [\"eth0\"]\n[[eip]]\naddress = \"203.0.113.300\"\n",
        );
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
        let text = include_str!("../../deploy/eip-meter.toml");
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
}
