//! What leaves the host for people and scrapers.
//!
//! * [`state`]: the [`Published`] figures the daemon replaces after every round and reload.
//! * [`aggregates`]: the aggregate metric families (a `prometheus` crate collector).
//! * [`series`]: the per-EIP and per-shared-bandwidth families, streamed as text.
//! * [`tally`]: what the daemon accumulates between rounds for the metrics (pure).
//! * [`server`]: `/metrics` over HTTP.
//! * [`counters`]: `eip-meter counters` tables and JSON.
//! * [`report`]: `eip-meter report`, the figures of a day or month per EIP and group.
//! * [`plot`]: `eip-meter plot`, an EIP's samples and figures as an SVG chart.

pub mod aggregates;
pub mod counters;
pub mod plot;
pub mod report;
pub mod series;
pub mod server;
pub mod state;
pub mod tally;

pub use state::{MetricsHandle, Published, SeriesRow};
