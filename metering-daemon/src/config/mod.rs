//! The daemon's TOML configuration: parsing, validation with source locations, defaults.
//!
//! Two layers: [`ConfigFile`] mirrors the file (every field spanned so a problem can name its
//! line), and [`Config`] is the validated form the rest of the daemon uses. Tests and embedders
//! build a [`Config`] directly.
//!
//! | file          | job                                                                 |
//! |---------------|---------------------------------------------------------------------|
//! | `mod.rs`      | the validated configuration the daemon uses, with documented defaults |
//! | `file.rs`     | the file as written (serde, spans, unknown keys refused)             |
//! | `validate.rs` | file -> [`Config`], every problem with its line and column            |
//! | `host.rs`     | what validation asks of the host (interfaces, the metrics address)   |

mod file;
mod host;
pub mod permissions;
#[cfg(test)]
mod tests;
mod validate;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use metering_common::PIN_LAYOUT_VERSION;
use serde::Deserialize;

pub use file::{
    ApiSection, BillingStoreSection, ConfigFile, DataplaneSection, EipSection, GroupSection,
    LifecycleSection, MetricsSection, PolicingSection, SamplerSection,
};
pub use host::{AnyInterface, CurrentNetns, HostCheck};
pub use validate::{ConfigError, Problem};
pub(crate) use validate::{is_assignable, line_col, valid_group_name};

pub use crate::billing::plans::Plan;
use crate::billing::{
    GbUnit, SampleRule,
    calendar::{Calendar, DEFAULT_INTERVAL_SECONDS, DEFAULT_TIMEZONE},
};

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
    pub metrics: MetricsConfig,
    /// Where committed rounds are shipped (none: they stay local).
    pub billing_store: Option<BillingStoreConfig>,
    /// The admin API of the control plane.
    pub api: ApiConfig,
    /// Each EIP's lifecycle: retention, grace, the time packages expire.
    pub lifecycle: LifecycleConfig,
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
    /// How it is charged (`enhanced95` needs at least 300 Mbit/s).
    pub plan: Option<Plan>,
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
    /// How it is charged (its lifecycle follows: a monthly package expires).
    pub plan: Option<Plan>,
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
            plan: None,
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

/// Default address of `/metrics`: loopback only (never all addresses unless the config says
/// so). The port is outside 9100-9999, where every port is allocated to an exporter, and clear
/// of Kubernetes' 10248-10259.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 10317);

/// The Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all (default true).
    pub enabled: bool,
    /// Address of `/metrics` (default 127.0.0.1:10317).
    pub listen: SocketAddr,
    /// Per-EIP and per-shared-bandwidth series, about nine each (default true); off, only the
    /// aggregates are exposed, for Prometheus servers that cannot take a series per EIP.
    pub per_eip: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_METRICS_LISTEN,
            per_eip: true,
        }
    }
}

/// The environment variable a billing store password may come from.
pub const STORE_PASSWORD_ENV: &str = "EIP_METER_STORE_PASSWORD";
/// Default days a shipped round stays in the local store (a month's reports and plots).
pub const DEFAULT_LOCAL_RETENTION_DAYS: u32 = 35;

/// The shared PostgreSQL billing store every router ships its rounds to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingStoreConfig {
    /// A libpq URL or key/value string, without the password (`postgres://router_a@db/billing`,
    /// `host=/run/postgresql dbname=billing user=router_a`).
    pub url: String,
    /// File holding the password (else the environment variable `EIP_METER_STORE_PASSWORD`).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate (TLS: `sslmode=require`);
    /// without it, the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Days a round stays in the local store once shipped (default 35). Unshipped rounds are
    /// never removed.
    pub local_retention_days: u32,
}

/// Directory of the admin API's default socket.
pub const DEFAULT_API_DIR: &str = "/run/eip-meter";

/// The admin API: a unix socket (always, unless disabled) and optionally TCP with TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Serve the API at all (default true).
    pub enabled: bool,
    /// The unix socket (default `/run/eip-meter/<instance>.sock`), mode 0660.
    pub socket: PathBuf,
    /// Group owning the socket: its members may change the inventory (default: root's group).
    pub group: Option<String>,
    pub tcp: Option<ApiTcpConfig>,
}

impl ApiConfig {
    /// The default API of an instance.
    pub fn for_instance(instance: &str) -> Self {
        Self {
            enabled: true,
            socket: Path::new(DEFAULT_API_DIR).join(format!("{instance}.sock")),
            group: None,
            tcp: None,
        }
    }
}

/// The admin API over TCP: never without TLS and a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTcpConfig {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub token_file: PathBuf,
}

/// The lifecycle's periods (`[lifecycle]`); every field takes effect on reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// Seconds from service stopped (`expired`, `arrears`) to release (default 7 days).
    pub retention_seconds: i64,
    /// Enhanced 95th in arrears: seconds of service before `frozen` (default 7 days).
    pub grace_seconds: i64,
    /// Enhanced 95th `frozen`: seconds to release (default 7 days).
    pub frozen_seconds: i64,
    /// Local time of day a monthly package expires (default 23:59:59, the product's).
    pub package_expiry_time: chrono::NaiveTime,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        let week = 7 * 86_400;
        Self {
            retention_seconds: week,
            grace_seconds: week,
            frozen_seconds: week,
            package_expiry_time: crate::billing::plans::PACKAGE_EXPIRY_TIME,
        }
    }
}
