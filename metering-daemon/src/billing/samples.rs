//! From cumulative counters to interval samples: the pure heart of sampling.
//!
//! [`samples_since`] turns two readings of one EIP's counters into the samples of the
//! intervals between them, with counter-reset detection and with one large delta after an
//! outage spread over the intervals it covers (so bytes are conserved and no spike is invented).

use metering_common::TrafficCounters;
use serde::{Deserialize, Serialize};

use super::{SampleState, calendar::Calendar, series::Sample};

/// The cumulative counters of one EIP at an instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// UNIX seconds: the interval boundary the reading was taken for.
    pub at: i64,
    pub inbound_bytes: u64,
    pub outbound_bytes: u64,
}

impl Snapshot {
    pub fn of(at: i64, c: &TrafficCounters) -> Self {
        Self {
            at,
            inbound_bytes: c.inbound.bytes,
            outbound_bytes: c.outbound.bytes,
        }
    }
}

/// Samples covering `(prev.at, now.at]` in whole intervals.
///
/// * No previous reading (a new EIP, counting from zero since `first_seen`): the bytes belong to
///   the intervals from the one containing `first_seen` up to `now.at`; `Partial`.
/// * A counter went backwards (maps recreated, host rebooted): the counts since the reset are the
///   delta, `Partial`.
/// * One interval: `Measured`. Several (the daemon was down while the kernel kept counting):
///   the delta is spread evenly, the remainder on the last, all `Partial`.
///
/// The spread covers at most `max_intervals` (at least one), the last ones before `now.at`;
/// earlier intervals of a longer gap get no sample (they are missing). The caller knows how
/// much real time passed: a wall clock stepped forward by a year did not let a year of traffic
/// through, and a year of 5-minute samples per EIP would not fit in memory.
pub fn samples_since(
    prev: Option<Snapshot>,
    now: Snapshot,
    first_seen: i64,
    calendar: &Calendar,
    max_intervals: u64,
) -> Vec<Sample> {
    let step = i64::from(calendar.interval());
    if let Some(one) = prev.and_then(|p| next_interval(p, now, step)) {
        return vec![one];
    }
    let (from, inbound, outbound, mut state) = match prev {
        None => (
            calendar.interval_start(first_seen),
            now.inbound_bytes,
            now.outbound_bytes,
            SampleState::Partial,
        ),
        Some(p) if now.inbound_bytes < p.inbound_bytes || now.outbound_bytes < p.outbound_bytes => {
            (
                p.at,
                now.inbound_bytes,
                now.outbound_bytes,
                SampleState::Partial,
            )
        }
        Some(p) => (
            p.at,
            now.inbound_bytes - p.inbound_bytes,
            now.outbound_bytes - p.outbound_bytes,
            SampleState::Measured,
        ),
    };
    if now.at <= from {
        return Vec::new();
    }
    let gap = ((now.at - from) / step).max(1) as u64;
    let count = gap.min(max_intervals.max(1));
    if gap > 1 {
        state = SampleState::Partial;
    }
    (0..count)
        .map(|i| {
            let share = |total: u64| {
                let base = total / count;
                if i == count - 1 {
                    total - base * (count - 1)
                } else {
                    base
                }
            };
            Sample {
                start: now.at - (count - i) as i64 * step,
                inbound_bytes: share(inbound),
                outbound_bytes: share(outbound),
                state,
            }
        })
        .collect()
}

/// The common case of [`samples_since`] without allocating: the next reading one interval
/// after the last, with no counter reset, is one measured sample of the difference.
pub fn next_interval(prev: Snapshot, now: Snapshot, step: i64) -> Option<Sample> {
    (now.at - prev.at == step
        && now.inbound_bytes >= prev.inbound_bytes
        && now.outbound_bytes >= prev.outbound_bytes)
        .then(|| Sample {
            start: prev.at,
            inbound_bytes: now.inbound_bytes - prev.inbound_bytes,
            outbound_bytes: now.outbound_bytes - prev.outbound_bytes,
            state: SampleState::Measured,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_793_462_400; // 2026-11-01T00:00:00+08:00

    fn cal() -> Calendar {
        Calendar::new("Asia/Shanghai", 300).unwrap()
    }

    fn snap(at: i64, i: u64, o: u64) -> Snapshot {
        Snapshot {
            at,
            inbound_bytes: i,
            outbound_bytes: o,
        }
    }

    #[test]
    fn one_interval_is_a_measured_delta() {
        let s = samples_since(
            Some(snap(T0, 100, 50)),
            snap(T0 + 300, 250, 80),
            0,
            &cal(),
            u64::MAX,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(
            (
                s[0].start,
                s[0].inbound_bytes,
                s[0].outbound_bytes,
                s[0].state
            ),
            (T0, 150, 30, SampleState::Measured)
        );
    }

    #[test]
    fn unchanged_counter_is_a_zero_sample() {
        let s = samples_since(
            Some(snap(T0, 100, 50)),
            snap(T0 + 300, 100, 50),
            0,
            &cal(),
            u64::MAX,
        );
        assert_eq!(
            (s[0].inbound_bytes, s[0].outbound_bytes, s[0].state),
            (0, 0, SampleState::Measured)
        );
    }

    #[test]
    fn counter_reset_counts_from_zero_as_partial() {
        let s = samples_since(
            Some(snap(T0, 1_000_000, 50)),
            snap(T0 + 300, 700, 20),
            0,
            &cal(),
            u64::MAX,
        );
        assert_eq!(
            (s[0].inbound_bytes, s[0].outbound_bytes, s[0].state),
            (700, 20, SampleState::Partial)
        );
    }

    #[test]
    fn a_large_delta_after_an_outage_is_spread_and_conserved() {
        // Down for 4 intervals while the kernel counted 1001 bytes in.
        let s = samples_since(
            Some(snap(T0, 0, 0)),
            snap(T0 + 4 * 300, 1001, 8),
            0,
            &cal(),
            u64::MAX,
        );
        assert_eq!(s.len(), 4);
        assert_eq!(
            s.iter().map(|x| x.start).collect::<Vec<_>>(),
            vec![T0, T0 + 300, T0 + 600, T0 + 900]
        );
        assert_eq!(
            s.iter().map(|x| x.inbound_bytes).collect::<Vec<_>>(),
            vec![250, 250, 250, 251]
        );
        assert_eq!(s.iter().map(|x| x.outbound_bytes).sum::<u64>(), 8);
        assert!(s.iter().all(|x| x.state == SampleState::Partial));
    }

    #[test]
    fn a_spread_stops_at_its_limit_and_leaves_the_earlier_intervals_missing() {
        // The wall clock jumped 10 intervals ahead while one interval of real time passed.
        let s = samples_since(
            Some(snap(T0, 0, 0)),
            snap(T0 + 10 * 300, 901, 3),
            0,
            &cal(),
            2,
        );
        assert_eq!(
            s.iter().map(|x| x.start).collect::<Vec<_>>(),
            vec![T0 + 8 * 300, T0 + 9 * 300]
        );
        assert_eq!(s.iter().map(|x| x.inbound_bytes).sum::<u64>(), 901);
        assert_eq!(s.iter().map(|x| x.outbound_bytes).sum::<u64>(), 3);
        assert!(s.iter().all(|x| x.state == SampleState::Partial));
        // A limit of 0 still gives the bytes one interval.
        let one = samples_since(
            Some(snap(T0, 0, 0)),
            snap(T0 + 10 * 300, 901, 3),
            0,
            &cal(),
            0,
        );
        assert_eq!(
            (one.len(), one[0].start, one[0].inbound_bytes),
            (1, T0 + 9 * 300, 901)
        );
    }

    #[test]
    fn a_new_eip_starts_partial_from_its_first_interval() {
        // Added at 00:02; first round at 00:10: intervals 00:00 and 00:05.
        let s = samples_since(None, snap(T0 + 600, 10, 4), T0 + 120, &cal(), u64::MAX);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].start, T0);
        assert_eq!(s.iter().map(|x| x.inbound_bytes).sum::<u64>(), 10);
    }

    #[test]
    fn the_same_boundary_twice_gives_nothing() {
        assert!(
            samples_since(
                Some(snap(T0 + 300, 1, 1)),
                snap(T0 + 300, 5, 5),
                0,
                &cal(),
                u64::MAX
            )
            .is_empty()
        );
    }
}
