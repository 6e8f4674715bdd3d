//! The sampling round: every EIP's counters at an interval boundary become samples, feed each
//! EIP's billing series, and are committed to the [`Store`] in one transaction.
//!
//! [`Sampler`] keeps one [`Series`] per EIP; the deltas themselves come from the pure
//! [`samples_since`].

use std::{collections::HashMap, net::IpAddr};

use metering_common::TrafficCounters;
use tracing::{error, info};

use super::{
    groups::Groups,
    pending::{MAX_PENDING_ROUNDS, Pending},
};
use crate::{
    billing::{
        SampleState, average_bps,
        calendar::Calendar,
        samples::{Snapshot, next_interval, samples_since},
        series::{BandwidthHistory, Closed, Sample, Series, SeriesOptions},
    },
    store,
    store::{Figures, FiguresSpool, RoundKind, RoundRecords, Store, StoreError},
};

/// Whether `eip`'s series is due for its daily checkpoint in the round at `boundary`.
fn checkpoint_turn(store_id: u32, boundary: i64, calendar: &Calendar) -> bool {
    let per_day = u64::from(calendar.samples_per_day());
    let round = (boundary / i64::from(calendar.interval())) as u64;
    // Store ids are dense and stable: the EIPs spread evenly over the day's rounds.
    u64::from(store_id) % per_day == round % per_day
}

/// How many EIPs ahead a round warms the cache with a series' state (see
/// [`Series::prefetch`]): far enough for the fetches to arrive, near enough to stay cached.
const PREFETCH_AHEAD: usize = 8;

/// Whether every uplink was metered for the whole of a round's interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Coverage {
    #[default]
    Complete,
    /// Some uplink was without our programs for part of the interval: traffic may be missing,
    /// so the round's samples are `partial`.
    Incomplete,
}

/// One EIP as the sampler holds it ([`Sampler::eips`]).
pub struct EipView<'a> {
    pub eip: IpAddr,
    pub series: &'a Series,
    /// Average inbound and outbound bit/s of its newest sample.
    pub rates_bps: [u64; 2],
}

/// What one round did.
#[derive(Debug, Default, PartialEq)]
pub struct RoundReport {
    pub samples: usize,
    /// Of `samples`, those not measured over their whole interval.
    pub partial_samples: usize,
    /// EIPs whose counters went backwards (maps recreated, host rebooted).
    pub counter_resets: usize,
    pub closed_days: usize,
    pub closed_months: usize,
    /// Deltas and billing state, in seconds.
    pub compute_seconds: f64,
    /// Encoding and the store transaction, in seconds.
    pub commit_seconds: f64,
}

/// Everything the sampler keeps for one EIP.
struct EipState {
    eip: IpAddr,
    /// The store's id for this EIP, once a round with it has been committed.
    store_id: Option<u32>,
    /// The counters of the last committed round.
    snapshot: Option<Snapshot>,
    /// When it started counting from zero (new EIPs, until their first round).
    first_seen: Option<i64>,
    series: Series,
    /// Average inbound and outbound bit/s of its newest sample.
    rates: [u64; 2],
}

/// Per-EIP sampling state, persisted in the store.
///
/// The states live in one vector kept in the order the readings arrive (slot order), so a round
/// walks memory sequentially and needs no hash lookup per EIP; the index is consulted only when
/// the inventory changed, after which the vector is put back in readings order.
pub struct Sampler {
    calendar: Calendar,
    options: SeriesOptions,
    host: String,
    store: Store,
    states: Vec<EipState>,
    index: HashMap<IpAddr, usize>,
    groups: Groups,
    /// Figures of shared bandwidths removed from the config, committed with the next round.
    closed_groups: Vec<(String, Closed)>,
    /// Commits the store refused, oldest first (see [`super::pending`]).
    pub(super) pending: Vec<Pending>,
    /// The boundary of the newest round that stands (committed or waiting for the store).
    last_round: Option<i64>,
}

impl Sampler {
    /// Opens the store and restores the last committed round.
    pub fn open(
        calendar: Calendar,
        options: SeriesOptions,
        host: String,
        mut store: Store,
    ) -> Result<Self, StoreError> {
        store.check_settings(&calendar, &host)?;
        let mut snapshots = store.load_snapshots()?;
        let groups = Groups::restore(calendar, options, store.load_groups(calendar)?);
        let mut sampler = Self {
            calendar,
            options,
            host,
            states: Vec::new(),
            index: HashMap::new(),
            store,
            groups,
            closed_groups: Vec::new(),
            pending: Vec::new(),
            last_round: None,
        };
        for (eip, series) in sampler.store.load_series(calendar)? {
            let snapshot = snapshots.remove(&eip);
            sampler.insert_state(eip, snapshot, series);
        }
        for (eip, snapshot) in snapshots {
            let series = Series::new(calendar, options, BandwidthHistory::default());
            sampler.insert_state(eip, Some(snapshot), series);
        }
        sampler.last_round = sampler
            .states
            .iter()
            .filter_map(|s| s.snapshot.map(|p| p.at))
            .max();
        info!(eips = sampler.states.len(), "sampler state restored");
        Ok(sampler)
    }

    fn insert_state(&mut self, eip: IpAddr, snapshot: Option<Snapshot>, series: Series) -> usize {
        let i = self.states.len();
        self.states.push(EipState {
            eip,
            store_id: self.store.id_of(&eip),
            snapshot,
            first_seen: None,
            series,
            rates: [0, 0],
        });
        self.index.insert(eip, i);
        i
    }

    fn state_index(&mut self, eip: IpAddr) -> usize {
        match self.index.get(&eip) {
            Some(&i) => i,
            None => {
                let series = Series::new(self.calendar, self.options, BandwidthHistory::default());
                self.insert_state(eip, None, series)
            }
        }
    }

    /// The boundary of the last round that stands (committed, or waiting for the store), if
    /// any: a round at or before it would write nothing.
    pub fn last_boundary(&self) -> Option<i64> {
        self.last_round
    }

    /// The most intervals one reading is spread over when the daemon cannot tell how much
    /// real time passed (after a restart): one day. A longer gap leaves its earlier intervals
    /// missing rather than holding a sample per interval per EIP in memory.
    pub fn default_spread(&self) -> u64 {
        u64::from(self.calendar.samples_per_day())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, for what is recorded outside rounds (the inventory's history).
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Notes when an EIP started counting (from zero), for its first, partial sample.
    pub fn eip_added(&mut self, eip: IpAddr, at: i64) {
        let i = self.state_index(eip);
        let st = &mut self.states[i];
        if st.snapshot.is_none() && st.first_seen.is_none() {
            st.first_seen = Some(at);
        }
    }

    /// Makes the shared bandwidths those of the config (see [`Groups::configure`]); the figures
    /// of a group no longer configured are committed with the next round.
    pub fn configure_groups(
        &mut self,
        groups: &[(String, Option<u64>)],
        members: &[(IpAddr, String)],
        at: i64,
    ) {
        let closed = self.groups.configure(groups, members, at);
        self.closed_groups.extend(closed);
    }

    /// A few shared-bandwidth changes (see [`Groups::update`]).
    pub fn update_groups(
        &mut self,
        defined: &[(String, Option<u64>)],
        removed: &[String],
        moves: &[(IpAddr, Option<String>)],
        at: i64,
    ) {
        let closed = self.groups.update(defined, removed, moves, at);
        self.closed_groups.extend(closed);
    }

    pub fn options(&self) -> SeriesOptions {
        self.options
    }

    /// The shared bandwidths and their series.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Every EIP's series and the rates of its newest sample, in the order of the last round.
    pub fn eips(&self) -> impl Iterator<Item = EipView<'_>> {
        self.states.iter().map(|st| EipView {
            eip: st.eip,
            series: &st.series,
            rates_bps: st.rates,
        })
    }

    /// Records a bandwidth change (for the daily largest bandwidth and the baseline).
    pub fn bandwidth_set(&mut self, eip: IpAddr, at: i64, mbps: u64) {
        let i = self.state_index(eip);
        self.states[i].series.record_bandwidth(at, mbps);
    }

    /// One sampling round at interval boundary `boundary` with every EIP's current counters.
    /// Everything the round produces is committed in one transaction, or nothing is.
    pub fn round(
        &mut self,
        boundary: i64,
        readings: &[(IpAddr, TrafficCounters)],
    ) -> Result<RoundReport, StoreError> {
        self.round_with(boundary, readings, Coverage::Complete)
    }

    /// [`Sampler::round`], saying whether the programs were on every uplink for the whole of
    /// the interval ending at `boundary`: when not, every sample of the round is `partial`.
    pub fn round_with(
        &mut self,
        boundary: i64,
        readings: &[(IpAddr, TrafficCounters)],
        coverage: Coverage,
    ) -> Result<RoundReport, StoreError> {
        self.round_spread(boundary, readings, coverage, self.default_spread())
    }

    /// [`Sampler::round_with`], spreading a reading over at most `max_intervals` intervals (see
    /// [`samples_since`]): the daemon passes the real time elapsed since its last round, so a
    /// wall clock that stepped forward leaves the skipped intervals missing instead of
    /// inventing traffic in them.
    pub fn round_spread(
        &mut self,
        boundary: i64,
        readings: &[(IpAddr, TrafficCounters)],
        coverage: Coverage,
        max_intervals: u64,
    ) -> Result<RoundReport, StoreError> {
        let started = std::time::Instant::now();
        // Older refused commits go first. While the store still refuses them, this round is
        // kept too, up to the limit; past it, it is skipped with nothing touched (the kernel
        // keeps counting and the round after the store recovers covers it).
        let deferred = match self.flush_pending() {
            Ok(()) => None,
            Err(e) if self.pending.len() >= MAX_PENDING_ROUNDS => return Err(e),
            Err(e) => Some(e),
        };
        let mut samples_blob = Vec::with_capacity(readings.len() * store::SAMPLE_RECORD);
        let mut sample_count = 0;
        let mut new_ids: Vec<(u32, IpAddr)> = Vec::new();
        let mut next_id = self.next_new_id();
        let mut figures: Option<FiguresSpool> = None;
        let (mut closed_days, mut closed_months) = (0, 0);
        let mut to_checkpoint: Vec<(u32, usize)> = Vec::new();
        let mut order: Vec<usize> = Vec::with_capacity(readings.len());
        let mut in_order = true;
        let mut partial = 0;
        let mut counter_resets = 0;
        let mut opened: Vec<(u32, i64)> = Vec::new();
        let step = i64::from(self.calendar.interval());
        let mut first_start = boundary - step;
        for (position, (eip, counters)) in readings.iter().enumerate() {
            if let Some(ahead) = self.states.get(position + PREFETCH_AHEAD) {
                ahead.series.prefetch();
            }
            let i = if self.states.get(position).is_some_and(|s| s.eip == *eip) {
                position
            } else {
                in_order = false;
                self.state_index(*eip)
            };
            order.push(i);
            let calendar = self.calendar;
            let st = &mut self.states[i];
            let now = Snapshot::of(boundary, counters);
            if st.snapshot.is_some_and(|p| p.at >= boundary) {
                continue; // this boundary was already committed
            }
            let first_seen = st.first_seen.unwrap_or(boundary - 1);
            if st.snapshot.is_some_and(|p| {
                now.inbound_bytes < p.inbound_bytes || now.outbound_bytes < p.outbound_bytes
            }) {
                counter_resets += 1;
            }
            let mut one = st.snapshot.and_then(|p| next_interval(p, now, step));
            let mut many;
            let new: &mut [Sample] = match &mut one {
                Some(sample) => std::slice::from_mut(sample),
                None => {
                    many = samples_since(st.snapshot, now, first_seen, &calendar, max_intervals);
                    &mut many
                }
            };
            if coverage == Coverage::Incomplete {
                new.iter_mut().for_each(|s| s.state = SampleState::Partial);
            }
            let new: &[Sample] = new;
            let id = match st.store_id {
                Some(id) => id,
                None => {
                    let id = next_id;
                    next_id += 1;
                    new_ids.push((id, *eip));
                    st.store_id = Some(id);
                    id
                }
            };
            for sample in new {
                if let Err(e) = st.series.push(*sample) {
                    // Never double count: a refused sample is reported, not applied.
                    error!(%eip, error = %e, "sample refused by the billing series");
                }
                store::encode_sample(&mut samples_blob, id, boundary, sample);
                self.groups.add(eip, sample);
                partial += usize::from(sample.state == SampleState::Partial);
            }
            if st.snapshot.is_none()
                && let Some(first) = new.first()
            {
                // Its first round here: it entered the inventory with its first interval.
                opened.push((id, first.start));
            }
            if let Some(first) = new.first() {
                first_start = first_start.min(first.start);
            }
            if let Some(last) = new.last() {
                st.rates = [
                    average_bps(last.inbound_bytes, calendar.interval()),
                    average_bps(last.outbound_bytes, calendar.interval()),
                ];
            }
            sample_count += new.len();
            // Encoded now, while the series is in cache, and freed at once.
            let c = st.series.take_closed();
            if !c.days.is_empty() || !c.months.is_empty() {
                closed_days += c.days.len();
                closed_months += c.months.len();
                figures
                    .get_or_insert_with(|| self.store.figures_spool())
                    .push(id, &c);
            }
            if st.snapshot.is_none() || checkpoint_turn(id, boundary, &calendar) {
                to_checkpoint.push((id, i));
            }
            // Committed now or kept pending: either way this round stands.
            st.snapshot = Some(now);
            st.first_seen = None;
        }
        // Its last chunk written and fsynced while the commit writes the rest.
        if let Some(spool) = &mut figures {
            spool.close();
        }
        // Committed now or kept pending: either way this round stands.
        self.last_round = Some(self.last_round.map_or(boundary, |l| l.max(boundary)));
        let mut closed_groups: Vec<(String, Closed)> = self.groups.flush();
        closed_groups.extend(self.closed_groups.iter().cloned());
        let mut report = RoundReport {
            samples: sample_count,
            partial_samples: partial,
            counter_resets,
            closed_days: closed_days
                + closed_groups
                    .iter()
                    .map(|(_, c)| c.days.len())
                    .sum::<usize>(),
            closed_months: closed_months
                + closed_groups
                    .iter()
                    .map(|(_, c)| c.months.len())
                    .sum::<usize>(),
            compute_seconds: started.elapsed().as_secs_f64(),
            commit_seconds: 0.0,
        };
        let commit_started = std::time::Instant::now();
        let snapshot_blob = self.snapshot_blob(boundary);
        let kind = match coverage {
            Coverage::Complete => RoundKind::Complete,
            Coverage::Incomplete => RoundKind::Incomplete,
        };
        let committed = match deferred {
            Some(e) => Err(e),
            None => {
                // Each series is checkpointed once a day, staggered over the day's rounds
                // (about 1/288 of the EIPs per round), and when new: a restart replays at most
                // a day of samples.
                let checkpoint: Vec<(u32, &Series)> = to_checkpoint
                    .iter()
                    .map(|&(id, i)| (id, &self.states[i].series))
                    .collect();
                let group_records = self.groups.records();
                self.store.commit_round(RoundRecords {
                    host: &self.host,
                    boundary,
                    samples: &samples_blob,
                    snapshot: &snapshot_blob,
                    new_eips: &new_ids,
                    figures: figures
                        .as_ref()
                        .map_or_else(Figures::default, Figures::Spooled),
                    checkpoints: &checkpoint,
                    groups: group_records.as_deref(),
                    closed_groups: &closed_groups,
                    kind,
                    first_start,
                    presence_opened: &opened,
                    presence_closed: &[],
                })
            }
        };
        if let Err(e) = committed {
            // The round stands in memory; its records wait for the store (`pending`).
            let checkpoints = to_checkpoint
                .iter()
                .map(|&(id, i)| (id, self.states[i].eip))
                .collect();
            self.pending.push(Pending {
                boundary,
                samples: samples_blob,
                snapshot: snapshot_blob,
                new_eips: new_ids,
                figures: figures.map(FiguresSpool::into_encoded).unwrap_or_default(),
                closed_groups,
                kind,
                first_start,
                presence_opened: opened,
                presence_closed: Vec::new(),
                checkpoints,
                forget: None,
            });
            self.closed_groups.clear();
            if !in_order {
                self.reorder(&order);
            }
            return Err(e);
        }
        self.groups.committed();
        self.closed_groups.clear();
        if !in_order {
            self.reorder(&order);
        }
        report.commit_seconds = commit_started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Every EIP's committed-to-be snapshot as store records.
    fn snapshot_blob(&self, boundary: i64) -> Vec<u8> {
        let mut blob = Vec::with_capacity(self.states.len() * store::SNAPSHOT_RECORD);
        for st in &self.states {
            if let (Some(id), Some(snap)) = (st.store_id, st.snapshot) {
                store::encode_snapshot(&mut blob, id, boundary, &snap);
            }
        }
        blob
    }

    /// Puts the states in `order` (the readings order), the others after them.
    fn reorder(&mut self, order: &[usize]) {
        let mut slots: Vec<Option<EipState>> = std::mem::take(&mut self.states)
            .into_iter()
            .map(Some)
            .collect();
        let mut states = Vec::with_capacity(slots.len());
        for &i in order {
            if let Some(st) = slots[i].take() {
                states.push(st);
            }
        }
        states.extend(slots.into_iter().flatten());
        self.index = states.iter().enumerate().map(|(i, s)| (s.eip, i)).collect();
        self.states = states;
    }

    /// EIPs left the inventory at `at` with these final counters: their last (partial)
    /// samples and figures are written, in one commit, and their state dropped. When the store
    /// refuses the commit, it waits in memory like a round (see [`super::pending`]) and the
    /// error is returned: the EIPs are gone from the data plane either way.
    pub fn eips_removed(
        &mut self,
        removed: &[(IpAddr, TrafficCounters)],
        at: i64,
    ) -> Result<(), StoreError> {
        if removed.is_empty() {
            return Ok(());
        }
        let deferred = self.flush_pending().err();
        let step = i64::from(self.calendar.interval());
        // Never at or before the last round (a wall clock behind it would leave the final
        // bytes nowhere): at the latest, the interval after it.
        let boundary = (self.calendar.interval_start(at) + step)
            .max(self.last_round.map_or(i64::MIN, |l| l + step));
        let max_intervals = self.default_spread();
        let calendar = self.calendar;
        let mut samples_blob = Vec::new();
        let mut new_ids = Vec::new();
        let mut figures_blob = Vec::new();
        let mut forget = Vec::with_capacity(removed.len());
        let mut opened = Vec::new();
        let mut presence_closed = Vec::with_capacity(removed.len());
        let mut first_start = boundary;
        let mut next_id = self.next_new_id();
        let mut gone = std::collections::HashSet::with_capacity(removed.len());
        for (eip, last) in removed {
            let i = self.state_index(*eip);
            let st = &mut self.states[i];
            let first_seen = st.first_seen.unwrap_or(at);
            let mut new = samples_since(
                st.snapshot,
                Snapshot::of(boundary, last),
                first_seen,
                &calendar,
                max_intervals,
            );
            if let Some(s) = new.last_mut() {
                s.state = SampleState::Partial;
            }
            for s in &new {
                if let Err(e) = st.series.push(*s) {
                    error!(%eip, error = %e, "final sample refused by the billing series");
                }
                // Its group gets these with the next round's sums.
                self.groups.add(eip, s);
            }
            let st = &mut self.states[i];
            st.series.close();
            let figures = st.series.take_closed();
            let id = match st.store_id {
                Some(id) => id,
                None => {
                    let id = next_id;
                    next_id += 1;
                    new_ids.push((id, *eip));
                    id
                }
            };
            store::encode_figures(&mut figures_blob, id, &figures);
            forget.push(id);
            for s in &new {
                store::encode_sample(&mut samples_blob, id, boundary, s);
            }
            // Removed before its first round: it entered and leaves with this commit.
            if let (None, Some(first)) = (st.snapshot, new.first()) {
                opened.push((id, first.start));
            }
            if let Some(first) = new.first() {
                first_start = first_start.min(first.start);
            }
            presence_closed.push((id, boundary));
            gone.insert(*eip);
        }
        // The snapshot written is everyone's but these EIPs'.
        let all = std::mem::take(&mut self.states);
        self.states = all
            .into_iter()
            .filter(|st| !gone.contains(&st.eip))
            .collect();
        self.index = self
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.eip, i))
            .collect();
        let snapshot_blob = self.snapshot_blob(boundary);
        let committed = match deferred {
            Some(e) => Err(e),
            None => self.store.commit_removal(
                RoundRecords {
                    host: &self.host,
                    boundary,
                    samples: &samples_blob,
                    snapshot: &snapshot_blob,
                    new_eips: &new_ids,
                    figures: Figures::Encoded(&figures_blob),
                    kind: RoundKind::Removal,
                    first_start,
                    presence_opened: &opened,
                    presence_closed: &presence_closed,
                    ..RoundRecords::default()
                },
                &forget,
            ),
        };
        if let Err(e) = committed {
            self.pending.push(Pending {
                boundary,
                samples: samples_blob,
                snapshot: snapshot_blob,
                new_eips: new_ids,
                figures: figures_blob,
                closed_groups: Vec::new(),
                kind: RoundKind::Removal,
                first_start,
                presence_opened: opened,
                presence_closed,
                checkpoints: Vec::new(),
                forget: Some(forget),
            });
            return Err(e);
        }
        Ok(())
    }

    /// Checkpoints every series (clean shutdown: the next start replays nothing).
    pub fn checkpoint_all(&mut self) -> Result<(), StoreError> {
        // Not before the waiting rounds: the snapshot written must follow theirs.
        self.flush_pending()?;
        let all: Vec<(u32, &Series)> = self
            .states
            .iter()
            .filter_map(|s| Some((s.store_id?, &s.series)))
            .collect();
        let last = self.last_boundary().unwrap_or(0);
        let snapshot_blob = self.snapshot_blob(last);
        let group_records = self.groups.records();
        self.store.commit_round(RoundRecords {
            host: &self.host,
            boundary: last,
            snapshot: &snapshot_blob,
            checkpoints: &all,
            groups: group_records.as_deref(),
            closed_groups: &self.closed_groups,
            ..RoundRecords::default()
        })?;
        self.groups.committed();
        self.closed_groups.clear();
        Ok(())
    }
}

/// Waiting commits (see [`super::pending`]).
impl Sampler {
    /// Rounds and removals waiting for the store.
    pub fn pending_commits(&self) -> usize {
        self.pending.len()
    }

    /// The id the next new EIP gets: after the store's, and after those of waiting commits.
    pub(super) fn next_new_id(&self) -> u32 {
        self.pending
            .iter()
            .flat_map(|p| p.new_eips.last())
            .map(|(id, _)| id + 1)
            .max()
            .unwrap_or(0)
            .max(self.store.next_id())
    }

    /// Commits every waiting round, oldest first; stops at the first the store refuses.
    pub(super) fn flush_pending(&mut self) -> Result<(), StoreError> {
        while let Some(p) = self.pending.first() {
            let checkpoints: Vec<(u32, &Series)> = p
                .checkpoints
                .iter()
                .filter_map(|(id, eip)| Some((*id, &self.states[*self.index.get(eip)?].series)))
                .collect();
            let groups = self.groups.records();
            let records = RoundRecords {
                host: &self.host,
                boundary: p.boundary,
                samples: &p.samples,
                snapshot: &p.snapshot,
                new_eips: &p.new_eips,
                figures: Figures::Encoded(&p.figures),
                checkpoints: &checkpoints,
                groups: groups.as_deref(),
                closed_groups: &p.closed_groups,
                kind: p.kind,
                first_start: p.first_start,
                presence_opened: &p.presence_opened,
                presence_closed: &p.presence_closed,
            };
            match &p.forget {
                Some(forget) => self.store.commit_removal(records, forget)?,
                None => self.store.commit_round(records)?,
            }
            self.groups.committed();
            self.pending.remove(0);
        }
        Ok(())
    }
}
