//! What the daemon accumulates for `/metrics` between rounds, and the [`Published`] state it
//! builds from it. No I/O and no clock: the daemon hands in what each round read and did.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use hdrhistogram::Histogram;
use metering_common::{DirectionDrops, DropCounters, TrafficCounters};

use super::state::{
    BLOCKED, INBOUND, LastRound, OUTBOUND, Published, Quantiles, RATE_LIMITED, SeriesRow, Totals,
};
use crate::{
    billing::series::Series,
    config::{Config, EipConfig, EipState, GroupConfig, PolicingConfig},
    dataplane::UplinkStatus,
    inventory::{Delta, model::state_index},
    policy::{self, Caps},
    sampling::Sampler,
};

/// Upper bounds of the utilization histogram (rate / cap): where "near the cap" starts.
pub const UTILIZATION_BOUNDS: [f64; 9] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 1.05];
/// Quantiles of the summaries.
pub const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// What one committed round read and did.
pub struct RoundFacts<'a> {
    pub boundary: i64,
    /// Every EIP's counters and drops, in the same order.
    pub readings: &'a [(IpAddr, TrafficCounters)],
    pub drops: &'a [DropCounters],
    pub non_eip: TrafficCounters,
    pub samples: usize,
    pub partial_samples: usize,
    pub counter_resets: usize,
    pub read_seconds: f64,
    pub compute_seconds: f64,
    pub commit_seconds: f64,
    pub commit_bytes: u64,
    pub store_bytes: u64,
    /// Slots in use: EIPs, shared-bandwidth buckets.
    pub slots_used: (usize, usize),
}

/// Caps on this router in bit/s, per direction (0: that direction is not capped).
type CapPair = [u64; 2];

fn pair(p: &metering_common::BucketPairConfig) -> CapPair {
    [p.inbound.rate_bps, p.outbound.rate_bps]
}

/// The daemon's running figures for `/metrics`.
pub struct Tally {
    published: Published,
    /// Counters of EIPs removed since the start, so the traffic totals never go backwards.
    removed_traffic: [Totals; 2],
    removed_dropped: [[Totals; 2]; 2],
    removed_ecn: [Totals; 2],
    last_boundary: Option<i64>,
    /// Round durations in microseconds (1 µs to 1 hour, 3 significant digits).
    durations: Histogram<u64>,
    utilization: [u64; UTILIZATION_BOUNDS.len()],
    caps: HashMap<IpAddr, CapPair>,
    group_caps: HashMap<String, CapPair>,
}

impl Tally {
    /// `last_boundary`: the last round the store holds (intervals skipped after it count as
    /// missed).
    pub fn new(config: &Config, capacity: (u32, u32), last_boundary: Option<i64>) -> Self {
        Self {
            published: Published {
                interval_seconds: config.sampler.interval_seconds,
                per_eip: config.metrics.per_eip,
                eip_slots_capacity: u64::from(capacity.0),
                group_slots_capacity: u64::from(capacity.1),
                ..Published::default()
            },
            removed_traffic: Default::default(),
            removed_dropped: Default::default(),
            removed_ecn: Default::default(),
            last_boundary,
            durations: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            utilization: [0; UTILIZATION_BOUNDS.len()],
            caps: HashMap::new(),
            group_caps: HashMap::new(),
        }
    }

    /// The whole inventory (start, or `[policing]` changed): EIPs by state and the caps to
    /// measure utilization against.
    pub fn set_inventory(
        &mut self,
        groups: &[GroupConfig],
        eips: &[EipConfig],
        policing: &PolicingConfig,
    ) {
        let mut by_state: Vec<(&'static str, u64)> =
            EipState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for e in eips {
            by_state[state_index(e.state)].1 += 1;
        }
        self.published.eips_by_state = by_state;
        self.group_caps = groups
            .iter()
            .map(|g| (g.name.clone(), pair(&policy::group_caps(g, policing))))
            .collect();
        self.caps = eips
            .iter()
            .filter_map(|e| match policy::eip_plan(e, policing).caps {
                Caps::Own(p) => Some((e.address, pair(&p))),
                _ => None,
            })
            .collect();
    }

    /// Some EIPs and groups changed: the counts and caps of those only.
    pub fn inventory_changed(&mut self, deltas: &[Delta], policing: &PolicingConfig) {
        if self.published.eips_by_state.len() != EipState::ALL.len() {
            self.published.eips_by_state = EipState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        }
        for d in deltas {
            match d {
                Delta::Eip {
                    address,
                    before,
                    after,
                    ..
                } => {
                    if let Some(b) = before {
                        let n = &mut self.published.eips_by_state[state_index(b.spec.state)].1;
                        *n = n.saturating_sub(1);
                    }
                    self.caps.remove(address);
                    if let Some(a) = after {
                        self.published.eips_by_state[state_index(a.spec.state)].1 += 1;
                        if let Caps::Own(p) = policy::eip_plan(&a.spec, policing).caps {
                            self.caps.insert(*address, pair(&p));
                        }
                    }
                }
                Delta::Group { name, after, .. } => match after {
                    Some(a) => {
                        self.group_caps
                            .insert(name.clone(), pair(&policy::group_caps(&a.spec, policing)));
                    }
                    None => {
                        self.group_caps.remove(name);
                    }
                },
            }
        }
    }

    /// An EIP left the inventory with these final counters (kept in the totals).
    pub fn eip_removed(&mut self, last: &TrafficCounters, drops: &DropCounters) {
        add_traffic(&mut self.removed_traffic, last);
        add_drops(&mut self.removed_dropped, &mut self.removed_ecn, drops);
    }

    pub fn reload(&mut self, result: ReloadResult) {
        self.published.reloads[result as usize] += 1;
    }

    pub fn round_failed(&mut self) {
        self.published.rounds_failed += 1;
        self.published.store_errors += 1;
    }

    pub fn store_error(&mut self) {
        self.published.store_errors += 1;
    }

    pub fn uplinks(&mut self, status: Vec<UplinkStatus>) {
        self.published.uplinks = status;
    }

    /// Shows the shipper's state (read at each scrape, since it moves between rounds).
    pub fn shipping(&mut self, shared: super::state::SharedShipping) {
        self.published.shipping = Some(shared);
    }

    /// A round was committed: its facts, and the sampler's state after it. Returns how long
    /// building the figures took is up to the caller to time.
    pub fn round_committed(&mut self, facts: &RoundFacts<'_>, sampler: &Sampler) {
        let p = &mut self.published;
        let step = i64::from(p.interval_seconds);
        p.rounds_committed += 1;
        p.samples_partial += facts.partial_samples as u64;
        p.samples_measured += (facts.samples - facts.partial_samples) as u64;
        p.counter_resets += facts.counter_resets as u64;
        if let Some(last) = self.last_boundary
            && facts.boundary > last
        {
            p.missed_intervals += ((facts.boundary - last) / step - 1).max(0) as u64;
        }
        self.last_boundary = Some(facts.boundary);

        let mut traffic = self.removed_traffic;
        let mut dropped = self.removed_dropped;
        let mut ecn = self.removed_ecn;
        for (_, c) in facts.readings {
            add_traffic(&mut traffic, c);
        }
        for d in facts.drops {
            add_drops(&mut dropped, &mut ecn, d);
        }
        p.traffic = traffic;
        p.dropped = dropped;
        p.ecn_marked = ecn;
        p.non_eip = [Totals::default(); 2];
        add_traffic(&mut p.non_eip, &facts.non_eip);
        p.eip_slots_used = facts.slots_used.0 as u64;
        p.group_slots_used = facts.slots_used.1 as u64;
        p.store_bytes = facts.store_bytes;

        let duration = facts.read_seconds + facts.compute_seconds + facts.commit_seconds;
        let _ = self
            .durations
            .record((duration * 1e6).round().max(1.0) as u64);
        p.round_durations = Quantiles {
            quantiles: QUANTILES
                .iter()
                .map(|&q| (q, self.durations.value_at_quantile(q) as f64 / 1e6))
                .collect(),
            count: self.durations.len(),
            sum: p.round_durations.sum + duration,
        };
        p.last_round = Some(LastRound {
            interval_start: facts.boundary - step,
            duration,
            read: facts.read_seconds,
            compute: facts.compute_seconds,
            commit: facts.commit_seconds,
            expose: 0.0,
            commit_bytes: facts.commit_bytes,
        });

        self.rates_and_utilization(sampler);
        if self.published.per_eip {
            self.series(facts, sampler);
        } else {
            self.published.eips = Arc::default();
            self.published.groups = Arc::default();
        }
    }

    /// Records how long building the figures took (the round's `expose` phase).
    pub fn exposed_in(&mut self, seconds: f64) {
        if let Some(last) = &mut self.published.last_round {
            last.expose = seconds;
        }
    }

    /// The figures to publish now.
    pub fn published(&self) -> Published {
        self.published.clone()
    }

    fn rates_and_utilization(&mut self, sampler: &Sampler) {
        let rule = sampler.options().rule;
        let mut rates = Histogram::<u64>::new(3).expect("3 significant digits");
        let mut rate_sum = 0.0;
        let mut ratios = Vec::new();
        let mut group_rates: HashMap<&str, [u64; 2]> = HashMap::new();
        let has_groups = !sampler.groups().is_empty();
        for eip in sampler.eips() {
            let value = crate::billing::billing_bps(rule, eip.rates_bps[0], eip.rates_bps[1]);
            let _ = rates.record(value);
            rate_sum += value as f64;
            if let Some(caps) = self.caps.get(&eip.eip) {
                ratios.extend(utilization(eip.rates_bps, *caps));
            }
            if has_groups && let Some(group) = sampler.groups().group_of(&eip.eip) {
                let r = group_rates.entry(group).or_default();
                r[0] += eip.rates_bps[0];
                r[1] += eip.rates_bps[1];
            }
        }
        for (group, r) in group_rates {
            if let Some(caps) = self.group_caps.get(group) {
                ratios.extend(utilization(r, *caps));
            }
        }
        let p = &mut self.published;
        for ratio in ratios {
            for (n, bound) in self.utilization.iter_mut().zip(UTILIZATION_BOUNDS) {
                *n += u64::from(ratio <= bound);
            }
            p.utilization.count += 1;
            p.utilization.sum += ratio;
        }
        p.utilization.cumulative = UTILIZATION_BOUNDS
            .iter()
            .copied()
            .zip(self.utilization)
            .collect();
        p.eip_rates = Quantiles {
            quantiles: QUANTILES
                .iter()
                .map(|&q| {
                    let v = if rates.is_empty() {
                        0
                    } else {
                        rates.value_at_quantile(q)
                    };
                    (q, v as f64 / 8.0)
                })
                .collect(),
            count: p.eip_rates.count + rates.len(),
            sum: p.eip_rates.sum + rate_sum / 8.0,
        };
    }

    fn series(&mut self, facts: &RoundFacts<'_>, sampler: &Sampler) {
        // After a round the sampler's EIPs are in the order of the readings: walk both together
        // (no map of 100,000 entries per round), and look up only when they part.
        let mut by_eip: Option<HashMap<IpAddr, usize>> = None;
        let mut group_counters: HashMap<&str, ([u64; 2], [u64; 2])> = HashMap::new();
        let mut eips = Vec::with_capacity(facts.readings.len());
        for (position, view) in sampler.eips().enumerate() {
            let i = match facts.readings.get(position) {
                Some((eip, _)) if *eip == view.eip => position,
                _ => {
                    let map = by_eip.get_or_insert_with(|| {
                        facts
                            .readings
                            .iter()
                            .enumerate()
                            .map(|(i, (eip, _))| (*eip, i))
                            .collect()
                    });
                    match map.get(&view.eip) {
                        Some(&i) => i,
                        None => continue, // not in the inventory any more
                    }
                }
            };
            let c = &facts.readings[i].1;
            let d = facts.drops.get(i).copied().unwrap_or_default();
            let bytes = [c.inbound.bytes, c.outbound.bytes];
            let dropped = [dropped_bytes(&d.inbound), dropped_bytes(&d.outbound)];
            if let Some(group) = sampler.groups().group_of(&view.eip) {
                let g = group_counters.entry(group).or_default();
                for k in 0..2 {
                    g.0[k] += bytes[k];
                    g.1[k] += dropped[k];
                }
            }
            eips.push(row(view.eip.to_string(), bytes, dropped, view.series));
        }
        eips.sort_by(|a, b| a.label.cmp(&b.label));
        let groups = sampler
            .groups()
            .iter()
            .map(|g| {
                let (bytes, dropped) = group_counters.get(g.name).copied().unwrap_or_default();
                row(g.name.to_owned(), bytes, dropped, g.series)
            })
            .collect();
        self.published.eips = Arc::new(eips);
        self.published.groups = Arc::new(groups);
    }
}

/// How a reload ended (the index into `Published::reloads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    Applied = 0,
    /// The file was invalid; nothing changed.
    Rejected = 1,
    /// Valid, but applying it failed part-way.
    Failed = 2,
}

fn row(label: String, bytes: [u64; 2], dropped: [u64; 2], series: &Series) -> SeriesRow {
    let open = series.open_figures();
    let day = open.day.map(|(_, f)| f);
    let month = open.month.map(|(_, f)| f);
    SeriesRow {
        label: label.into_boxed_str(),
        bytes,
        dropped_bytes: dropped,
        day_peak_mbps: day.as_ref().map(|d| d.enhanced_peak_mbps),
        day_outbound_bytes: day.as_ref().map(|d| d.outbound_bytes),
        month_average_peak_mbps: month.as_ref().map(|m| m.enhanced_avg_peak_mbps),
        month_billed_peak_mbps: month.as_ref().and_then(|m| m.billed_peak_mbps),
        month_p95_bps: month.as_ref().map(|m| m.p95_bps),
    }
}

/// Rate over cap in the more loaded of the capped directions (None: neither is capped).
fn utilization(rates: [u64; 2], caps: CapPair) -> Option<f64> {
    (0..2)
        .filter(|&d| caps[d] > 0)
        .map(|d| rates[d] as f64 / caps[d] as f64)
        .reduce(f64::max)
}

fn dropped_bytes(d: &DirectionDrops) -> u64 {
    d.rate_limited_bytes.saturating_add(d.blocked_bytes)
}

fn add_traffic(totals: &mut [Totals; 2], c: &TrafficCounters) {
    totals[INBOUND].add(c.inbound.bytes, c.inbound.packets);
    totals[OUTBOUND].add(c.outbound.bytes, c.outbound.packets);
}

fn add_drops(dropped: &mut [[Totals; 2]; 2], ecn: &mut [Totals; 2], d: &DropCounters) {
    for (i, dir) in [&d.inbound, &d.outbound].into_iter().enumerate() {
        dropped[i][RATE_LIMITED].add(dir.rate_limited_bytes, dir.rate_limited_packets);
        dropped[i][BLOCKED].add(dir.blocked_bytes, dir.blocked_packets);
        ecn[i].add(dir.ecn_marked_bytes, dir.ecn_marked_packets);
    }
}
