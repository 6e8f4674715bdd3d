//! Sampling: at every interval boundary, every EIP's counters become samples that feed its
//! billing series and are committed to the store, marked `partial` when an uplink was not
//! metered for part of the interval.
//!
//! * [`round`]: the per-round orchestration ([`Sampler`]).
//! * [`coverage`]: the metering gaps of the uplinks, and which intervals they touched (pure).

pub mod coverage;
pub mod round;

pub use coverage::Gaps;
pub use round::{Coverage, RoundReport, Sampler};
