//! Billing figures from 5-minute samples. Pure: no I/O, no clock reads; integer arithmetic
//! wherever the product rules truncate.
//!
//! * [`rules`]: the rules of the product documents, written the naive way (sort everything).
//!   They are the reference the streaming code is tested against, and the source of truth.
//! * [`topk`]: bounded "k largest values" sets.
//! * [`calendar`]: days and months in the billing time zone, interval alignment.
//! * [`bandwidth`]: a series' bandwidth history (daily largest bandwidth, baseline).
//! * [`series`]: the streaming per-EIP accumulators (bounded memory) that produce
//!   [`series::DayFigures`] and [`series::MonthFigures`].
//! * [`samples`]: counter readings -> interval samples (resets, outages spread).
//! * [`fleet`]: one subject's samples from several hosts' sparse rows, rounds and presence.
//! * [`replay`]: `eip-meter compute`: CSV samples in, JSON figures out.
//!
//! Units: bandwidth in bit/s (`_bps`) or Mbit/s = 10^6 bit/s (`_mbps`); bytes are IP-layer bytes.

pub mod bandwidth;
pub mod calendar;
pub mod fleet;
pub mod plans;
pub mod replay;
pub mod rules;
pub mod samples;
pub mod series;
pub mod topk;

use serde::{Deserialize, Serialize};

/// Bits per second in one Mbit/s (decimal, as bandwidth is sold).
pub const BPS_PER_MBPS: u64 = 1_000_000;

/// How the billing sample of an interval is derived from its inbound and outbound averages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SampleRule {
    /// The larger of inbound and outbound (the enhanced-95 rule).
    #[default]
    Max,
    Inbound,
    Outbound,
}

/// The unit of "GB" in daily outbound traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GbUnit {
    /// 10^9 bytes.
    #[default]
    Decimal,
    /// 2^30 bytes (GiB).
    Binary,
}

impl GbUnit {
    pub const fn bytes(self) -> u64 {
        match self {
            GbUnit::Decimal => 1_000_000_000,
            GbUnit::Binary => 1 << 30,
        }
    }
}

/// Whether a sample was measured over its whole interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SampleState {
    /// Counter deltas over exactly this interval.
    #[default]
    Measured,
    /// Estimated: part of a delta that spanned several intervals (after an outage) or started
    /// at a counter reset.
    Partial,
}

/// Average bit/s over an interval: `floor(bytes x 8 / seconds)`, saturating.
pub fn average_bps(bytes: u64, interval_seconds: u32) -> u64 {
    let bps = u128::from(bytes) * 8 / u128::from(interval_seconds.max(1));
    u64::try_from(bps).unwrap_or(u64::MAX)
}

/// The billing sample of an interval.
pub fn billing_bps(rule: SampleRule, inbound_bps: u64, outbound_bps: u64) -> u64 {
    match rule {
        SampleRule::Max => inbound_bps.max(outbound_bps),
        SampleRule::Inbound => inbound_bps,
        SampleRule::Outbound => outbound_bps,
    }
}
