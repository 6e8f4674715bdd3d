//! The configuration file as written: every field spanned so a problem can name its line,
//! unknown keys refused so a typo never silently means "default".

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{AttachMode, EipState, OnExit};
use crate::billing::{GbUnit, SampleRule};

/// The configuration file. Unknown fields are errors, so a typo never silently means "default".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub dataplane: DataplaneSection,
    #[serde(default)]
    pub sampler: Option<Spanned<SamplerSection>>,
    #[serde(default)]
    pub policing: Option<Spanned<PolicingSection>>,
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    #[serde(default)]
    pub billing_store: Option<Spanned<BillingStoreSection>>,
    #[serde(default)]
    pub api: Option<Spanned<ApiSection>>,
    #[serde(default)]
    pub lifecycle: Option<Spanned<LifecycleSection>>,
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
    /// As an `[[eip]]`'s.
    pub plan: Option<Spanned<String>>,
    pub plan_start: Option<Spanned<String>>,
    pub plan_months: Option<Spanned<u32>>,
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
    /// "monthly", "hourly", "traffic", "enhanced95" or "p95".
    pub plan: Option<Spanned<String>>,
    /// A monthly package's purchase time, RFC 3339 with an offset.
    pub plan_start: Option<Spanned<String>>,
    /// A monthly package's length: 1-9, 12, 24 or 36 months.
    pub plan_months: Option<Spanned<u32>>,
}

/// `[metrics]`; every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Default true.
    pub enabled: Option<bool>,
    /// `address:port` (default `127.0.0.1:10317`).
    pub listen: Option<Spanned<String>>,
    /// Default true.
    pub per_eip: Option<bool>,
}

/// `[billing_store]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingStoreSection {
    /// libpq URL or key/value string, without a password (required).
    pub url: Spanned<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// PEM CA file for TLS.
    pub ca_file: Option<PathBuf>,
    /// Days shipped rounds stay local (default 35, at least 2).
    pub local_retention_days: Option<u32>,
}

/// `[api]`; every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Default true.
    pub enabled: Option<bool>,
    /// Absolute path of the unix socket (default `/run/eip-meter/<instance>.sock`).
    pub socket: Option<PathBuf>,
    /// Group owning the socket (mode 0660), whose members may use the API; default root's.
    pub group: Option<String>,
    /// `address:port` to also serve over TCP (TLS and a bearer token required).
    pub tcp_listen: Option<String>,
    /// PEM certificate chain and key of the TCP listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// File holding the bearer token TCP clients must send.
    pub token_file: Option<PathBuf>,
}

/// `[lifecycle]`; every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSection {
    /// Default 604800 (7 days).
    pub retention_seconds: Option<i64>,
    pub grace_seconds: Option<i64>,
    pub frozen_seconds: Option<i64>,
    /// `HH:MM:SS` (default "23:59:59").
    pub package_expiry_time: Option<String>,
}
