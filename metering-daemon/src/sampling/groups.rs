//! Shared bandwidths' series: a group's sample of an interval is the sum of its members'
//! samples of that interval, taken *before* any percentile (the rule `eip-meter compute
//! --groups` applies offline), and its bandwidth is the group's.
//!
//! Pure bookkeeping: the sampler feeds it every member sample of a round, then flushes the
//! sums into each group's series in time order and commits the series with the round.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use tracing::error;

use crate::billing::{
    SampleState,
    calendar::Calendar,
    series::{BandwidthHistory, Closed, Sample, Series, SeriesOptions},
};

/// One shared bandwidth.
struct Group {
    name: String,
    series: Series,
    members: usize,
}

/// A group's sum over its members for one interval.
#[derive(Clone, Copy, Debug, Default)]
struct Sum {
    inbound: u64,
    outbound: u64,
    partial: bool,
}

impl Sum {
    fn add(&mut self, s: &Sample) {
        self.inbound = self.inbound.saturating_add(s.inbound_bytes);
        self.outbound = self.outbound.saturating_add(s.outbound_bytes);
        self.partial |= s.state == SampleState::Partial;
    }
}

/// Pushes one interval's sum into a group's series.
fn push_sum(g: &mut Group, start: i64, sum: &Sum) {
    let sample = Sample {
        start,
        inbound_bytes: sum.inbound,
        outbound_bytes: sum.outbound,
        state: if sum.partial {
            SampleState::Partial
        } else {
            SampleState::Measured
        },
    };
    if let Err(e) = g.series.push(sample) {
        // Never double count: a refused sum is reported, not applied.
        error!(group = g.name, error = %e, "shared-bandwidth sample refused by its series");
    }
}

/// A group as [`Groups::iter`] shows it.
pub struct GroupView<'a> {
    pub name: &'a str,
    pub series: &'a Series,
    pub members: usize,
}

/// Every shared bandwidth, who belongs to it, and the sums of the round under way.
pub struct Groups {
    calendar: Calendar,
    options: SeriesOptions,
    list: Vec<Group>,
    member_of: HashMap<IpAddr, usize>,
    /// Sums of the round under way, by (group, interval start).
    sums: BTreeMap<(usize, i64), Sum>,
    /// Whether the set of groups changed since the last commit (the stored state must be
    /// rewritten even when it is now empty).
    changed: bool,
}

impl Groups {
    /// The groups as the store left them (their membership comes with the next
    /// [`Groups::configure`]).
    pub fn restore(
        calendar: Calendar,
        options: SeriesOptions,
        stored: Vec<(String, Series)>,
    ) -> Self {
        Self {
            calendar,
            options,
            list: stored
                .into_iter()
                .map(|(name, series)| Group {
                    name,
                    series,
                    members: 0,
                })
                .collect(),
            member_of: HashMap::new(),
            sums: BTreeMap::new(),
            changed: false,
        }
    }

    /// Makes the groups those of the config: `groups` with their purchased bandwidth (Mbit/s,
    /// for the baseline) as of `at`, `members` the EIPs in each. A group no longer configured
    /// is closed: its figures so far are returned, to be committed with the next round.
    pub fn configure(
        &mut self,
        groups: &[(String, Option<u64>)],
        members: &[(IpAddr, String)],
        at: i64,
    ) -> Vec<(String, Closed)> {
        // Sums under way (a member removed since the last round) follow their group by name.
        let mut pending: Vec<(String, i64, Sum)> = std::mem::take(&mut self.sums)
            .into_iter()
            .map(|((i, start), sum)| (self.list[i].name.clone(), start, sum))
            .collect();
        let mut closed = Vec::new();
        let before = self.list.len();
        let kept: Vec<Group> = std::mem::take(&mut self.list)
            .into_iter()
            .filter_map(|mut g| {
                if groups.iter().any(|(name, _)| *name == g.name) {
                    return Some(g);
                }
                // Its last contributions, then its figures so far.
                let name = g.name.clone();
                for (_, start, sum) in pending.iter().filter(|(n, ..)| *n == name) {
                    push_sum(&mut g, *start, sum);
                }
                g.series.close();
                closed.push((g.name, g.series.take_closed()));
                None
            })
            .collect();
        self.list = kept;
        for (name, bandwidth) in groups {
            self.define(name, *bandwidth, at);
        }
        pending.retain(|(n, ..)| self.list.iter().any(|g| g.name == *n));
        for (name, start, sum) in pending {
            let i = self.list.iter().position(|g| g.name == name).expect("kept");
            self.sums.insert((i, start), sum);
        }
        self.changed |= self.list.len() != before || !closed.is_empty();
        let names: Vec<String> = self.list.iter().map(|g| g.name.clone()).collect();
        self.member_of = members
            .iter()
            .filter_map(|(eip, group)| Some((*eip, names.iter().position(|n| n == group)?)))
            .collect();
        for g in &mut self.list {
            g.members = 0;
        }
        for &i in self.member_of.values() {
            self.list[i].members += 1;
        }
        closed
    }

    /// Makes `name` a group (a new one starts with an empty series) and records its purchased
    /// bandwidth as of `at`.
    fn define(&mut self, name: &str, bandwidth: Option<u64>, at: i64) {
        let i = match self.list.iter().position(|g| g.name == name) {
            Some(i) => i,
            None => {
                self.list.push(Group {
                    name: name.to_owned(),
                    series: Series::new(self.calendar, self.options, BandwidthHistory::default()),
                    members: 0,
                });
                self.list.len() - 1
            }
        };
        if let Some(mbps) = bandwidth {
            self.list[i].series.record_bandwidth(at, mbps);
        }
    }

    /// A few changes at `at` without going over every member (the admin API's path): groups
    /// created or with a new bandwidth, groups removed (the only part that walks every
    /// member, through [`Groups::configure`]), and EIPs that moved (`None`: in no group).
    pub fn update(
        &mut self,
        defined: &[(String, Option<u64>)],
        removed: &[String],
        moves: &[(IpAddr, Option<String>)],
        at: i64,
    ) -> Vec<(String, Closed)> {
        for (name, bandwidth) in defined {
            let before = self.list.len();
            self.define(name, *bandwidth, at);
            self.changed |= self.list.len() != before;
        }
        if !moves.is_empty() {
            let index: HashMap<&str, usize> = self
                .list
                .iter()
                .enumerate()
                .map(|(i, g)| (g.name.as_str(), i))
                .collect();
            let mut counts: Vec<isize> = vec![0; self.list.len()];
            for (eip, group) in moves {
                if let Some(old) = self.member_of.remove(eip) {
                    counts[old] -= 1;
                }
                if let Some(&i) = group.as_deref().and_then(|g| index.get(g)) {
                    self.member_of.insert(*eip, i);
                    counts[i] += 1;
                }
            }
            for (g, d) in self.list.iter_mut().zip(counts) {
                g.members = (g.members as isize + d).max(0) as usize;
            }
        }
        if removed.is_empty() {
            return Vec::new();
        }
        let groups: Vec<(String, Option<u64>)> = self
            .list
            .iter()
            .filter(|g| !removed.contains(&g.name))
            .map(|g| (g.name.clone(), None))
            .collect();
        let members: Vec<(IpAddr, String)> = self
            .member_of
            .iter()
            .map(|(eip, &i)| (*eip, self.list[i].name.clone()))
            .collect();
        self.configure(&groups, &members, at)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Adds a sample of `eip` to its group's sum for the sample's interval.
    pub fn add(&mut self, eip: &IpAddr, sample: &Sample) {
        if let Some(&i) = self.member_of.get(eip) {
            self.sums.entry((i, sample.start)).or_default().add(sample);
        }
    }

    /// Pushes the sums into the groups' series, each in time order, and returns what closed.
    pub fn flush(&mut self) -> Vec<(String, Closed)> {
        for ((i, start), sum) in std::mem::take(&mut self.sums) {
            push_sum(&mut self.list[i], start, &sum);
        }
        self.list
            .iter_mut()
            .filter_map(|g| {
                let c = g.series.take_closed();
                (!c.days.is_empty() || !c.months.is_empty()).then(|| (g.name.clone(), c))
            })
            .collect()
    }

    /// Every group's series, for the store (`None` when there is nothing to write).
    pub fn records(&self) -> Option<Vec<(&str, &Series)>> {
        (!self.list.is_empty() || self.changed).then(|| {
            self.list
                .iter()
                .map(|g| (g.name.as_str(), &g.series))
                .collect()
        })
    }

    /// The stored state now matches.
    pub fn committed(&mut self) {
        self.changed = false;
    }

    pub fn iter(&self) -> impl Iterator<Item = GroupView<'_>> {
        self.list.iter().map(|g| GroupView {
            name: &g.name,
            series: &g.series,
            members: g.members,
        })
    }

    /// The group `eip` belongs to.
    pub fn group_of(&self, eip: &IpAddr) -> Option<&str> {
        self.member_of.get(eip).map(|&i| self.list[i].name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_793_462_400; // 2026-11-01T00:00:00+08:00

    fn groups() -> Groups {
        let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
        let mut g = Groups::restore(cal, SeriesOptions::default(), Vec::new());
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        g.configure(
            &[("shared".into(), Some(300))],
            &[(a, "shared".into()), (b, "shared".into())],
            T0,
        );
        g
    }

    fn sample(start: i64, inbound: u64, state: SampleState) -> Sample {
        Sample {
            start,
            inbound_bytes: inbound,
            outbound_bytes: 0,
            state,
        }
    }

    #[test]
    fn members_are_summed_per_interval_before_the_peak() {
        let mut g = groups();
        let (a, b) = (
            "203.0.113.1".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        );
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        // Opposite phases: each member alone peaks at 375 MB per interval (10 Mbit/s), the sum
        // is flat at 375 MB too.
        for k in 0..6 {
            let t = T0 + k * 300;
            let (x, y) = if k % 2 == 0 {
                (375_000_000, 0)
            } else {
                (0, 375_000_000)
            };
            g.add(&a, &sample(t, x, SampleState::Measured));
            g.add(&b, &sample(t, y, SampleState::Measured));
            g.add(&outsider, &sample(t, 1_000_000_000, SampleState::Measured));
            assert!(g.flush().is_empty());
        }
        let view = g.iter().next().unwrap();
        assert_eq!(view.members, 2);
        let open = view.series.open_figures();
        let (_, day) = open.day.unwrap();
        assert_eq!(day.inbound_bytes, 6 * 375_000_000);
        assert_eq!(day.enhanced_peak_mbps, 10);
        assert_eq!(day.max_bandwidth_mbps, Some(300));
    }

    #[test]
    fn a_partial_member_makes_the_sum_partial() {
        let mut g = groups();
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        g.add(&a, &sample(T0, 10, SampleState::Measured));
        g.add(&b, &sample(T0, 10, SampleState::Partial));
        g.flush();
        let (_, day) = g.iter().next().unwrap().series.open_figures().day.unwrap();
        assert_eq!((day.measured_samples, day.partial_samples), (0, 1));
    }

    #[test]
    fn a_group_removed_from_the_config_is_closed() {
        let mut g = groups();
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        g.add(&a, &sample(T0, 10, SampleState::Measured));
        g.flush();
        let closed = g.configure(&[], &[], T0 + 600);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].1.days.len(), 1);
        assert!(g.is_empty());
        assert_eq!(
            g.records().map(|r| r.len()),
            Some(0),
            "the empty set is written once"
        );
        g.committed();
        assert!(g.records().is_none());
    }
}
