//! A restored series is checked before it is used: a checkpoint read back from disk may be
//! damaged in a way its decoder cannot see (fuzzing found one whose month heap was smaller than
//! the month's 95th needs, which panicked at the next scrape). The invariants are the ones
//! `Series::push` keeps.

use super::{DayState, MonthState, Series, TopK};
use crate::billing::{
    calendar::{BILLING_YEARS, Month},
    rules,
};

impl Series {
    /// The series, if its state is one `push` could have built under its calendar.
    pub fn checked(self) -> Result<Self, String> {
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<(), String> {
        // 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z: what the calendar can convert.
        if let Some(t) = self.last_start
            && !(0..=253_402_300_799).contains(&t)
        {
            return Err(format!("last sample at {t}, out of range"));
        }
        let cal = self.cal();
        if let Some(day) = &self.day {
            check_day(self, day)?;
            if self
                .month
                .as_ref()
                .is_none_or(|m| m.month != Month::of(day.date))
            {
                return Err(format!("day {} outside the open month", day.date));
            }
        }
        if let Some(month) = &self.month {
            let n = cal.intervals_between(cal.month_bounds(month.month)) as usize;
            let present = month.tally.present() as usize;
            if present > n {
                return Err(format!("{present} samples in a month of {n} intervals"));
            }
            heap("month", &month.top_p95, rules::discarded(n) + 1, present)?;
            check_month_days(month)?;
        }
        Ok(())
    }
}

fn check_day(series: &Series, day: &DayState) -> Result<(), String> {
    use chrono::Datelike as _;
    if !BILLING_YEARS.contains(&day.date.year()) {
        return Err(format!("day {} out of range", day.date));
    }
    let cal = series.cal();
    let (start, end) = cal.day_bounds(day.date);
    if (day.start, day.end) != (start, end) {
        return Err(format!("day {} with bounds that are not its own", day.date));
    }
    if series.last_start.is_none_or(|t| !(start..end).contains(&t)) {
        return Err(format!("day {} without its last sample in it", day.date));
    }
    let n = cal.intervals_between((start, end)) as usize;
    let present = day.tally.present() as usize;
    if present > n {
        return Err(format!("{present} samples in a day of {n} intervals"));
    }
    heap("day top-5", &day.top5, 5, present)?;
    heap("day", &day.top_p95, rules::discarded(n) + 1, present)
}

fn check_month_days(month: &MonthState) -> Result<(), String> {
    if month.daily_peaks_mbps.len() > 31 || month.daily_bandwidths_mbps.len() > 31 {
        return Err(format!("more than 31 closed days in {:?}", month.month));
    }
    Ok(())
}

/// A heap keeping the `k` largest of `present` values holds `min(present, k)` of them.
fn heap(what: &str, top: &TopK, k: usize, present: usize) -> Result<(), String> {
    if top.k() != k || top.len() != present.min(k) {
        return Err(format!(
            "{what} heap of {} values kept out of {} (k = {}), expected k = {k}",
            top.len(),
            present,
            top.k()
        ));
    }
    Ok(())
}
