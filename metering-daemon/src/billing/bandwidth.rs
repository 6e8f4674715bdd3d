//! A series' bandwidth history: what the daily largest bandwidth and the enhanced-95
//! baseline are taken from.

use serde::{Deserialize, Serialize};

/// Bandwidth changes of a series: `(effective_from, Mbit/s)`, sorted by time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandwidthHistory(Vec<(i64, u64)>);

impl BandwidthHistory {
    pub fn new(mut changes: Vec<(i64, u64)>) -> Self {
        changes.sort_by_key(|&(t, _)| t);
        Self(changes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records a change at `at` (ignored if the bandwidth is unchanged).
    pub fn push(&mut self, at: i64, mbps: u64) {
        if self.0.last().is_some_and(|&(_, v)| v == mbps) {
            return;
        }
        let i = self.0.partition_point(|&(t, _)| t <= at);
        self.0.insert(i, (at, mbps));
    }

    /// Drops changes that no longer matter from `t` on (keeps the one in effect at `t`).
    pub fn prune_before(&mut self, t: i64) {
        let in_effect = self.0.partition_point(|&(c, _)| c <= t);
        if in_effect > 1 {
            self.0.drain(..in_effect - 1);
        }
    }

    /// The largest bandwidth in effect at any moment of `[start, end)`; `None` if none was set.
    pub fn largest_in(&self, start: i64, end: i64) -> Option<u64> {
        let in_effect_at_start = self
            .0
            .iter()
            .rev()
            .find(|(t, _)| *t <= start)
            .map(|&(_, v)| v);
        let changed_during = self
            .0
            .iter()
            .filter(|(t, _)| *t > start && *t < end)
            .map(|&(_, v)| v);
        in_effect_at_start.into_iter().chain(changed_during).max()
    }
}
