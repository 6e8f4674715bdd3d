//! One sampling round: repair the uplinks, read every counter, commit the samples, and publish
//! the round's figures.

use std::time::Instant;

use metering_common::DropCounters;
use tracing::{debug, error, info, warn};

use super::{Daemon, clock::Due, now_seconds, rfc3339};
use crate::{
    exposition::tally::RoundFacts,
    sampling::{Coverage, MAX_PENDING_ROUNDS},
};

impl Daemon {
    /// Woken for a boundary: the round the wall clock says is due, if any (see [`super::clock`]).
    pub(super) fn round_if_due(&mut self) {
        let (wall, mono) = (now_seconds(), Instant::now());
        let last = self.sampler.last_boundary();
        if let Due::Round {
            boundary,
            stepped_seconds,
            max_intervals,
        } = self.clock.due(
            wall,
            mono,
            last,
            &self.calendar,
            self.sampler.default_spread(),
        ) {
            self.round(boundary, stepped_seconds, max_intervals);
            if self.sampler.last_boundary() >= Some(boundary) {
                self.clock.round_stood(wall, mono);
            }
        }
    }

    /// The round at interval boundary `boundary`. When the wall clock stepped since the last
    /// round, its samples are `partial` and a reading is spread over at most `max_intervals`.
    fn round(&mut self, boundary: i64, stepped_seconds: Option<f64>, max_intervals: u64) {
        // Repair first: a round must not start with an uplink silently bare.
        self.check_uplinks();
        let step = i64::from(self.calendar.interval());
        let started = Instant::now();
        let readings = match self.dataplane.read_counters() {
            Ok(r) => r,
            Err(e) => {
                // The kernel kept the counts: the next round's delta covers this one.
                error!(boundary, error = %e, "cannot read counters; sampling at the next boundary");
                self.tally.round_failed();
                self.publish();
                return;
            }
        };
        // Drops and non-EIP traffic only feed the metrics: a failed read leaves them out of
        // this round, never the samples.
        let drops = self.dataplane.read_drops().unwrap_or_else(|e| {
            warn!(boundary, error = %e, "cannot read drop counters; drop metrics stand still this round");
            vec![DropCounters::default(); readings.len()]
        });
        let non_eip = self.dataplane.read_non_eip().unwrap_or_else(|e| {
            warn!(boundary, error = %e, "cannot read non-EIP counters");
            Default::default()
        });
        let read_seconds = started.elapsed().as_secs_f64();
        let mut coverage = self.uplinks.gaps.coverage(boundary - step, boundary);
        if let Some(seconds) = stepped_seconds {
            warn!(
                boundary,
                stepped_seconds = seconds.round() as i64,
                spread_intervals = max_intervals,
                "the wall clock stepped since the last round: this round's samples are marked partial, spread over the real time elapsed only (intervals the clock skipped stay missing)"
            );
            coverage = Coverage::Incomplete;
        }
        match self
            .sampler
            .round_spread(boundary, &readings, coverage, max_intervals)
        {
            Ok(r) => {
                if let Some((since, _)) = self.store_refusing.take() {
                    info!(
                        since,
                        boundary,
                        "the store takes writes again; the rounds kept in memory are committed"
                    );
                }
                self.uplinks.gaps.forget_before(boundary);
                if coverage == Coverage::Incomplete && stepped_seconds.is_none() {
                    warn!(boundary, interval_start = %rfc3339((boundary - step) as f64), samples = r.samples, "an uplink was not metered for part of this interval; its samples are marked partial");
                }
                let expose_started = Instant::now();
                let store = self.sampler.store();
                let facts = RoundFacts {
                    boundary,
                    readings: &readings,
                    drops: &drops,
                    non_eip,
                    samples: r.samples,
                    partial_samples: r.partial_samples,
                    counter_resets: r.counter_resets,
                    read_seconds,
                    compute_seconds: r.compute_seconds,
                    commit_seconds: r.commit_seconds,
                    commit_bytes: store.last_commit_bytes(),
                    store_bytes: store.disk_bytes().unwrap_or_else(|e| {
                        warn!(error = %e, "store size unknown");
                        0
                    }),
                    slots_used: (self.dataplane.slots().len(), self.dataplane.group_slots().0),
                };
                self.tally.round_committed(&facts, &self.sampler);
                if let Some((wake, _)) = &self.shipping {
                    wake.notify_one();
                }
                let expose_seconds = expose_started.elapsed().as_secs_f64();
                self.tally.exposed_in(expose_seconds);
                info!(
                    boundary,
                    eips = readings.len(),
                    samples = r.samples,
                    partial_samples = r.partial_samples,
                    closed_days = r.closed_days,
                    closed_months = r.closed_months,
                    read_ms = (read_seconds * 1e3) as u64,
                    compute_ms = (r.compute_seconds * 1e3) as u64,
                    commit_ms = (r.commit_seconds * 1e3) as u64,
                    expose_ms = (expose_seconds * 1e3) as u64,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sampled"
                );
            }
            // Nothing of the round reached the store. Up to MAX_PENDING_ROUNDS rounds wait in
            // memory and are committed first when it takes writes again; past that, rounds are
            // skipped and the first round after the recovery covers them with one delta.
            Err(e) => {
                let waiting = self.sampler.pending_commits();
                let skipping = waiting >= MAX_PENDING_ROUNDS;
                match self.store_refusing {
                    None => {
                        error!(boundary, waiting, limit = MAX_PENDING_ROUNDS, error = %e, "sampling round not committed: the store refuses writes; rounds are kept in memory and retried every round (the kernel keeps counting)");
                    }
                    Some((since, false)) if skipping => {
                        error!(since, boundary, error = %e, "the store still refuses writes: further rounds are skipped until it recovers; the first round after that covers them as partial samples");
                    }
                    Some((since, _)) => {
                        debug!(since, boundary, waiting, error = %e, "the store still refuses writes");
                    }
                }
                let since = self.store_refusing.map_or(boundary, |(since, _)| since);
                self.store_refusing = Some((since, skipping));
                self.tally.round_failed();
            }
        }
        self.uplinks.write_status(self.dataplane.uplink_status());
        self.publish();
    }
}
