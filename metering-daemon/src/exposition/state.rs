//! What `/metrics` shows, as one immutable value ([`Published`]) that the daemon replaces
//! after every round, reload and uplink change. A scrape reads whichever value is current, so
//! it never sees half of a round or of a reload, and never touches the BPF maps.

use std::sync::{Arc, RwLock};

use crate::dataplane::UplinkStatus;

/// Bytes and packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes: u64,
    pub packets: u64,
}

impl Totals {
    pub fn add(&mut self, bytes: u64, packets: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.packets = self.packets.saturating_add(packets);
    }
}

/// Index of a direction in the `[_; 2]` arrays below.
pub const INBOUND: usize = 0;
pub const OUTBOUND: usize = 1;
pub const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];
/// Index of a drop reason.
pub const RATE_LIMITED: usize = 0;
pub const BLOCKED: usize = 1;
pub const DROP_REASONS: [&str; 2] = ["rate_limited", "blocked"];

/// The last committed round.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LastRound {
    /// UNIX seconds: start of the interval the round closed.
    pub interval_start: i64,
    /// Seconds: the whole round, and its phases.
    pub duration: f64,
    pub read: f64,
    pub compute: f64,
    pub commit: f64,
    /// Building this exposition's figures after the commit.
    pub expose: f64,
    /// Bytes the round's commit wrote.
    pub commit_bytes: u64,
}

/// Quantiles of a distribution, with the count and sum of what was observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quantiles {
    /// `(quantile, value)`.
    pub quantiles: Vec<(f64, f64)>,
    pub count: u64,
    pub sum: f64,
}

/// A cumulative histogram: `(upper bound, observations <= it)`, then `+Inf` = `count`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    pub cumulative: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

/// One EIP's or shared bandwidth's per-series figures (only with `metrics.per_eip`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeriesRow {
    /// The EIP address or the group name, as the label value.
    pub label: Box<str>,
    /// Delivered bytes by direction (kernel counters; a group's: its members' sum).
    pub bytes: [u64; 2],
    /// Dropped bytes by direction (rate limited + blocked).
    pub dropped_bytes: [u64; 2],
    /// The open day's enhanced-95 peak so far, in Mbit/s (truncated, as the rule says).
    pub day_peak_mbps: Option<u64>,
    /// The open day's outbound bytes from the samples.
    pub day_outbound_bytes: Option<u64>,
    /// The open month's average of the top daily peaks, Mbit/s.
    pub month_average_peak_mbps: Option<u64>,
    /// The open month's billed peak: max(baseline, average peak), Mbit/s (with a bandwidth).
    pub month_billed_peak_mbps: Option<u64>,
    /// The open month's classic 95th percentile, bit/s.
    pub month_p95_bps: Option<u64>,
}

/// Everything `/metrics` shows.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub interval_seconds: u32,
    /// Delivered traffic over all EIPs (those removed since the daemon started included), by
    /// direction.
    pub traffic: [Totals; 2],
    pub non_eip: [Totals; 2],
    /// `[direction][reason]`.
    pub dropped: [[Totals; 2]; 2],
    pub ecn_marked: [Totals; 2],
    /// `(state, EIPs)` for active, expired, arrears, frozen.
    pub eips_by_state: Vec<(&'static str, u64)>,
    pub eip_slots_used: u64,
    pub eip_slots_capacity: u64,
    pub group_slots_used: u64,
    pub group_slots_capacity: u64,
    pub rounds_committed: u64,
    pub rounds_failed: u64,
    pub samples_measured: u64,
    pub samples_partial: u64,
    pub missed_intervals: u64,
    pub counter_resets: u64,
    pub store_errors: u64,
    pub store_bytes: u64,
    pub last_round: Option<LastRound>,
    pub round_durations: Quantiles,
    /// `applied`, `rejected` (invalid file), `failed` (valid, but applying it failed).
    pub reloads: [u64; 3],
    pub uplinks: Vec<UplinkStatus>,
    /// Capped EIPs' and groups' rate over their cap on this router, one observation each per
    /// round.
    pub utilization: Buckets,
    /// Every EIP's billing-sample rate in the last round, bytes/s.
    pub eip_rates: Quantiles,
    pub eips: Arc<Vec<SeriesRow>>,
    pub groups: Arc<Vec<SeriesRow>>,
    /// Whether per-series families are exposed (`metrics.per_eip`).
    pub per_eip: bool,
    /// Shipping to the billing store, when one is configured.
    pub shipping: Option<SharedShipping>,
}

/// Where shipping to the billing store stands: kept by the shipper, read by scrapes as they
/// come (it changes between rounds), and written to the state directory for `report`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shipping {
    /// The daemon that wrote it, and when (UNIX seconds).
    pub pid: u32,
    pub updated_at: i64,
    pub connected: bool,
    /// The last local commit the billing store holds, and its round's boundary.
    pub shipped_seq: i64,
    pub shipped_boundary: i64,
    /// Committed rounds not shipped yet, and the boundary of the oldest.
    pub unshipped_rounds: u64,
    pub oldest_unshipped: Option<i64>,
    pub rounds_total: u64,
    pub rows_total: u64,
    pub errors_total: u64,
    pub conflicts_total: u64,
    pub last_error: Option<String>,
    pub last_batch_seconds: f64,
    /// When the billing store last acknowledged a batch (UNIX seconds).
    pub last_shipped_at: Option<i64>,
}

/// [`Shipping`] shared by the shipper (writer) and the scrapes.
pub type SharedShipping = Arc<std::sync::Mutex<Shipping>>;

/// Where the current [`Published`] lives, shared by the daemon (writer) and the scrapes.
#[derive(Clone, Default)]
pub struct MetricsHandle(Arc<RwLock<Arc<Published>>>);

impl MetricsHandle {
    pub fn publish(&self, state: Published) {
        *self.0.write().expect("metrics lock") = Arc::new(state);
    }

    pub fn current(&self) -> Arc<Published> {
        self.0.read().expect("metrics lock").clone()
    }
}
