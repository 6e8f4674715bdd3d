//! Days and months of the billing time zone, and interval alignment. Pure: the time zone
//! database is compiled in (chrono-tz), nothing reads the clock.
//!
//! Intervals are half-open `[t, t + interval)` and labelled by their start; a sample belongs to
//! the local day and month of its start.

use std::cell::Cell;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Offset, TimeZone};
use chrono_tz::Tz;

/// China Standard Time, the zone of the product documents.
pub const DEFAULT_TIMEZONE: &str = "Asia/Shanghai";
/// Five minutes.
pub const DEFAULT_INTERVAL_SECONDS: u32 = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CalendarError {
    #[error("unknown time zone `{0}` (use an IANA name such as Asia/Shanghai or UTC)")]
    UnknownTimezone(String),
    #[error("interval {0} s must be between 1 and 86400 and divide 86400 (one day) evenly")]
    BadInterval(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calendar {
    tz: Tz,
    interval: u32,
}

/// One local day as a series needs it ([`Calendar::local_day`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalDay {
    pub date: NaiveDate,
    /// `[start, end)` as UNIX seconds.
    pub start: i64,
    pub end: i64,
    /// Whether the day's interval boundaries are `start + k x interval`: `start` is one, and
    /// no offset change inside the day moves them (a DST shift that is not a multiple of the
    /// interval, such as Lord Howe's 30 minutes with hourly intervals). False: check each
    /// instant with [`Calendar::is_aligned`].
    pub start_aligned: bool,
    /// Intervals in the day, and in its month.
    pub intervals: u32,
    pub month_intervals: u32,
}

/// A calendar month.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "RawMonth")]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

/// Years a bill can name: a month or day outside them in stored state is damage, refused
/// where it is read rather than met by a time-zone conversion that cannot represent it.
pub const BILLING_YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

#[derive(serde::Deserialize)]
struct RawMonth {
    year: i32,
    month: u32,
}

impl TryFrom<RawMonth> for Month {
    type Error = String;

    fn try_from(raw: RawMonth) -> Result<Self, String> {
        Month::new(raw.year, raw.month)
            .ok_or_else(|| format!("month {}-{} out of range", raw.year, raw.month))
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Month {
    /// A month of [`BILLING_YEARS`].
    pub fn new(year: i32, month: u32) -> Option<Self> {
        (BILLING_YEARS.contains(&year) && (1..=12).contains(&month)).then_some(Self { year, month })
    }

    pub fn of(date: NaiveDate) -> Self {
        Self {
            year: date.year(),
            month: date.month(),
        }
    }

    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("valid month")
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// 28, 29, 30 or 31.
    pub fn days(self) -> u32 {
        (self.next().first_day() - self.first_day()).num_days() as u32
    }
}

impl Calendar {
    pub fn new(timezone: &str, interval_seconds: u32) -> Result<Self, CalendarError> {
        let tz: Tz = timezone
            .parse()
            .map_err(|_| CalendarError::UnknownTimezone(timezone.to_owned()))?;
        if interval_seconds == 0 || 86_400 % interval_seconds != 0 {
            return Err(CalendarError::BadInterval(interval_seconds));
        }
        Ok(Self {
            tz,
            interval: interval_seconds,
        })
    }

    /// The zone itself.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    pub fn timezone(&self) -> &'static str {
        self.tz.name()
    }

    pub fn interval(&self) -> u32 {
        self.interval
    }

    /// Intervals in a 24-hour day (288 for 5 minutes): the denominator of in-use days.
    pub fn samples_per_day(&self) -> u32 {
        86_400 / self.interval
    }

    fn local(&self, t: i64) -> DateTime<Tz> {
        self.tz
            .timestamp_opt(t, 0)
            .single()
            .expect("a UNIX timestamp maps to one instant")
    }

    /// Local UTC offset in seconds at instant `t`.
    pub fn offset_seconds(&self, t: i64) -> i64 {
        i64::from(self.local(t).offset().fix().local_minus_utc())
    }

    /// Whether `t` is an interval boundary of local wall-clock time.
    pub fn is_aligned(&self, t: i64) -> bool {
        (t + self.offset_seconds(t)).rem_euclid(i64::from(self.interval)) == 0
    }

    /// The interval containing `t` (its start).
    pub fn interval_start(&self, t: i64) -> i64 {
        let local = t + self.offset_seconds(t);
        t - local.rem_euclid(i64::from(self.interval))
    }

    /// Local date of instant `t`.
    pub fn day_of(&self, t: i64) -> NaiveDate {
        self.local(t).date_naive()
    }

    /// `[start, end)` of a local day as UNIX seconds (23 or 25 hours on DST change days).
    pub fn day_bounds(&self, date: NaiveDate) -> (i64, i64) {
        let next = date + Duration::days(1);
        (self.midnight(date), self.midnight(next))
    }

    /// `[start, end)` of a local month as UNIX seconds.
    pub fn month_bounds(&self, month: Month) -> (i64, i64) {
        (
            self.midnight(month.first_day()),
            self.midnight(month.next().first_day()),
        )
    }

    /// Intervals in a local day or month (its length over the interval).
    pub fn intervals_between(&self, (start, end): (i64, i64)) -> u32 {
        ((end - start) / i64::from(self.interval)) as u32
    }

    /// The local day containing `t`. The last one asked is remembered per thread: a round asks
    /// for the same day once per EIP, and its time-zone conversions, made per EIP, were a
    /// seventh of the round closing a month for a million EIPs.
    pub fn local_day(&self, t: i64) -> LocalDay {
        thread_local! {
            static LAST: Cell<Option<(Calendar, LocalDay)>> = const { Cell::new(None) };
        }
        if let Some((calendar, day)) = LAST.get()
            && calendar == *self
            && (day.start..day.end).contains(&t)
        {
            return day;
        }
        let date = self.day_of(t);
        let (start, end) = self.day_bounds(date);
        let day = LocalDay {
            date,
            start,
            end,
            // A day is 24 hours but for its offset changes, so its length is a whole number of
            // intervals exactly when its shifts keep the boundaries where they were.
            start_aligned: self.is_aligned(start) && (end - start) % i64::from(self.interval) == 0,
            intervals: self.intervals_between((start, end)),
            month_intervals: self.intervals_between(self.month_bounds(Month::of(date))),
        };
        LAST.set(Some((*self, day)));
        day
    }

    /// [`Calendar::month_bounds`], the last month asked remembered per thread (as
    /// [`Calendar::local_day`]).
    pub fn month_bounds_cached(&self, month: Month) -> (i64, i64) {
        /// A month of a calendar and its bounds.
        type Remembered = (Calendar, Month, (i64, i64));
        thread_local! {
            static LAST: Cell<Option<Remembered>> = const { Cell::new(None) };
        }
        if let Some((calendar, m, bounds)) = LAST.get()
            && calendar == *self
            && m == month
        {
            return bounds;
        }
        let bounds = self.month_bounds(month);
        LAST.set(Some((*self, month, bounds)));
        bounds
    }

    fn midnight(&self, date: NaiveDate) -> i64 {
        let mut time = date.and_time(NaiveTime::MIN);
        // A zone may skip local midnight (DST at 00:00): the day starts at the first instant
        // that exists.
        for _ in 0..24 * 4 {
            if let Some(dt) = self.tz.from_local_datetime(&time).earliest() {
                return dt.timestamp();
            }
            time += Duration::minutes(15);
        }
        unreachable!("no zone skips more than a day")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn days_follow_the_configured_zone() {
        let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
        // 2026-10-31T16:00:00Z is 2026-11-01 00:00 in China.
        assert_eq!(
            cal.day_of(utc("2026-10-31T16:00:00Z")).to_string(),
            "2026-11-01"
        );
        assert_eq!(
            cal.day_of(utc("2026-10-31T15:55:00Z")).to_string(),
            "2026-10-31"
        );
        let (start, end) = cal.day_bounds(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
        assert_eq!((start, end - start), (utc("2026-10-31T16:00:00Z"), 86_400));
    }

    #[test]
    fn alignment_is_local_wall_clock() {
        let cal = Calendar::new("Asia/Kolkata", 3600).unwrap(); // UTC+05:30
        assert!(cal.is_aligned(utc("2026-11-01T00:30:00Z"))); // 06:00 local
        assert!(!cal.is_aligned(utc("2026-11-01T01:00:00Z")));
        assert_eq!(
            cal.interval_start(utc("2026-11-01T01:00:00Z")),
            utc("2026-11-01T00:30:00Z")
        );
        let five = Calendar::new("Asia/Shanghai", 300).unwrap();
        assert!(five.is_aligned(utc("2026-11-01T00:05:00Z")));
        assert!(!five.is_aligned(utc("2026-11-01T00:05:01Z")));
    }

    #[test]
    fn month_lengths() {
        for (y, m, d) in [
            (2026, 2, 28),
            (2028, 2, 29),
            (2026, 4, 30),
            (2026, 12, 31),
            (2100, 2, 28),
        ] {
            assert_eq!(Month { year: y, month: m }.days(), d, "{y}-{m}");
        }
        let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
        assert_eq!(
            cal.intervals_between(cal.month_bounds(Month {
                year: 2026,
                month: 11
            })),
            8640
        );
        assert_eq!(
            cal.intervals_between(cal.month_bounds(Month {
                year: 2026,
                month: 12
            })),
            8928
        );
    }

    #[test]
    fn dst_days_have_23_or_25_hours() {
        let cal = Calendar::new("Europe/Berlin", 300).unwrap();
        let spring = cal.day_bounds(NaiveDate::from_ymd_opt(2026, 3, 29).unwrap());
        let autumn = cal.day_bounds(NaiveDate::from_ymd_opt(2026, 10, 25).unwrap());
        assert_eq!(cal.intervals_between(spring), 276);
        assert_eq!(cal.intervals_between(autumn), 300);
    }

    #[test]
    fn local_day_equals_the_conversions_it_remembers() {
        // Across zones, DST days and a month boundary, asked in an order that hits and misses
        // the remembered day (and switches calendars, which must not share it).
        let zones = ["Asia/Shanghai", "Europe/Berlin", "America/Sao_Paulo", "UTC"];
        let calendars: Vec<Calendar> = zones
            .iter()
            .map(|z| Calendar::new(z, 300).unwrap())
            .collect();
        let from = utc("2026-03-27T00:00:00Z");
        for step in 0..(12 * 24 * 6) {
            let t = from + step * 1_500;
            for cal in &calendars {
                let date = cal.day_of(t);
                let (start, end) = cal.day_bounds(date);
                let expected = LocalDay {
                    date,
                    start,
                    end,
                    start_aligned: cal.is_aligned(start)
                        && (start..end).step_by(300).all(|b| cal.is_aligned(b)),
                    intervals: cal.intervals_between((start, end)),
                    month_intervals: cal.intervals_between(cal.month_bounds(Month::of(date))),
                };
                assert_eq!(cal.local_day(t), expected, "{} at {t}", cal.timezone());
                assert_eq!(
                    cal.local_day(t),
                    expected,
                    "{} at {t}, remembered",
                    cal.timezone()
                );
                let month = Month::of(date);
                assert_eq!(cal.month_bounds_cached(month), cal.month_bounds(month));
            }
        }
    }

    #[test]
    fn a_day_whose_shift_moves_the_boundaries_is_not_aligned_from_its_start() {
        // Lord Howe moves its clocks by 30 minutes: with hourly intervals the boundaries after
        // the shift are not `start + k x 3600`; with 30-minute ones they are.
        let hourly = Calendar::new("Australia/Lord_Howe", 3600).unwrap();
        let half = Calendar::new("Australia/Lord_Howe", 1800).unwrap();
        let shift_day = utc("2026-10-04T06:00:00Z"); // noon local, after the 02:00 shift
        let ordinary = utc("2026-10-10T06:00:00Z");
        assert!(!hourly.local_day(shift_day).start_aligned);
        assert!(hourly.local_day(ordinary).start_aligned);
        assert!(half.local_day(shift_day).start_aligned);
        // Each instant is still judged by the wall clock: noon local is a boundary.
        assert!(hourly.is_aligned(shift_day));
        assert_eq!(
            (shift_day - hourly.local_day(shift_day).start) % 3600,
            1800,
            "relative to the day's start it is not"
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(
            Calendar::new("Mars/Olympus", 300),
            Err(CalendarError::UnknownTimezone("Mars/Olympus".into()))
        );
        assert_eq!(Calendar::new("UTC", 7), Err(CalendarError::BadInterval(7)));
        assert_eq!(Calendar::new("UTC", 0), Err(CalendarError::BadInterval(0)));
    }
}
