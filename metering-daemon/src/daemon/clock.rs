//! The wall clock as the sampling loop sees it: which boundary is due now, and whether the
//! clock stepped since the last round (NTP stepping a clock that was far off, an operator's
//! `date -s`, a virtual machine resumed).
//!
//! Samples are labelled with wall-clock intervals, but the kernel counts in real time. The
//! monotonic clock tells how much real time a reading covers, so a step is never billed as
//! traffic:
//!
//! * **backwards**: the intervals up to the last committed round are written already; no round
//!   runs until the wall clock passes it again (the kernel keeps counting, and the first round
//!   after covers the wait). Logged once per episode.
//! * **forwards**: the intervals the clock skipped saw no real time; the reading is spread over
//!   the real time elapsed only, and the skipped intervals stay missing.
//!
//! Either way, the first round after a step covers a different span of real time than its
//! interval, so its samples are `partial`.

use std::time::Instant;

use tracing::{info, warn};

use crate::billing::calendar::Calendar;

/// Wall and monotonic elapsed times may differ by this much between two rounds before it
/// counts as a step (NTP slews at most 500 ppm: 0.15 s over 5 minutes).
const STEP_TOLERANCE_SECONDS: f64 = 1.0;

/// What the loop should do when woken for a boundary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Due {
    /// Nothing: the wall clock has not passed the next boundary after the last round (woken a
    /// moment early, or the clock is behind the last round).
    Wait,
    /// Sample at `boundary`.
    Round {
        boundary: i64,
        /// Seconds the wall clock moved more (or, negative, less) than real time since the
        /// last round, when it stepped.
        stepped_seconds: Option<f64>,
        /// The most intervals the reading may be spread over.
        max_intervals: u64,
    },
}

/// Follows the wall clock against the monotonic clock across rounds.
#[derive(Debug, Default)]
pub struct ClockWatch {
    /// Wall seconds and monotonic instant of the last round that stood.
    last_round: Option<(f64, Instant)>,
    /// While the wall clock is behind the last committed round: the round's boundary.
    behind: Option<i64>,
}

impl ClockWatch {
    /// The round due at wall time `wall` (monotonic `mono`), given the last round that stood
    /// (`last_boundary`). When the real time elapsed is unknown (the first round of a process),
    /// a reading may be spread over `default_spread` intervals (the sampler's).
    pub fn due(
        &mut self,
        wall: f64,
        mono: Instant,
        last_boundary: Option<i64>,
        calendar: &Calendar,
        default_spread: u64,
    ) -> Due {
        let step = i64::from(calendar.interval());
        let boundary = calendar.interval_start(wall.floor() as i64);
        if let Some(last) = last_boundary
            && boundary <= last
        {
            // More than a moment early: the clock went back.
            if last as f64 - wall > STEP_TOLERANCE_SECONDS && self.behind.is_none() {
                warn!(
                    last_round = last,
                    behind_seconds = (last as f64 - wall).round() as i64,
                    "the wall clock is behind the last committed round (stepped back?): no round until it passes it; the kernel keeps counting and the first round after covers the wait as partial samples"
                );
                self.behind = Some(last);
            }
            return Due::Wait;
        }
        if let Some(last) = self.behind.take() {
            info!(
                last_round = last,
                boundary, "the wall clock passed the last committed round: sampling resumes"
            );
        }
        let (stepped_seconds, max_intervals) = match self.last_round {
            None => (None, default_spread),
            Some((last_wall, last_mono)) => {
                let real = mono.saturating_duration_since(last_mono).as_secs_f64();
                let drift = (wall - last_wall) - real;
                if drift.abs() > STEP_TOLERANCE_SECONDS {
                    // Only the real time's intervals get the reading's bytes.
                    let intervals = (real / step as f64).ceil().max(1.0) as u64;
                    (Some(drift), intervals.min(default_spread))
                } else {
                    (None, default_spread)
                }
            }
        };
        Due::Round {
            boundary,
            stepped_seconds,
            max_intervals,
        }
    }

    /// The round due at `wall`/`mono` stood (committed, or waiting for the store): the next
    /// step is measured from it.
    pub fn round_stood(&mut self, wall: f64, mono: Instant) {
        self.last_round = Some((wall, mono));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const STEP: i64 = 300;
    const DAY: u64 = 288;

    fn cal() -> Calendar {
        Calendar::new("UTC", 300).unwrap()
    }
    const T0: i64 = 1_795_000_200; // a boundary

    fn round(due: Due) -> (i64, Option<f64>, u64) {
        match due {
            Due::Round {
                boundary,
                stepped_seconds,
                max_intervals,
            } => (boundary, stepped_seconds, max_intervals),
            Due::Wait => panic!("expected a round"),
        }
    }

    #[test]
    fn a_steady_clock_gives_every_boundary_unstepped() {
        let mut c = ClockWatch::default();
        let m0 = Instant::now();
        assert_eq!(
            round(c.due(T0 as f64 + 0.01, m0, None, &cal(), DAY)),
            (T0, None, DAY)
        );
        c.round_stood(T0 as f64 + 0.01, m0);
        // Woken late by 2 s: both clocks agree, so no step.
        let m1 = m0 + Duration::from_secs_f64(302.0);
        let r = round(c.due(T0 as f64 + 302.01, m1, Some(T0), &cal(), DAY));
        assert_eq!(r, (T0 + STEP, None, DAY));
        // Woken a moment early (the wall clock slewed): wait.
        assert_eq!(
            c.due((T0 + STEP) as f64 - 0.2, m1, Some(T0), &cal(), DAY),
            Due::Wait
        );
    }

    #[test]
    fn a_clock_stepped_back_waits_for_the_last_round_then_marks_the_next() {
        let mut c = ClockWatch::default();
        let m0 = Instant::now();
        c.round_stood(T0 as f64, m0);
        // An hour back: nothing is due for an hour of wall time.
        let m1 = m0 + Duration::from_secs(300);
        assert_eq!(
            c.due((T0 - 3300) as f64, m1, Some(T0), &cal(), DAY),
            Due::Wait
        );
        assert_eq!(c.behind, Some(T0));
        // The clock passed it: the round covers 65 real minutes, so it is marked.
        let m2 = m0 + Duration::from_secs(3900);
        let (boundary, stepped, spread) =
            round(c.due((T0 + STEP) as f64, m2, Some(T0), &cal(), DAY));
        assert_eq!(boundary, T0 + STEP);
        assert!((stepped.unwrap() + 3600.0).abs() < 0.01, "{stepped:?}");
        assert_eq!(spread, 13);
        assert_eq!(c.behind, None);
    }

    #[test]
    fn a_clock_stepped_forward_spreads_over_the_real_time_only() {
        let mut c = ClockWatch::default();
        let m0 = Instant::now();
        c.round_stood(T0 as f64, m0);
        // A year ahead after 5 real minutes: one interval gets the reading.
        let year = 365 * 86_400;
        let m1 = m0 + Duration::from_secs(300);
        let (boundary, stepped, spread) =
            round(c.due((T0 + year + 300) as f64 + 0.5, m1, Some(T0), &cal(), DAY));
        assert_eq!(boundary, T0 + year + 300);
        assert!((stepped.unwrap() - year as f64 - 0.5).abs() < 0.01);
        assert_eq!(spread, 1);
    }

    #[test]
    fn after_a_restart_the_spread_is_the_default() {
        let mut c = ClockWatch::default();
        let (_, stepped, spread) = round(c.due(
            (T0 + 10 * STEP) as f64,
            Instant::now(),
            Some(T0),
            &cal(),
            DAY,
        ));
        assert_eq!((stepped, spread), (None, DAY));
    }
}
