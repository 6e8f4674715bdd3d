//! Which intervals were metered on every uplink: the gaps during which an uplink was without
//! our programs, kept until the rounds they touch are committed. Pure; the daemon feeds it
//! the data plane's uplink events and asks it about each round.

use std::collections::BTreeMap;

use super::round::Coverage;
use crate::store::GapRecord;

/// Gaps in metering, per uplink: `[from, to)` in UNIX seconds, `to` = `None` while open.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Gaps {
    closed: Vec<(f64, f64)>,
    open: BTreeMap<String, f64>,
}

impl Gaps {
    /// The gaps recorded in the store (oldest first), as a restart finds them.
    pub fn from_records(records: &[GapRecord]) -> Self {
        let mut gaps = Self::default();
        for r in records {
            match r.to {
                Some(to) => gaps.closed(&r.uplink, r.from, to),
                None => gaps.opened(&r.uplink, r.from),
            }
        }
        gaps
    }

    /// `uplink` is not metered from `from` on.
    pub fn opened(&mut self, uplink: &str, from: f64) {
        let start = self.open.entry(uplink.to_owned()).or_insert(from);
        *start = start.min(from);
    }

    /// `uplink` was not metered during `[from, to)` and is again from `to`. Closes its open
    /// gap, whose start is the earlier of the two.
    pub fn closed(&mut self, uplink: &str, from: f64, to: f64) {
        let from = self.open.remove(uplink).map_or(from, |open| open.min(from));
        if to > from {
            self.closed.push((from, to));
        }
    }

    /// Whether the interval `[start, end)` was metered on every uplink.
    pub fn coverage(&self, start: i64, end: i64) -> Coverage {
        let (start, end) = (start as f64, end as f64);
        let touched = self
            .closed
            .iter()
            .any(|&(from, to)| from < end && to > start)
            || self.open.values().any(|&from| from < end);
        if touched {
            Coverage::Incomplete
        } else {
            Coverage::Complete
        }
    }

    /// Forgets closed gaps that end before `t` (their rounds are committed).
    pub fn forget_before(&mut self, t: i64) {
        self.closed.retain(|&(_, to)| to > t as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_marks_every_interval_it_touches_and_no_other() {
        let mut gaps = Gaps::default();
        gaps.opened("up0", 1_010.0);
        gaps.closed("up0", 1_010.0, 1_305.5);
        assert_eq!(gaps.coverage(700, 1_000), Coverage::Complete);
        assert_eq!(gaps.coverage(1_000, 1_300), Coverage::Incomplete);
        assert_eq!(gaps.coverage(1_300, 1_600), Coverage::Incomplete);
        assert_eq!(gaps.coverage(1_600, 1_900), Coverage::Complete);
    }

    #[test]
    fn intervals_are_half_open() {
        let mut gaps = Gaps::default();
        gaps.closed("up0", 1_300.0, 1_600.0);
        assert_eq!(
            gaps.coverage(1_000, 1_300),
            Coverage::Complete,
            "ends where the gap starts"
        );
        assert_eq!(
            gaps.coverage(1_600, 1_900),
            Coverage::Complete,
            "starts where it ends"
        );
        assert_eq!(gaps.coverage(1_300, 1_600), Coverage::Incomplete);
    }

    #[test]
    fn an_open_gap_touches_everything_after_its_start() {
        let mut gaps = Gaps::default();
        gaps.opened("up1", 5_000.0);
        assert_eq!(gaps.coverage(4_700, 5_000), Coverage::Complete);
        assert_eq!(gaps.coverage(5_000, 5_300), Coverage::Incomplete);
        assert_eq!(gaps.coverage(90_000, 90_300), Coverage::Incomplete);
        gaps.closed("up1", 5_200.0, 5_250.0);
        assert_eq!(gaps.coverage(5_300, 5_600), Coverage::Complete);
        assert_eq!(
            gaps.coverage(4_700, 5_000),
            Coverage::Complete,
            "closed from the open gap's start"
        );
        assert_eq!(gaps.coverage(5_000, 5_300), Coverage::Incomplete);
    }

    #[test]
    fn forgetting_keeps_gaps_that_reach_later_rounds() {
        let mut gaps = Gaps::default();
        gaps.closed("up0", 100.0, 200.0);
        gaps.closed("up0", 250.0, 400.0);
        gaps.forget_before(300);
        assert_eq!(gaps.coverage(0, 210), Coverage::Complete);
        assert_eq!(gaps.coverage(300, 600), Coverage::Incomplete);
    }
}
