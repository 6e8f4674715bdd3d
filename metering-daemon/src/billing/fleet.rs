//! One subject's samples from what several hosts reported, sparsely: the billing store keeps a
//! sample row only where there was traffic (or where a row's state cannot be implied), so
//! volume grows with traffic, not with the inventory. What tells a measured zero from a gap:
//!
//! * each host's **rounds**: the intervals it sampled, each `complete` (every uplink metered
//!   throughout) or `partial` (an uplink was not, or the daemon was down and spread a delta);
//! * the subject's **presence** on each host: the intervals it was in that host's inventory;
//! * the **rows**: the subject's non-zero samples (and the partial ones a round cannot imply).
//!
//! For every interval, the hosts that reported it while the subject was present there
//! contribute their row, or zero (measured in a complete round, partial otherwise); their sum
//! is the subject's sample (summed *before* any percentile), partial if any part is. No such
//! host: the interval is missing. Pure: the billing store and `compute --rounds --presence`
//! both call this.

use super::{SampleState, series::Sample};

/// A host's rounds over a period: one byte per interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRounds {
    start: i64,
    step: i64,
    cover: Vec<u8>,
}

const NONE: u8 = 0;
const COMPLETE: u8 = 1;
const PARTIAL: u8 = 2;

impl HostRounds {
    /// No round yet over the `n` intervals of `step` seconds from `start`.
    pub fn new(start: i64, step: i64, n: usize) -> Self {
        Self {
            start,
            step,
            cover: vec![NONE; n],
        }
    }

    /// The host sampled the interval starting at `t` (ignored outside the period).
    pub fn add(&mut self, t: i64, complete: bool) {
        if let Some(i) = self.index(t) {
            self.cover[i] = if complete { COMPLETE } else { PARTIAL };
        }
    }

    fn index(&self, t: i64) -> Option<usize> {
        if t < self.start || (t - self.start) % self.step != 0 {
            return None;
        }
        let i = ((t - self.start) / self.step) as usize;
        (i < self.cover.len()).then_some(i)
    }
}

/// `[from, to)` of a subject's presence on host `host` (an index into the hosts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    pub host: usize,
    pub from: i64,
    pub to: Option<i64>,
}

/// One row of a host: a sample it stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub host: usize,
    pub start: i64,
    pub inbound: u64,
    pub outbound: u64,
    pub partial: bool,
}

/// The subject's sample of every interval of the period that some present host reported, in
/// time order. `rows` may come in any order.
pub fn samples(hosts: &[HostRounds], presence: &[Presence], rows: &[Row]) -> Vec<Sample> {
    let Some(first) = hosts.first() else {
        return Vec::new();
    };
    let (start, step, n) = (first.start, first.step, first.cover.len());
    // Per interval: (inbound, outbound, partial, contributing hosts).
    let mut acc: Vec<(u64, u64, bool, u32)> = vec![(0, 0, false, 0); n];
    // Which (host, interval) has a row: its contribution replaces the implied zero.
    let mut explicit: Vec<Vec<bool>> = vec![Vec::new(); hosts.len()];
    for r in rows {
        let Some(rounds) = hosts.get(r.host) else {
            continue;
        };
        let Some(i) = rounds.index(r.start) else {
            continue;
        };
        if explicit[r.host].is_empty() {
            explicit[r.host] = vec![false; n];
        }
        if explicit[r.host][i] {
            continue; // one row per host and interval; the store's key ensures it
        }
        explicit[r.host][i] = true;
        let a = &mut acc[i];
        a.0 = a.0.saturating_add(r.inbound);
        a.1 = a.1.saturating_add(r.outbound);
        a.2 |= r.partial;
        a.3 += 1;
    }
    for p in presence {
        let Some(rounds) = hosts.get(p.host) else {
            continue;
        };
        let lo = ((p.from - start).max(0) + step - 1) / step;
        let hi =
            p.to.map_or(n as i64, |to| ((to - start).max(0) + step - 1) / step);
        let (lo, hi) = (lo.max(0) as usize, (hi.max(0) as usize).min(n));
        let host_rows = explicit.get(p.host).map_or(&[][..], Vec::as_slice);
        for (i, (a, &cover)) in acc
            .iter_mut()
            .zip(&rounds.cover)
            .enumerate()
            .take(hi)
            .skip(lo)
        {
            if cover == NONE || host_rows.get(i) == Some(&true) {
                continue;
            }
            a.2 |= cover == PARTIAL;
            a.3 += 1;
        }
    }
    acc.iter()
        .enumerate()
        .filter(|(_, a)| a.3 > 0)
        .map(|(i, a)| Sample {
            start: start + i as i64 * step,
            inbound_bytes: a.0,
            outbound_bytes: a.1,
            state: if a.2 {
                SampleState::Partial
            } else {
                SampleState::Measured
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const T0: i64 = 1_793_462_400;

    #[test]
    fn measured_zero_partial_zero_and_missing_are_told_apart() {
        // Host 0 sampled intervals 0..4 (2 partial); host 1 only 1..3. The subject is on host 0
        // from interval 1, on host 1 throughout; host 0 stored traffic in interval 3.
        let mut h0 = HostRounds::new(T0, 300, 5);
        let mut h1 = HostRounds::new(T0, 300, 5);
        for k in 0..4 {
            h0.add(T0 + k * 300, k != 2);
        }
        for k in 1..3 {
            h1.add(T0 + k * 300, true);
        }
        let presence = [
            Presence {
                host: 0,
                from: T0 + 300,
                to: None,
            },
            Presence {
                host: 1,
                from: T0,
                to: None,
            },
        ];
        let rows = [Row {
            host: 0,
            start: T0 + 900,
            inbound: 70,
            outbound: 7,
            partial: false,
        }];
        let s = samples(&[h0, h1], &presence, &rows);
        let got: Vec<(i64, u64, SampleState)> = s
            .iter()
            .map(|x| ((x.start - T0) / 300, x.inbound_bytes, x.state))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 0, SampleState::Measured),
                (2, 0, SampleState::Partial),
                (3, 70, SampleState::Measured),
            ],
            "interval 0: host 0 reported but the subject was not there yet, host 1 did not report; 4: nobody"
        );
    }

    /// The naive reconstruction: every (host, interval) a dense sample, then summed.
    fn naive(
        n: usize,
        hosts: &[Vec<u8>],
        presence: &[Presence],
        rows: &[Row],
    ) -> BTreeMap<i64, (u64, u64, bool)> {
        let mut out = BTreeMap::new();
        for (h, cover) in hosts.iter().enumerate() {
            for (i, &c) in cover.iter().enumerate() {
                let t = T0 + i as i64 * 300;
                let present = presence
                    .iter()
                    .any(|p| p.host == h && p.from <= t && p.to.is_none_or(|to| t < to));
                if c == NONE || !present {
                    continue;
                }
                let row = rows.iter().find(|r| r.host == h && r.start == t);
                let (i_, o_, p_) =
                    row.map_or((0, 0, c == PARTIAL), |r| (r.inbound, r.outbound, r.partial));
                let e = out.entry(t).or_insert((0, 0, false));
                e.0 += i_;
                e.1 += o_;
                e.2 |= p_;
            }
        }
        let _ = n;
        out
    }

    proptest! {
        #[test]
        fn sparse_equals_dense(
            n in 1usize..40,
            covers in proptest::collection::vec(proptest::collection::vec(0u8..3, 40), 1..4),
            ranges in proptest::collection::vec((0usize..3, 0i64..45, proptest::option::of(0i64..45)), 0..6),
            traffic in proptest::collection::vec((0usize..3, 0i64..40, 0u64..1000, any::<bool>()), 0..30),
        ) {
            let hosts: Vec<Vec<u8>> = covers.iter().map(|c| c[..n].to_vec()).collect();
            let rounds: Vec<HostRounds> = hosts.iter().map(|cover| {
                let mut r = HostRounds::new(T0, 300, n);
                for (i, &c) in cover.iter().enumerate() {
                    if c != NONE {
                        r.add(T0 + i as i64 * 300, c == COMPLETE);
                    }
                }
                r
            }).collect();
            let presence: Vec<Presence> = ranges.iter()
                .filter(|(h, ..)| *h < hosts.len())
                .map(|&(host, from, to)| Presence {
                    host,
                    from: T0 + from * 300,
                    to: to.map(|t| T0 + (from + t) * 300),
                })
                .collect();
            // Rows only where a host reported and the subject was present (as the shipper
            // writes them); at most one per host and interval.
            let mut rows: Vec<Row> = Vec::new();
            for &(host, k, bytes, partial) in &traffic {
                let t = T0 + k * 300;
                let ok = host < hosts.len() && (k as usize) < n
                    && hosts[host][k as usize] != NONE
                    && presence.iter().any(|p| p.host == host && p.from <= t && p.to.is_none_or(|to| t < to))
                    && !rows.iter().any(|r| r.host == host && r.start == t);
                if ok {
                    rows.push(Row { host, start: t, inbound: bytes, outbound: bytes / 2, partial });
                }
            }
            let got: BTreeMap<i64, (u64, u64, bool)> = samples(&rounds, &presence, &rows)
                .into_iter()
                .map(|s| (s.start, (s.inbound_bytes, s.outbound_bytes, s.state == SampleState::Partial)))
                .collect();
            prop_assert_eq!(got, naive(n, &hosts, &presence, &rows));
        }
    }
}
