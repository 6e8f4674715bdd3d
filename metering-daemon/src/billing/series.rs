//! Streaming billing figures for one series (one EIP, or one shared bandwidth) in bounded
//! memory, equal to the naive rules in [`super::rules`] (property-tested below).
//!
//! Memory per series: the open day keeps its 5 highest samples and the `floor(5% x n_day) + 1`
//! highest (16 for 5-minute intervals), the open month the `floor(5% x n_month) + 1` highest
//! (447 for a 31-day month) plus one peak and one bandwidth per day. Nothing grows with time.
//!
//! Samples must come in increasing interval order, already summed over hosts (see
//! [`super::replay`]). A repeated or older interval is refused, never counted twice.

use std::borrow::Cow;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

mod check;

pub use super::bandwidth::BandwidthHistory;
use super::{
    GbUnit, SampleRule, SampleState, average_bps, billing_bps,
    calendar::{Calendar, Month},
    rules,
    topk::TopK,
};

/// One interval of one series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Interval start, UNIX seconds, aligned.
    pub start: i64,
    pub inbound_bytes: u64,
    pub outbound_bytes: u64,
    pub state: SampleState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesOptions {
    pub rule: SampleRule,
    pub gb_unit: GbUnit,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeriesError {
    #[error("interval start {start} is not aligned to {interval} s in {timezone}")]
    Unaligned {
        start: i64,
        interval: u32,
        timezone: &'static str,
    },
    #[error(
        "interval {start} is not after the last one ({last}): duplicate or late sample refused"
    )]
    NotAfterLast { start: i64, last: i64 },
}

/// Figures of one local day.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DayFigures {
    /// Samples present (measured + partial).
    pub samples: u32,
    pub measured_samples: u32,
    pub partial_samples: u32,
    /// Intervals without a sample between the series' first and last sample.
    pub missing_samples: u32,
    pub inbound_bytes: u64,
    pub outbound_bytes: u64,
    /// Outbound bytes in GB of the configured unit (display; bill from `outbound_bytes`).
    pub outbound_gb: f64,
    /// Enhanced-95 daily peak, truncated to Mbit/s.
    pub enhanced_peak_mbps: u64,
    /// The same peak in bit/s, before truncation.
    pub enhanced_peak_bps: u64,
    /// Classic 95th percentile of the day's samples.
    pub p95_bps: u64,
    /// Present samples x interval.
    pub in_use_seconds: u64,
    /// Largest bandwidth set during the day (when a history is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mbps: Option<u64>,
}

/// Figures of one local month.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonthFigures {
    pub samples: u32,
    pub measured_samples: u32,
    pub partial_samples: u32,
    pub missing_samples: u32,
    /// Days with at least one sample (the daily peaks averaged from).
    pub days: u32,
    pub inbound_bytes: u64,
    pub outbound_bytes: u64,
    pub outbound_gb: f64,
    /// Mean of the top 5 daily peaks (all if fewer), truncated.
    pub enhanced_avg_peak_mbps: u64,
    /// Classic monthly 95th percentile over all samples of the month.
    pub p95_bps: u64,
    /// Present samples / samples per day (288 at 5 minutes).
    pub in_use_days: f64,
    pub in_use_seconds: u64,
    /// Day-weighted mean of 20% of each day's largest bandwidth, truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_mbps: Option<u64>,
    /// max(baseline, average peak): the enhanced-95 billed bandwidth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billed_peak_mbps: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    measured: u32,
    partial: u32,
    missing: u32,
    inbound_bytes: u64,
    outbound_bytes: u64,
}

impl Tally {
    fn present(&self) -> u32 {
        self.measured + self.partial
    }

    fn add(&mut self, s: &Sample) {
        match s.state {
            SampleState::Measured => self.measured += 1,
            SampleState::Partial => self.partial += 1,
        }
        // Saturating: 2^64 bytes in a month is not traffic, but must not crash a router.
        self.inbound_bytes = self.inbound_bytes.saturating_add(s.inbound_bytes);
        self.outbound_bytes = self.outbound_bytes.saturating_add(s.outbound_bytes);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DayState {
    date: NaiveDate,
    /// `[start, end)` of the day, cached so the hot path needs no time-zone conversion.
    start: i64,
    end: i64,
    /// Whether `start` is an interval boundary (false only where a zone skips midnight).
    start_aligned: bool,
    tally: Tally,
    top5: TopK,
    top_p95: TopK,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MonthState {
    month: Month,
    tally: Tally,
    top_p95: TopK,
    daily_peaks_mbps: Vec<u64>,
    daily_bandwidths_mbps: Vec<u64>,
}

/// The open day's and month's figures so far ([`Series::open_figures`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpenFigures {
    pub day: Option<(NaiveDate, DayFigures)>,
    pub month: Option<(Month, MonthFigures)>,
}

/// Days and months whose figures are final.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Closed {
    pub days: Vec<(NaiveDate, DayFigures)>,
    pub months: Vec<(Month, MonthFigures)>,
}

/// The streaming state of one series. Serializable, so a restart resumes the open day and month.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Series {
    #[serde(skip, default = "default_calendar")]
    calendar: Option<Calendar>,
    options: SeriesOptions,
    bandwidth: BandwidthHistory,
    last_start: Option<i64>,
    day: Option<DayState>,
    month: Option<MonthState>,
    #[serde(skip)]
    closed_days: Vec<(NaiveDate, DayFigures)>,
    #[serde(skip)]
    closed_months: Vec<(Month, MonthFigures)>,
}

fn default_calendar() -> Option<Calendar> {
    None
}

impl Series {
    pub fn new(calendar: Calendar, options: SeriesOptions, bandwidth: BandwidthHistory) -> Self {
        Self {
            calendar: Some(calendar),
            options,
            bandwidth,
            last_start: None,
            day: None,
            month: None,
            closed_days: Vec::new(),
            closed_months: Vec::new(),
        }
    }

    /// Re-binds a deserialized series to its calendar (the calendar is configuration, not state).
    pub fn with_calendar(mut self, calendar: Calendar) -> Self {
        self.calendar = Some(calendar);
        self
    }

    fn cal(&self) -> Calendar {
        self.calendar.expect("series bound to a calendar")
    }

    pub fn last_start(&self) -> Option<i64> {
        self.last_start
    }

    /// Records a bandwidth change observed live.
    pub fn record_bandwidth(&mut self, at: i64, mbps: u64) {
        self.bandwidth.push(at, mbps);
    }

    /// Adds one interval. Intervals skipped since the last one count as missing.
    pub fn push(&mut self, sample: Sample) -> Result<(), SeriesError> {
        let cal = self.cal();
        let step = i64::from(cal.interval());
        let aligned = match &self.day {
            Some(d) if d.start_aligned && (d.start..d.end).contains(&sample.start) => {
                (sample.start - d.start) % step == 0
            }
            // The first sample of a day: from the day (remembered for the round), not a
            // time-zone conversion per series.
            _ => {
                let day = cal.local_day(sample.start);
                if day.start_aligned {
                    (sample.start - day.start) % step == 0
                } else {
                    cal.is_aligned(sample.start)
                }
            }
        };
        if !aligned {
            return Err(SeriesError::Unaligned {
                start: sample.start,
                interval: cal.interval(),
                timezone: cal.timezone(),
            });
        }
        if let Some(last) = self.last_start {
            if sample.start <= last {
                return Err(SeriesError::NotAfterLast {
                    start: sample.start,
                    last,
                });
            }
            // The intervals in between are missing: counted a day at a time (fuzzing found a
            // typo'd year walking a few hundred million intervals one by one).
            let mut t = last + step;
            while t < sample.start {
                self.enter(t);
                let day = self.day.as_mut().expect("entered");
                let bound = day.end.min(sample.start);
                let n = (bound - t + step - 1) / step;
                day.tally.missing += n as u32;
                self.month.as_mut().expect("entered").tally.missing += n as u32;
                t += n * step;
            }
        }
        self.enter(sample.start);
        let value = billing_bps(
            self.options.rule,
            average_bps(sample.inbound_bytes, cal.interval()),
            average_bps(sample.outbound_bytes, cal.interval()),
        );
        let day = self.day.as_mut().expect("entered");
        day.tally.add(&sample);
        day.top5.push(value);
        day.top_p95.push(value);
        let month = self.month.as_mut().expect("entered");
        month.tally.add(&sample);
        month.top_p95.push(value);
        self.last_start = Some(sample.start);
        Ok(())
    }

    /// Warms the cache with what the next [`Series::push`] reads outside the series itself
    /// (its heaps' roots, the month's daily peaks): see [`TopK::prefetch`].
    pub fn prefetch(&self) {
        if let Some(day) = &self.day {
            day.top5.prefetch();
            day.top_p95.prefetch();
        }
        if let Some(month) = &self.month {
            month.top_p95.prefetch();
            if let Some(first) = month.daily_peaks_mbps.first() {
                super::topk::prefetch(std::ptr::from_ref(first).cast());
            }
        }
    }

    /// Makes the day and month of `t` the open ones, closing those before.
    fn enter(&mut self, t: i64) {
        if self
            .day
            .as_ref()
            .is_some_and(|d| (d.start..d.end).contains(&t))
        {
            return;
        }
        let cal = self.cal();
        let local = cal.local_day(t);
        let date = local.date;
        // The closed day's and month's heaps are reused for the new ones.
        let closed_day = self.close_day();
        let month = Month::of(date);
        let mut closed_month = None;
        if self.month.as_ref().is_some_and(|m| m.month != month) {
            closed_month = self.close_month();
        }
        if self.month.is_none() {
            let k = rules::discarded(local.month_intervals as usize) + 1;
            let (mut top_p95, mut daily_peaks_mbps, mut daily_bandwidths_mbps) = closed_month
                .map_or_else(
                    || (TopK::new(k), Vec::new(), Vec::new()),
                    |m| (m.top_p95, m.daily_peaks_mbps, m.daily_bandwidths_mbps),
                );
            top_p95.reset(k);
            daily_peaks_mbps.clear();
            daily_bandwidths_mbps.clear();
            self.month = Some(MonthState {
                month,
                tally: Tally::default(),
                top_p95,
                daily_peaks_mbps,
                daily_bandwidths_mbps,
            });
        }
        let k = rules::discarded(local.intervals as usize) + 1;
        let (mut top5, mut top_p95) =
            closed_day.map_or_else(|| (TopK::new(5), TopK::new(k)), |d| (d.top5, d.top_p95));
        top5.reset(5);
        top_p95.reset(k);
        self.day = Some(DayState {
            date,
            start: local.start,
            end: local.end,
            start_aligned: local.start_aligned,
            tally: Tally::default(),
            top5,
            top_p95,
        });
    }

    /// Closes the open day; returns its state (for its heaps).
    fn close_day(&mut self) -> Option<DayState> {
        let day = self.day.take()?;
        let Some(figures) = self.day_figures(&day) else {
            return Some(day); // only missing intervals: counted in the month, no daily figures
        };
        let month = self.month.as_mut().expect("a day lies in a month");
        month.daily_peaks_mbps.push(figures.enhanced_peak_mbps);
        if let Some(bw) = figures.max_bandwidth_mbps {
            month.daily_bandwidths_mbps.push(bw);
        }
        self.closed_days.push((day.date, figures));
        Some(day)
    }

    /// The figures of `day` as they stand (None: no sample in it).
    fn day_figures(&self, day: &DayState) -> Option<DayFigures> {
        let n = day.tally.present();
        if n == 0 {
            return None;
        }
        let cal = self.cal();
        let peak_bps = day.top5.min_kept().expect("a day with samples has a peak");
        Some(DayFigures {
            samples: n,
            measured_samples: day.tally.measured,
            partial_samples: day.tally.partial,
            missing_samples: day.tally.missing,
            inbound_bytes: day.tally.inbound_bytes,
            outbound_bytes: day.tally.outbound_bytes,
            outbound_gb: gb(day.tally.outbound_bytes, self.options.gb_unit),
            enhanced_peak_mbps: rules::mbps_floor(peak_bps),
            enhanced_peak_bps: peak_bps,
            p95_bps: day
                .top_p95
                .nth_largest(rules::discarded(n as usize) + 1)
                .expect("top-k sized for the longest day"),
            in_use_seconds: u64::from(n) * u64::from(cal.interval()),
            max_bandwidth_mbps: self.bandwidth.largest_in(day.start, day.end),
        })
    }

    /// Closes the open month; returns its state (for its heap and vectors).
    fn close_month(&mut self) -> Option<MonthState> {
        let month = self.month.take()?;
        let Some(figures) = self.month_figures(&month, None) else {
            return Some(month);
        };
        self.closed_months.push((month.month, figures));
        // The history before this month can no longer change a figure.
        let (_, end) = self.cal().month_bounds_cached(month.month);
        self.bandwidth.prune_before(end);
        Some(month)
    }

    /// The figures of `month` as they stand, counting `open_day` (the day not closed yet) as
    /// if it ended now. None: no sample in it.
    fn month_figures(
        &self,
        month: &MonthState,
        open_day: Option<&DayFigures>,
    ) -> Option<MonthFigures> {
        let n = month.tally.present();
        if n == 0 {
            return None;
        }
        let cal = self.cal();
        // Copied only to count the open day in (a scrape's view), not when a month closes.
        let (peaks, bandwidths): (Cow<[u64]>, Cow<[u64]>) = match open_day {
            None => (
                Cow::Borrowed(&month.daily_peaks_mbps),
                Cow::Borrowed(&month.daily_bandwidths_mbps),
            ),
            Some(day) => {
                let mut peaks = month.daily_peaks_mbps.clone();
                let mut bandwidths = month.daily_bandwidths_mbps.clone();
                peaks.push(day.enhanced_peak_mbps);
                bandwidths.extend(day.max_bandwidth_mbps);
                (Cow::Owned(peaks), Cow::Owned(bandwidths))
            }
        };
        let average = rules::enhanced_average_peak_mbps(&peaks);
        let baseline = rules::monthly_baseline_mbps(&bandwidths);
        Some(MonthFigures {
            samples: n,
            measured_samples: month.tally.measured,
            partial_samples: month.tally.partial,
            missing_samples: month.tally.missing,
            days: peaks.len() as u32,
            inbound_bytes: month.tally.inbound_bytes,
            outbound_bytes: month.tally.outbound_bytes,
            outbound_gb: gb(month.tally.outbound_bytes, self.options.gb_unit),
            enhanced_avg_peak_mbps: average.unwrap_or(0),
            p95_bps: month
                .top_p95
                .nth_largest(rules::discarded(n as usize) + 1)
                .expect("top-k sized for the month"),
            in_use_days: f64::from(n) / f64::from(cal.samples_per_day()),
            in_use_seconds: u64::from(n) * u64::from(cal.interval()),
            baseline_mbps: baseline,
            billed_peak_mbps: baseline
                .map(|_| rules::billed_peak_mbps(average, baseline).unwrap_or(0)),
        })
    }

    /// The open day's and month's figures so far, as if both closed now (what a scrape or a
    /// report shows before the day is over). Nothing is closed or changed.
    pub fn open_figures(&self) -> OpenFigures {
        let day = self.day.as_ref().and_then(|d| self.day_figures(d));
        let month = self
            .month
            .as_ref()
            .and_then(|m| self.month_figures(m, day.as_ref()));
        OpenFigures {
            day: self.day.as_ref().zip(day).map(|(d, f)| (d.date, f)),
            month: self.month.as_ref().zip(month).map(|(m, f)| (m.month, f)),
        }
    }

    /// Closes the open day and month (end of input, or the EIP was deleted).
    pub fn close(&mut self) {
        let _ = self.close_day();
        let _ = self.close_month();
    }

    /// Takes the days and months closed so far.
    pub fn take_closed(&mut self) -> Closed {
        Closed {
            days: std::mem::take(&mut self.closed_days),
            months: std::mem::take(&mut self.closed_months),
        }
    }
}

fn gb(bytes: u64, unit: GbUnit) -> f64 {
    bytes as f64 / unit.bytes() as f64
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::billing::BPS_PER_MBPS;

    const T0: i64 = 1_793_462_400; // 2026-11-01T00:00:00+08:00

    fn cal() -> Calendar {
        Calendar::new("Asia/Shanghai", 300).unwrap()
    }

    fn sample(start: i64, inbound: u64, outbound: u64) -> Sample {
        Sample {
            start,
            inbound_bytes: inbound,
            outbound_bytes: outbound,
            state: SampleState::Measured,
        }
    }

    /// Bytes that average exactly `mbps` Mbit/s over 300 s.
    fn bytes_for_mbps(mbps: u64) -> u64 {
        mbps * BPS_PER_MBPS * 300 / 8
    }

    type Figures = (Vec<(NaiveDate, DayFigures)>, Vec<(Month, MonthFigures)>);
    type NaiveFigures = (
        BTreeMap<NaiveDate, (u64, u64, u64)>,
        BTreeMap<Month, (u64, u64, u64, u32)>,
    );

    fn run(samples: &[Sample], bw: BandwidthHistory) -> Figures {
        let mut s = Series::new(cal(), SeriesOptions::default(), bw);
        for x in samples {
            s.push(*x).unwrap();
        }
        s.close();
        let closed = s.take_closed();
        (closed.days, closed.months)
    }

    #[test]
    fn brief_worked_example_month() {
        // 16 days in use out of 30; each day 288 samples: 4 spikes at 900, then 300 Mbit/s.
        // Baseline from a 300 Mbit/s bandwidth is 60; average peak is 300; billed 300.
        let mut samples = Vec::new();
        for day in 0..16 {
            for i in 0..288 {
                let mbps = if i < 4 { 900 } else { 300 };
                samples.push(sample(T0 + day * 86_400 + i * 300, 0, bytes_for_mbps(mbps)));
            }
        }
        let (days, months) = run(&samples, BandwidthHistory::new(vec![(T0, 300)]));
        assert_eq!(days.len(), 16);
        assert!(
            days.iter()
                .all(|(_, d)| d.enhanced_peak_mbps == 300 && d.max_bandwidth_mbps == Some(300))
        );
        let (month, m) = &months[0];
        assert_eq!(month.to_string(), "2026-11");
        assert_eq!((m.samples, m.in_use_days), (4608, 16.0));
        assert_eq!(
            (
                m.enhanced_avg_peak_mbps,
                m.baseline_mbps,
                m.billed_peak_mbps
            ),
            (300, Some(60), Some(300))
        );
        assert_eq!(
            rules::enhanced95_fee(300, 15, u64::from(m.samples), 288, 30),
            2400
        );
    }

    #[test]
    fn day_with_fewer_than_five_samples_uses_the_smallest() {
        let s: Vec<_> = [7, 3, 9]
            .iter()
            .enumerate()
            .map(|(i, &m)| sample(T0 + i as i64 * 300, bytes_for_mbps(m), 0))
            .collect();
        let (days, _) = run(&s, BandwidthHistory::default());
        assert_eq!(days[0].1.enhanced_peak_mbps, 3);
        assert_eq!(days[0].1.samples, 3);
    }

    #[test]
    fn truncation_not_rounding() {
        // 299.99999 Mbit/s is billed as 299.
        let s: Vec<_> = (0..5)
            .map(|i| sample(T0 + i * 300, bytes_for_mbps(300) - 1, 0))
            .collect();
        let (days, months) = run(&s, BandwidthHistory::default());
        // (11,250,000,000 - 1) x 8 / 300 = 299,999,999.97 -> 299,999,999 bit/s -> 299 Mbit/s.
        assert_eq!(days[0].1.enhanced_peak_bps, 299_999_999);
        assert_eq!(days[0].1.enhanced_peak_mbps, 299);
        assert_eq!(months[0].1.enhanced_avg_peak_mbps, 299);
    }

    #[test]
    fn the_larger_direction_is_the_sample() {
        let (days, _) = run(
            &[sample(T0, bytes_for_mbps(5), bytes_for_mbps(8))],
            BandwidthHistory::default(),
        );
        assert_eq!(days[0].1.enhanced_peak_mbps, 8);
        let mut inbound_only = Series::new(
            cal(),
            SeriesOptions {
                rule: SampleRule::Inbound,
                ..Default::default()
            },
            BandwidthHistory::default(),
        );
        inbound_only
            .push(sample(T0, bytes_for_mbps(5), bytes_for_mbps(8)))
            .unwrap();
        inbound_only.close();
        assert_eq!(inbound_only.take_closed().days[0].1.enhanced_peak_mbps, 5);
    }

    #[test]
    fn day_boundary_is_local_midnight_and_half_open() {
        // 23:55 local belongs to Oct 31; 00:00 to Nov 1.
        let (days, months) = run(
            &[sample(T0 - 300, 100, 0), sample(T0, 200, 0)],
            BandwidthHistory::default(),
        );
        let labels: Vec<String> = days.iter().map(|(d, _)| d.to_string()).collect();
        assert_eq!(labels, ["2026-10-31", "2026-11-01"]);
        assert_eq!(months.len(), 2);
        assert_eq!(months[0].0.to_string(), "2026-10");
    }

    #[test]
    fn gaps_count_as_missing_and_empty_days_are_not_emitted() {
        // A sample on Nov 1 00:00 and the next on Nov 3 00:00: Nov 2 has no samples.
        let (days, months) = run(
            &[sample(T0, 1, 1), sample(T0 + 2 * 86_400, 1, 1)],
            BandwidthHistory::default(),
        );
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].1.missing_samples, 287);
        assert_eq!(months[0].1.missing_samples, 287 + 288);
        assert_eq!(months[0].1.days, 2);
    }

    #[test]
    fn duplicates_and_late_samples_are_refused() {
        let mut s = Series::new(cal(), SeriesOptions::default(), BandwidthHistory::default());
        s.push(sample(T0 + 300, 1, 1)).unwrap();
        assert!(matches!(
            s.push(sample(T0 + 300, 1, 1)),
            Err(SeriesError::NotAfterLast { .. })
        ));
        assert!(matches!(
            s.push(sample(T0, 1, 1)),
            Err(SeriesError::NotAfterLast { .. })
        ));
        assert!(matches!(
            s.push(sample(T0 + 301, 1, 1)),
            Err(SeriesError::Unaligned { .. })
        ));
        s.close();
        assert_eq!(s.take_closed().days[0].1.inbound_bytes, 1);
    }

    #[test]
    fn bandwidth_resized_within_a_day_uses_the_largest() {
        let bw =
            BandwidthHistory::new(vec![(T0 - 86_400, 100), (T0 + 3600, 300), (T0 + 7200, 200)]);
        let (days, months) = run(&[sample(T0, 1, 1), sample(T0 + 86_400, 1, 1)], bw);
        assert_eq!(days[0].1.max_bandwidth_mbps, Some(300));
        assert_eq!(days[1].1.max_bandwidth_mbps, Some(200));
        // (300/5 + 200/5) / 2 = 50
        assert_eq!(months[0].1.baseline_mbps, Some(50));
    }

    #[test]
    fn months_with_fewer_than_five_days_average_all() {
        let s: Vec<_> = [10u64, 20, 31]
            .iter()
            .enumerate()
            .map(|(d, &m)| sample(T0 + d as i64 * 86_400, bytes_for_mbps(m), 0))
            .collect();
        let (_, months) = run(&s, BandwidthHistory::default());
        assert_eq!(months[0].1.enhanced_avg_peak_mbps, 20); // 61/3 = 20.33
    }

    #[test]
    fn an_eip_created_mid_day_has_fractional_in_use_days() {
        // Created at 12:00: 144 samples that day -> 0.5 in-use days, 43,200 s.
        let s: Vec<_> = (144..288).map(|i| sample(T0 + i * 300, 1, 1)).collect();
        let (days, months) = run(&s, BandwidthHistory::default());
        assert_eq!(days[0].1.in_use_seconds, 43_200);
        assert_eq!(months[0].1.in_use_days, 0.5);
    }

    #[test]
    fn gb_is_decimal_or_binary_as_configured() {
        let one_gib = 1u64 << 30;
        for (unit, expected) in [(GbUnit::Decimal, 1.073741824), (GbUnit::Binary, 1.0)] {
            let mut s = Series::new(
                cal(),
                SeriesOptions {
                    gb_unit: unit,
                    ..Default::default()
                },
                BandwidthHistory::default(),
            );
            s.push(sample(T0, 0, one_gib)).unwrap();
            s.close();
            let c = s.take_closed();
            assert_eq!(c.days[0].1.outbound_gb, expected);
            assert_eq!(c.days[0].1.outbound_bytes, one_gib);
        }
    }

    #[test]
    fn bits_not_bytes_and_decimal_mega() {
        // 37,500,000 bytes in 300 s = 1,000,000 bit/s = exactly 1 Mbit/s (10^6, not 2^20).
        let (days, _) = run(&[sample(T0, 37_500_000, 0)], BandwidthHistory::default());
        assert_eq!(
            (days[0].1.enhanced_peak_bps, days[0].1.enhanced_peak_mbps),
            (1_000_000, 1)
        );
    }

    #[test]
    fn state_survives_serialization() {
        let mut a = Series::new(cal(), SeriesOptions::default(), BandwidthHistory::default());
        for i in 0..10 {
            a.push(sample(T0 + i * 300, i as u64 * 1000, 5)).unwrap();
        }
        let json = serde_json::to_string(&a).unwrap();
        let mut b: Series = serde_json::from_str::<Series>(&json)
            .unwrap()
            .with_calendar(cal());
        for s in [&mut a, &mut b] {
            s.push(sample(T0 + 20 * 300, 77_000, 5)).unwrap();
            s.close();
        }
        assert_eq!(a.take_closed(), b.take_closed());
    }

    // ---- property tests against the naive rules -------------------------------------------

    /// Naive figures: group every sample by local day and month, sort, apply the rules.
    fn naive(samples: &[Sample], interval: u32) -> NaiveFigures {
        let cal = Calendar::new("Asia/Shanghai", interval).unwrap();
        let mut by_day: BTreeMap<NaiveDate, Vec<u64>> = BTreeMap::new();
        let mut out_by_day: BTreeMap<NaiveDate, u64> = BTreeMap::new();
        for s in samples {
            let v =
                average_bps(s.inbound_bytes, interval).max(average_bps(s.outbound_bytes, interval));
            let d = cal.day_of(s.start);
            by_day.entry(d).or_default().push(v);
            let o = out_by_day.entry(d).or_default();
            *o = o.saturating_add(s.outbound_bytes);
        }
        let days: BTreeMap<_, _> = by_day
            .iter()
            .map(|(d, v)| {
                let peak = rules::mbps_floor(rules::enhanced_daily_peak_bps(v).unwrap());
                (*d, (peak, rules::classic_p95(v).unwrap(), out_by_day[d]))
            })
            .collect();
        let mut by_month: BTreeMap<Month, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
        for (d, v) in &by_day {
            let e = by_month.entry(Month::of(*d)).or_default();
            e.0.extend(v);
            e.1.push(days[d].0);
        }
        let months = by_month
            .iter()
            .map(|(m, (all, peaks))| {
                (
                    *m,
                    (
                        rules::enhanced_average_peak_mbps(peaks).unwrap(),
                        rules::classic_p95(all).unwrap(),
                        all.len() as u64,
                        peaks.len() as u32,
                    ),
                )
            })
            .collect();
        (days, months)
    }

    fn series_strategy() -> impl Strategy<Value = (u32, Vec<Sample>)> {
        let interval = prop::sample::select(vec![300u32, 3600, 86_400 / 48]);
        (
            interval,
            prop::collection::vec((1u32..4, 0u64..3, prop::bool::ANY), 1..1200),
        )
            .prop_map(|(interval, steps)| {
                // Start a few days before a month boundary so series cross it; steps skip 0-2
                // intervals; byte values mix ties, zeros and huge numbers.
                let mut t = T0 - 3 * 86_400;
                let mut out = Vec::new();
                for (i, (skip, magnitude, tie)) in steps.into_iter().enumerate() {
                    t += i64::from(skip) * i64::from(interval);
                    let base: u64 = match magnitude {
                        0 => 0,
                        1 => 1_000_000_000,
                        _ => 1_000_000_000_000_000, // 26.7 Tbit/s over 5 minutes
                    };
                    let bytes = if tie {
                        base
                    } else {
                        base.wrapping_add((i as u64).wrapping_mul(2_654_435_761))
                            % (base.max(1) * 2)
                    };
                    out.push(Sample {
                        start: t,
                        inbound_bytes: bytes,
                        outbound_bytes: bytes / 3 + (i as u64 % 7) * 1_000_003,
                        state: SampleState::Measured,
                    });
                }
                (interval, out)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn streaming_equals_naive((interval, samples) in series_strategy()) {
            let cal = Calendar::new("Asia/Shanghai", interval).unwrap();
            let mut s = Series::new(cal, SeriesOptions::default(), BandwidthHistory::default());
            for x in &samples {
                s.push(*x).unwrap();
            }
            s.close();
            let Closed { days, months } = s.take_closed();
            let (naive_days, naive_months) = naive(&samples, interval);
            prop_assert_eq!(days.len(), naive_days.len());
            for (d, f) in &days {
                let (peak, p95, out) = naive_days[d];
                prop_assert_eq!((f.enhanced_peak_mbps, f.p95_bps, f.outbound_bytes), (peak, p95, out), "day {}", d);
            }
            prop_assert_eq!(months.len(), naive_months.len());
            for (m, f) in &months {
                let (avg, p95, n, ndays) = naive_months[m];
                prop_assert_eq!((f.enhanced_avg_peak_mbps, f.p95_bps, u64::from(f.samples), f.days), (avg, p95, n, ndays), "month {}", m);
            }
        }

        /// What a scrape shows mid-series is exactly what closing there would give.
        #[test]
        fn open_figures_equal_closing_now((interval, samples) in series_strategy(), cut in 0usize..400) {
            let cal = Calendar::new("Asia/Shanghai", interval).unwrap();
            let history = BandwidthHistory::new(vec![(0, 100), (T0 + 3_600, 300)]);
            let mut s = Series::new(cal, SeriesOptions::default(), history);
            for x in samples.iter().take(cut) {
                s.push(*x).unwrap();
            }
            s.take_closed();
            let open = s.open_figures();
            let mut closed = s.clone();
            closed.close();
            let Closed { days, months } = closed.take_closed();
            prop_assert_eq!(open.day, days.last().cloned());
            prop_assert_eq!(open.month, months.last().cloned());
        }
    }

    #[test]
    fn full_month_p95_is_the_433rd_of_8640() {
        // Every sample distinct: the classic 95th of a 30-day month is the 433rd highest.
        let samples: Vec<_> = (0..8640)
            .map(|i| sample(T0 + i * 300, (i as u64 + 1) * 375, 0))
            .collect();
        let (_, months) = run(&samples, BandwidthHistory::default());
        // value i+1 -> (i+1)*375*8/300 = (i+1)*10 bit/s; the 433rd highest is 8640-432 = 8208.
        assert_eq!(months[0].1.p95_bps, 82_080);
        assert_eq!(months[0].1.samples, 8640);
    }
}
