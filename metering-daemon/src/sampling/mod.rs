//! Sampling: at every interval boundary, every EIP's counters become samples that feed its
//! billing series and are committed to the store, marked `partial` when an uplink was not
//! metered for part of the interval.
//!
//! * [`round`]: the per-round orchestration ([`Sampler`]).
//! * [`groups`]: shared bandwidths' series from their members' samples summed per interval.
//! * [`pending`]: commits the store refused, kept in order until it takes writes again.
//! * [`coverage`]: the metering gaps of the uplinks, and which intervals they touched (pure).

pub mod coverage;
pub mod groups;
mod pending;
pub mod round;

pub use coverage::Gaps;
pub use groups::{GroupView, Groups};
pub use pending::MAX_PENDING_ROUNDS;
pub use round::{Coverage, EipView, RoundReport, Sampler};
