//! Turns cumulative kernel counters into interval samples, and samples into billing figures.
//!
//! [`samples_since`] is the pure heart: counter deltas between two readings, with counter-reset
//! detection and with one large delta after an outage spread over the intervals it covers (so
//! bytes are conserved and no spike is invented). [`Sampler`] keeps one [`Series`] per EIP and
//! commits every round to the [`Store`] in one transaction.

use std::{collections::HashMap, net::IpAddr};

use metering_common::TrafficCounters;
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::{
    billing::{
        SampleState,
        calendar::Calendar,
        series::{BandwidthHistory, Closed, Sample, Series, SeriesOptions},
    },
    store::{Store, StoreError},
};

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
pub fn samples_since(
    prev: Option<Snapshot>,
    now: Snapshot,
    first_seen: i64,
    calendar: &Calendar,
) -> Vec<Sample> {
    let step = i64::from(calendar.interval());
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
    let count = ((now.at - from) / step).max(1) as u64;
    if count > 1 {
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

/// Whether `eip`'s series is due for its daily checkpoint in the round at `boundary`.
fn checkpoint_turn(eip: &IpAddr, boundary: i64, calendar: &Calendar) -> bool {
    use std::hash::{Hash, Hasher};
    let per_day = u64::from(calendar.samples_per_day());
    // DefaultHasher::new() has fixed keys: the same EIP gets the same turn in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    eip.hash(&mut h);
    let round = (boundary / i64::from(calendar.interval())) as u64;
    h.finish() % per_day == round % per_day
}

/// What one round did.
#[derive(Debug, Default, PartialEq)]
pub struct RoundReport {
    pub samples: usize,
    pub closed_days: usize,
    pub closed_months: usize,
    /// Deltas and billing state, in seconds.
    pub compute_seconds: f64,
    /// Encoding and the store transaction, in seconds.
    pub commit_seconds: f64,
}

/// Per-EIP sampling state, persisted in the store.
pub struct Sampler {
    calendar: Calendar,
    options: SeriesOptions,
    host: String,
    store: Store,
    snapshots: HashMap<IpAddr, Snapshot>,
    series: HashMap<IpAddr, Series>,
    first_seen: HashMap<IpAddr, i64>,
}

impl Sampler {
    /// Opens the store and restores the last committed round.
    pub fn open(
        calendar: Calendar,
        options: SeriesOptions,
        host: String,
        store: Store,
    ) -> Result<Self, StoreError> {
        store.check_settings(&calendar, &host)?;
        let snapshots = store.load_snapshots()?;
        let mut series = HashMap::new();
        for (eip, s) in store.load_series(calendar)? {
            series.insert(eip, s.with_calendar(calendar));
        }
        info!(eips = snapshots.len(), "sampler state restored");
        Ok(Self {
            calendar,
            options,
            host,
            store,
            snapshots,
            series,
            first_seen: HashMap::new(),
        })
    }

    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Notes when an EIP started counting (from zero), for its first, partial sample.
    pub fn eip_added(&mut self, eip: IpAddr, at: i64) {
        if !self.snapshots.contains_key(&eip) {
            self.first_seen.entry(eip).or_insert(at);
        }
    }

    /// Records a bandwidth change (for the daily largest bandwidth and the baseline).
    pub fn bandwidth_set(&mut self, eip: IpAddr, at: i64, mbps: u64) {
        self.series_of(eip).record_bandwidth(at, mbps);
    }

    fn series_of(&mut self, eip: IpAddr) -> &mut Series {
        let (calendar, options) = (self.calendar, self.options);
        self.series
            .entry(eip)
            .or_insert_with(|| Series::new(calendar, options, BandwidthHistory::default()))
    }

    /// One sampling round at interval boundary `boundary` with every EIP's current counters.
    /// Everything the round produces is committed in one transaction, or nothing is.
    pub fn round(
        &mut self,
        boundary: i64,
        readings: &[(IpAddr, TrafficCounters)],
    ) -> Result<RoundReport, StoreError> {
        let started = std::time::Instant::now();
        let mut samples = Vec::new();
        let mut snapshots = Vec::new();
        let mut closed: Vec<(IpAddr, Closed)> = Vec::new();
        let mut to_checkpoint: Vec<IpAddr> = Vec::new();
        for (eip, counters) in readings {
            let now = Snapshot::of(boundary, counters);
            let prev = self.snapshots.get(eip).copied();
            if prev.is_some_and(|p| p.at >= boundary) {
                continue; // this boundary was already committed
            }
            let first_seen = self.first_seen.get(eip).copied().unwrap_or(boundary - 1);
            let new = samples_since(prev, now, first_seen, &self.calendar);
            let series = self.series_of(*eip);
            for s in &new {
                if let Err(e) = series.push(*s) {
                    // Never double count: a refused sample is reported, not applied.
                    error!(%eip, error = %e, "sample refused by the billing series");
                }
            }
            let c = series.take_closed();
            if !c.days.is_empty() || !c.months.is_empty() {
                closed.push((*eip, c));
            }
            if prev.is_none() || checkpoint_turn(eip, boundary, &self.calendar) {
                to_checkpoint.push(*eip);
            }
            samples.extend(new.into_iter().map(|s| (*eip, s)));
            snapshots.push((*eip, now));
        }
        let mut report = RoundReport {
            samples: samples.len(),
            closed_days: closed.iter().map(|(_, c)| c.days.len()).sum(),
            closed_months: closed.iter().map(|(_, c)| c.months.len()).sum(),
            compute_seconds: started.elapsed().as_secs_f64(),
            commit_seconds: 0.0,
        };
        let commit_started = std::time::Instant::now();
        // Each series is checkpointed once a day, staggered over the day's rounds (about
        // 1/288 of the EIPs per round), and when new: a restart replays at most a day of samples.
        let checkpoint: Vec<(IpAddr, &Series)> = to_checkpoint
            .iter()
            .filter_map(|eip| self.series.get(eip).map(|s| (*eip, s)))
            .collect();
        // The snapshot map is updated in place for the commit and rolled back if it fails: the
        // in-memory snapshot moves on only with a committed round, so a failed round is retried,
        // as a whole, by the next round's delta.
        let undo: Vec<(IpAddr, Option<Snapshot>)> = snapshots
            .iter()
            .map(|(eip, snap)| (*eip, self.snapshots.insert(*eip, *snap)))
            .collect();
        let committed = self.store.commit_round(
            &self.host,
            boundary,
            &samples,
            &self.snapshots,
            &closed,
            &checkpoint,
        );
        if let Err(e) = committed {
            for (eip, old) in undo {
                match old {
                    Some(old) => self.snapshots.insert(eip, old),
                    None => self.snapshots.remove(&eip),
                };
            }
            return Err(e);
        }
        for (eip, _) in snapshots {
            self.first_seen.remove(&eip);
        }
        report.commit_seconds = commit_started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// An EIP left the inventory at `at` with these final counters: its last (partial) samples
    /// and figures are written and its state dropped.
    pub fn eip_removed(
        &mut self,
        eip: IpAddr,
        at: i64,
        last: &TrafficCounters,
    ) -> Result<(), StoreError> {
        let boundary = self.calendar.interval_start(at) + i64::from(self.calendar.interval());
        let prev = self.snapshots.get(&eip).copied();
        let first_seen = self.first_seen.get(&eip).copied().unwrap_or(at);
        let mut new = samples_since(
            prev,
            Snapshot::of(boundary, last),
            first_seen,
            &self.calendar,
        );
        if let Some(s) = new.last_mut() {
            s.state = SampleState::Partial;
        }
        let series = self.series_of(eip);
        for s in &new {
            if let Err(e) = series.push(*s) {
                error!(%eip, error = %e, "final sample refused by the billing series");
            }
        }
        series.close();
        let closed = series.take_closed();
        let samples: Vec<_> = new.into_iter().map(|s| (eip, s)).collect();
        let mut next = self.snapshots.clone();
        next.remove(&eip);
        self.store
            .commit_removal(&self.host, eip, boundary, &samples, &closed, &next)?;
        self.snapshots = next;
        self.series.remove(&eip);
        self.first_seen.remove(&eip);
        Ok(())
    }

    /// Checkpoints every series (clean shutdown: the next start replays nothing).
    pub fn checkpoint_all(&mut self) -> Result<(), StoreError> {
        let all: Vec<(IpAddr, &Series)> = self.series.iter().map(|(e, s)| (*e, s)).collect();
        let last = self.snapshots.values().map(|s| s.at).max().unwrap_or(0);
        self.store
            .commit_round(&self.host, last, &[], &self.snapshots, &[], &all)
    }
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
        let s = samples_since(Some(snap(T0, 100, 50)), snap(T0 + 300, 250, 80), 0, &cal());
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
        let s = samples_since(Some(snap(T0, 100, 50)), snap(T0 + 300, 100, 50), 0, &cal());
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
        );
        assert_eq!(
            (s[0].inbound_bytes, s[0].outbound_bytes, s[0].state),
            (700, 20, SampleState::Partial)
        );
    }

    #[test]
    fn a_large_delta_after_an_outage_is_spread_and_conserved() {
        // Down for 4 intervals while the kernel counted 1001 bytes in.
        let s = samples_since(Some(snap(T0, 0, 0)), snap(T0 + 4 * 300, 1001, 8), 0, &cal());
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
    fn a_new_eip_starts_partial_from_its_first_interval() {
        // Added at 00:02; first round at 00:10: intervals 00:00 and 00:05.
        let s = samples_since(None, snap(T0 + 600, 10, 4), T0 + 120, &cal());
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].start, T0);
        assert_eq!(s.iter().map(|x| x.inbound_bytes).sum::<u64>(), 10);
    }

    #[test]
    fn the_same_boundary_twice_gives_nothing() {
        assert!(
            samples_since(Some(snap(T0 + 300, 1, 1)), snap(T0 + 300, 5, 5), 0, &cal()).is_empty()
        );
    }
}
