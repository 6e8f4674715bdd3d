//! Offline replay (`eip-meter compute`): raw samples in CSV, billing figures out as JSON, so an
//! auditor can recompute every figure from the samples alone.
//!
//! Samples: `eip,interval_start,bytes_in,bytes_out[,host[,state]]` after a header line;
//! `interval_start` is RFC 3339 with an offset, `state` is `measured` (the default) or `partial`
//! (an interval not wholly metered: a sum over hosts is partial if any of its rows is). Rows of the same EIP and interval from different hosts (the two
//! routers of a dual-active pair) are summed before anything else; the same host twice is an
//! error. Bandwidth history: `eip,effective_from,bandwidth_mbps`.
//!
//! Every problem is collected with its line number; if there is any, no figures are produced.
//! Missing intervals are skipped: figures are taken over the samples present, and the gaps are
//! counted as `missing_samples`.

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    io::Read,
    net::IpAddr,
};

use chrono::DateTime;
use serde::Serialize;

use super::{
    GbUnit, SampleRule, SampleState,
    calendar::Calendar,
    series::{BandwidthHistory, DayFigures, MonthFigures, Sample, Series, SeriesOptions},
};

/// One problem in an input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError {
    pub file: &'static str,
    pub line: u64,
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}: {}", self.file, self.line, self.message)
    }
}

/// Figures of one EIP.
#[derive(Debug, Default, Serialize)]
pub struct EipFigures {
    pub days: BTreeMap<String, DayFigures>,
    pub months: BTreeMap<String, MonthFigures>,
}

/// The whole `compute` output.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Shared bandwidths (with `--groups`): their EIPs' samples summed per interval.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, EipFigures>,
    pub interval_seconds: u32,
    pub timezone: &'static str,
    pub sample_rule: SampleRule,
    pub gb_unit: GbUnit,
    /// How absent intervals are treated.
    pub missing_policy: &'static str,
    pub eips: BTreeMap<String, EipFigures>,
}

/// How absent intervals are treated (the report's `missing_policy`).
pub const MISSING_POLICY: &str =
    "skip: figures over the samples present; gaps counted in missing_samples";

/// Sum of one interval over hosts, with where it came from.
struct Cell {
    inbound: u64,
    outbound: u64,
    partial: bool,
    hosts: HashMap<String, u64>,
}

/// One interval of a series: `(start, inbound bytes, outbound bytes, partial)`.
pub type Row = (i64, u64, u64, bool);

/// Parses the samples, sums per interval over hosts, and computes every figure.
pub fn compute(
    samples_csv: impl Read,
    bandwidth_csv: Option<impl Read>,
    calendar: Calendar,
    options: SeriesOptions,
) -> Result<Report, Vec<InputError>> {
    compute_with_groups(samples_csv, bandwidth_csv, None::<&[u8]>, calendar, options)
}

/// [`compute`], plus shared-bandwidth figures from a `eip,group` CSV: a group's interval value
/// is the sum of its EIPs' bytes in that interval (before any percentile), and its bandwidth
/// history is read from the bandwidth file under the group's name in the `eip` column.
pub fn compute_with_groups(
    samples_csv: impl Read,
    bandwidth_csv: Option<impl Read>,
    groups_csv: Option<impl Read>,
    calendar: Calendar,
    options: SeriesOptions,
) -> Result<Report, Vec<InputError>> {
    let mut errors = Vec::new();
    let cells = read_samples(samples_csv, &calendar, &mut errors);
    let (bandwidth, group_bandwidth) = match bandwidth_csv {
        Some(r) => read_bandwidth(r, &mut errors),
        None => (HashMap::new(), HashMap::new()),
    };
    let groups = match groups_csv {
        Some(r) => read_groups(r, &mut errors),
        None => HashMap::new(),
    };
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut by_eip: BTreeMap<IpAddr, Vec<Row>> = BTreeMap::new();
    let mut by_group: BTreeMap<String, BTreeMap<i64, (u64, u64, bool)>> = BTreeMap::new();
    for ((eip, start), cell) in cells {
        by_eip
            .entry(eip)
            .or_default()
            .push((start, cell.inbound, cell.outbound, cell.partial));
        if let Some(group) = groups.get(&eip) {
            let e = by_group
                .entry(group.clone())
                .or_default()
                .entry(start)
                .or_default();
            e.0 = e.0.saturating_add(cell.inbound);
            e.1 = e.1.saturating_add(cell.outbound);
            e.2 |= cell.partial;
        }
    }
    let mut report = Report {
        groups: BTreeMap::new(),
        interval_seconds: calendar.interval(),
        timezone: calendar.timezone(),
        sample_rule: options.rule,
        gb_unit: options.gb_unit,
        missing_policy: MISSING_POLICY,
        eips: BTreeMap::new(),
    };
    for (eip, mut rows) in by_eip {
        rows.sort_unstable_by_key(|r| r.0);
        let history = bandwidth.get(&eip).cloned().unwrap_or_default();
        report
            .eips
            .insert(eip.to_string(), figures(rows, history, calendar, options));
    }
    for (group, rows) in by_group {
        let history = group_bandwidth.get(&group).cloned().unwrap_or_default();
        let rows = rows
            .into_iter()
            .map(|(t, (i, o, p))| (t, i, o, p))
            .collect();
        report
            .groups
            .insert(group, figures(rows, history, calendar, options));
    }
    Ok(report)
}

/// Runs one sorted series of `(start, inbound, outbound, partial)` through the streaming
/// engine.
pub fn figures(
    rows: Vec<Row>,
    history: BandwidthHistory,
    calendar: Calendar,
    options: SeriesOptions,
) -> EipFigures {
    let mut series = Series::new(calendar, options, history);
    for (start, inbound, outbound, partial) in rows {
        series
            .push(Sample {
                start,
                inbound_bytes: inbound,
                outbound_bytes: outbound,
                state: if partial {
                    SampleState::Partial
                } else {
                    SampleState::Measured
                },
            })
            .expect("rows are aligned, unique and sorted");
    }
    series.close();
    let super::series::Closed { days, months } = series.take_closed();
    EipFigures {
        days: days.into_iter().map(|(d, f)| (d.to_string(), f)).collect(),
        months: months
            .into_iter()
            .map(|(m, f)| (m.to_string(), f))
            .collect(),
    }
}

fn reader(r: impl Read) -> csv::Reader<impl Read> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(r)
}

fn parse_eip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map(crate::addr::normalize)
        .map_err(|_| format!("`{s}` is not an IP address"))
}

fn parse_time(s: &str, what: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|e| format!("{what} `{s}` is not RFC 3339 with an offset ({e})"))
}

fn parse_count(s: &str, what: &str) -> Result<u64, String> {
    s.parse::<u64>().map_err(|_| {
        if s.starts_with('-') {
            format!("{what} `{s}` is negative")
        } else {
            format!("{what} `{s}` is not a whole number")
        }
    })
}

/// Calls `row` for every row of a CSV input with its line number and a way to report a problem
/// on that line; rows the CSV reader cannot read are reported here.
fn for_each_row(
    r: impl Read,
    file: &'static str,
    errors: &mut Vec<InputError>,
    mut row: impl FnMut(&csv::StringRecord, &mut dyn FnMut(String)),
) {
    for record in reader(r).records() {
        match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                row(&record, &mut |message| {
                    errors.push(InputError {
                        file,
                        line,
                        message,
                    })
                });
            }
            Err(e) => errors.push(InputError {
                file,
                line: e.position().map_or(0, |p| p.line()),
                message: e.to_string(),
            }),
        }
    }
}

/// One row of a samples CSV, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleInput {
    pub line: u64,
    pub eip: IpAddr,
    pub start: i64,
    /// `interval_start` as written (for messages).
    pub start_text: String,
    pub inbound: u64,
    pub outbound: u64,
    /// Empty when the row names none.
    pub host: String,
    pub partial: bool,
}

/// Checks every row of a samples CSV: bad rows go to `errors`; good ones to `row`, which may
/// refuse one (a duplicate) by calling its second argument with the reason.
pub fn parse_samples(
    r: impl Read,
    calendar: &Calendar,
    errors: &mut Vec<InputError>,
    mut row: impl FnMut(SampleInput, &mut dyn FnMut(String)),
) {
    for_each_row(r, "samples", errors, |record, fail| {
        let line = record.position().map_or(0, |p| p.line());
        if !(4..=6).contains(&record.len()) {
            fail(format!(
                "expected eip,interval_start,bytes_in,bytes_out[,host[,state]], got {} fields",
                record.len()
            ));
            return;
        }
        let partial = match record.get(5).unwrap_or("") {
            "" | "measured" => false,
            "partial" => true,
            other => {
                fail(format!("state `{other}` is not `measured` or `partial`"));
                return;
            }
        };
        let parsed = (
            parse_eip(&record[0]),
            parse_time(&record[1], "interval_start"),
            parse_count(&record[2], "bytes_in"),
            parse_count(&record[3], "bytes_out"),
        );
        let (eip, start, inbound, outbound) = match parsed {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            (a, b, c, d) => {
                for e in [a.err(), b.err(), c.err(), d.err()].into_iter().flatten() {
                    fail(e);
                }
                return;
            }
        };
        if !calendar.is_aligned(start) {
            fail(format!(
                "interval_start `{}` is not on a {} s boundary in {}",
                &record[1],
                calendar.interval(),
                calendar.timezone()
            ));
            return;
        }
        row(
            SampleInput {
                line,
                eip,
                start,
                start_text: record[1].to_owned(),
                inbound,
                outbound,
                host: record.get(4).unwrap_or("").to_owned(),
                partial,
            },
            fail,
        );
    });
}

/// The message for a second row of the same EIP, interval and host.
pub fn duplicate_message(s: &SampleInput, first_line: u64) -> String {
    let host = if s.host.is_empty() {
        "(no host)"
    } else {
        s.host.as_str()
    };
    format!(
        "{} at {} from host {host} again (first on line {first_line}): duplicate sample",
        s.eip, s.start_text
    )
}

fn read_samples(
    r: impl Read,
    calendar: &Calendar,
    errors: &mut Vec<InputError>,
) -> BTreeMap<(IpAddr, i64), Cell> {
    let mut cells: BTreeMap<(IpAddr, i64), Cell> = BTreeMap::new();
    parse_samples(r, calendar, errors, |s, fail| {
        let cell = cells.entry((s.eip, s.start)).or_insert_with(|| Cell {
            inbound: 0,
            outbound: 0,
            partial: false,
            hosts: HashMap::new(),
        });
        match cell.hosts.entry(s.host.clone()) {
            Entry::Occupied(first) => fail(duplicate_message(&s, *first.get())),
            Entry::Vacant(v) => {
                v.insert(s.line);
                cell.inbound = cell.inbound.saturating_add(s.inbound);
                cell.outbound = cell.outbound.saturating_add(s.outbound);
                cell.partial |= s.partial;
            }
        }
    });
    cells
}

/// Bandwidth histories by EIP, and by group name (rows whose first column is not an address).
pub type Histories = (
    HashMap<IpAddr, BandwidthHistory>,
    HashMap<String, BandwidthHistory>,
);

pub fn read_bandwidth(r: impl Read, errors: &mut Vec<InputError>) -> Histories {
    let mut changes: HashMap<IpAddr, Vec<(i64, u64)>> = HashMap::new();
    let mut group_changes: HashMap<String, Vec<(i64, u64)>> = HashMap::new();
    for_each_row(r, "bandwidth history", errors, |record, fail| {
        if record.len() != 3 {
            fail(format!(
                "expected eip,effective_from,bandwidth_mbps, got {} fields",
                record.len()
            ));
            return;
        }
        // A first column that is not an address names a shared bandwidth (group).
        let name = record[0].to_owned();
        let looks_like_address = name.contains(['.', ':']);
        match (
            parse_time(&record[1], "effective_from"),
            parse_count(&record[2], "bandwidth_mbps"),
        ) {
            (Ok(t), Ok(bw)) if looks_like_address => match parse_eip(&name) {
                Ok(eip) => changes.entry(eip).or_default().push((t, bw)),
                Err(message) => fail(message),
            },
            (Ok(t), Ok(bw)) => group_changes.entry(name).or_default().push((t, bw)),
            (a, b) => {
                for message in [a.err(), b.err()].into_iter().flatten() {
                    fail(message);
                }
            }
        }
    });
    (
        changes
            .into_iter()
            .map(|(eip, c)| (eip, BandwidthHistory::new(c)))
            .collect(),
        group_changes
            .into_iter()
            .map(|(g, c)| (g, BandwidthHistory::new(c)))
            .collect(),
    )
}

pub fn read_groups(r: impl Read, errors: &mut Vec<InputError>) -> HashMap<IpAddr, String> {
    let mut out: HashMap<IpAddr, (String, u64)> = HashMap::new();
    for_each_row(r, "groups", errors, |record, fail| {
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != 2 || record[1].is_empty() {
            fail("expected eip,group".to_owned());
            return;
        }
        match parse_eip(&record[0]) {
            Ok(eip) => {
                if let Some((g, first)) = out.get(&eip) {
                    fail(format!("{eip} is already in group {g} (line {first})"));
                } else {
                    out.insert(eip, (record[1].to_owned(), line));
                }
            }
            Err(e) => fail(e),
        }
    });
    out.into_iter().map(|(eip, (g, _))| (eip, g)).collect()
}

/// Parses a rounds CSV, `host,interval_start,coverage`: the intervals each host sampled, with
/// `coverage` `complete` (every uplink metered throughout) or `incomplete`/`spread` (not).
/// With a presence file, it tells a measured zero from a missing interval (see `fleet`).
pub fn parse_rounds(
    r: impl Read,
    calendar: &Calendar,
    errors: &mut Vec<InputError>,
    mut row: impl FnMut(&str, i64, bool),
) {
    for_each_row(r, "rounds", errors, |record, fail| {
        if record.len() != 3 || record[0].is_empty() {
            fail("expected host,interval_start,coverage".to_owned());
            return;
        }
        let complete = match &record[2] {
            "complete" => true,
            "incomplete" | "spread" => false,
            other => {
                fail(format!(
                    "coverage `{other}` is not complete, incomplete or spread"
                ));
                return;
            }
        };
        match parse_time(&record[1], "interval_start") {
            Ok(t) if calendar.is_aligned(t) => row(&record[0], t, complete),
            Ok(_) => fail(format!(
                "interval_start `{}` is not on a {} s boundary in {}",
                &record[1],
                calendar.interval(),
                calendar.timezone()
            )),
            Err(e) => fail(e),
        }
    });
}

/// Parses a presence CSV, `eip,host,from,to`: when an EIP was in a host's inventory, the
/// interval starts `[from, to)`, `to` empty while it still is.
pub fn parse_presence(
    r: impl Read,
    errors: &mut Vec<InputError>,
    mut row: impl FnMut(IpAddr, &str, i64, Option<i64>),
) {
    for_each_row(r, "presence", errors, |record, fail| {
        if record.len() != 4 || record[1].is_empty() {
            fail("expected eip,host,from,to".to_owned());
            return;
        }
        let to = match &record[3] {
            "" => Ok(None),
            t => parse_time(t, "to").map(Some),
        };
        match (parse_eip(&record[0]), parse_time(&record[2], "from"), to) {
            (Ok(eip), Ok(from), Ok(to)) if to.is_none_or(|t| t > from) => {
                row(eip, &record[1], from, to)
            }
            (Ok(_), Ok(_), Ok(_)) => fail("`to` is not after `from`".to_owned()),
            (a, b, c) => {
                for e in [a.err(), b.err(), c.err()].into_iter().flatten() {
                    fail(e);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal() -> Calendar {
        Calendar::new("Asia/Shanghai", 300).unwrap()
    }

    fn run(samples: &str, bw: Option<&str>) -> Result<Report, Vec<InputError>> {
        compute(
            samples.as_bytes(),
            bw.map(str::as_bytes),
            cal(),
            SeriesOptions::default(),
        )
    }

    fn errors(samples: &str) -> Vec<String> {
        run(samples, None)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn two_routers_are_summed_before_the_percentile() {
        // Each router alone carries 60 Mbit/s; together 120: the peak is 120, not 60.
        let bytes = 60 * 1_000_000 * 300 / 8;
        let mut csv = String::from("eip,interval_start,bytes_in,bytes_out,host\n");
        for i in 0..5 {
            let t = format!("2026-11-01T00:{:02}:00+08:00", i * 5);
            csv += &format!("203.0.113.10,{t},{bytes},0,r1\n203.0.113.10,{t},{bytes},0,r2\n");
        }
        let r = run(&csv, None).unwrap();
        let day = &r.eips["203.0.113.10"].days["2026-11-01"];
        assert_eq!(
            (day.samples, day.enhanced_peak_mbps, day.inbound_bytes),
            (5, 120, 10 * bytes)
        );
    }

    #[test]
    fn rows_in_any_order_give_the_same_figures() {
        let sorted = "eip,interval_start,bytes_in,bytes_out\n203.0.113.1,2026-11-01T00:00:00+08:00,10,20\n203.0.113.1,2026-11-01T00:05:00+08:00,30,40\n";
        let shuffled = "eip,interval_start,bytes_in,bytes_out\n203.0.113.1,2026-10-31T16:05:00Z,30,40\n203.0.113.1,2026-11-01T00:00:00+08:00,10,20\n";
        let a = serde_json::to_string(&run(sorted, None).unwrap()).unwrap();
        let b = serde_json::to_string(&run(shuffled, None).unwrap()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn every_bad_row_is_named_and_nothing_is_computed() {
        let e = errors(
            "eip,interval_start,bytes_in,bytes_out,host\n\
             203.0.113.1,2026-11-01T00:00:00+08:00,10,20,r1\n\
             203.0.113.1,2026-11-01T00:00:00+08:00,10,20,r1\n\
             203.0.113.1,2026-11-01T00:01:00+08:00,10,20,r1\n\
             203.0.113.1,2026-11-01T00:10:00+08:00,-5,20,r1\n\
             203.0.113.1,2026-11-01T00:15:00+08:00,ten,20,r1\n\
             203.0.113.999,2026-11-01T00:20:00+08:00,1,2,r1\n\
             203.0.113.1,2026-11-01 00:25:00,1,2,r1\n\
             203.0.113.1,2026-11-01T00:30:00+08:00,1\n",
        );
        assert_eq!(e.len(), 7, "{e:#?}");
        assert!(e[0].starts_with("samples line 3: 203.0.113.1 at 2026-11-01T00:00:00+08:00 from host r1 again (first on line 2)"), "{}", e[0]);
        assert!(e[1].starts_with("samples line 4: interval_start `2026-11-01T00:01:00+08:00` is not on a 300 s boundary"), "{}", e[1]);
        assert_eq!(e[2], "samples line 5: bytes_in `-5` is negative");
        assert_eq!(e[3], "samples line 6: bytes_in `ten` is not a whole number");
        assert_eq!(e[4], "samples line 7: `203.0.113.999` is not an IP address");
        assert!(
            e[5].starts_with(
                "samples line 8: interval_start `2026-11-01 00:25:00` is not RFC 3339"
            ),
            "{}",
            e[5]
        );
        assert!(e[6].starts_with("samples line 9: expected eip,interval_start,bytes_in,bytes_out[,host[,state]], got 3 fields"), "{}", e[6]);
    }

    #[test]
    fn a_partial_row_makes_the_summed_interval_partial() {
        let csv = "eip,interval_start,bytes_in,bytes_out,host,state\n\
                   203.0.113.1,2026-11-01T00:00:00+08:00,10,20,r1,measured\n\
                   203.0.113.1,2026-11-01T00:00:00+08:00,5,5,r2,partial\n\
                   203.0.113.1,2026-11-01T00:05:00+08:00,10,20,r1,measured\n\
                   203.0.113.1,2026-11-01T00:05:00+08:00,5,5,r2\n";
        let r = run(csv, None).unwrap();
        let day = &r.eips["203.0.113.1"].days["2026-11-01"];
        assert_eq!((day.measured_samples, day.partial_samples), (1, 1));
        assert_eq!((day.inbound_bytes, day.outbound_bytes), (30, 50));
        let e = errors(
            "eip,interval_start,bytes_in,bytes_out,host,state\n203.0.113.1,2026-11-01T00:00:00+08:00,1,2,r1,guessed\n",
        );
        assert_eq!(
            e,
            vec!["samples line 2: state `guessed` is not `measured` or `partial`"]
        );
    }

    #[test]
    fn bandwidth_history_gives_baseline_and_billed_peak() {
        let samples = "eip,interval_start,bytes_in,bytes_out\n2001:db8::1,2026-11-01T12:00:00+08:00,0,37500000\n";
        let bw = "eip,effective_from,bandwidth_mbps\n2001:db8::1,2026-11-01T09:00:00+08:00,100\n2001:db8::1,2026-11-01T10:00:00+08:00,300\n2001:db8::1,2026-11-01T11:00:00+08:00,200\n";
        let r = run(samples, Some(bw)).unwrap();
        let m = &r.eips["2001:db8::1"].months["2026-11"];
        // One sample of 1 Mbit/s; baseline 20% x 300 = 60 beats it.
        assert_eq!(
            (
                m.enhanced_avg_peak_mbps,
                m.baseline_mbps,
                m.billed_peak_mbps
            ),
            (1, Some(60), Some(60))
        );
        assert_eq!(
            r.eips["2001:db8::1"].days["2026-11-01"].max_bandwidth_mbps,
            Some(300)
        );
    }

    #[test]
    fn a_shared_bandwidth_sums_its_eips_before_the_peak() {
        // Two EIPs alternate 10 and 0 Mbit/s in opposite phase: each peaks at 10, the group
        // carries a steady 10 (not 20).
        let ten: u64 = 10 * 1_000_000 * 300 / 8;
        let mut csv = String::from("eip,interval_start,bytes_in,bytes_out\n");
        for i in 0..6 {
            let t = format!("2026-11-01T00:{:02}:00+08:00", i * 5);
            let (a, b) = if i % 2 == 0 { (ten, 0) } else { (0, ten) };
            csv += &format!("203.0.113.1,{t},{a},0\n203.0.113.2,{t},{b},0\n");
        }
        let groups = "eip,group\n203.0.113.1,shared-a\n203.0.113.2,shared-a\n";
        let bw = "eip,effective_from,bandwidth_mbps\nshared-a,2026-11-01T00:00:00+08:00,300\n";
        let r = compute_with_groups(
            csv.as_bytes(),
            Some(bw.as_bytes()),
            Some(groups.as_bytes()),
            cal(),
            SeriesOptions::default(),
        )
        .unwrap();
        let g = &r.groups["shared-a"];
        assert_eq!(g.days["2026-11-01"].enhanced_peak_mbps, 10);
        assert_eq!(g.months["2026-11"].baseline_mbps, Some(60));
        assert_eq!(g.months["2026-11"].billed_peak_mbps, Some(60));
        assert_eq!(
            r.eips["203.0.113.1"].days["2026-11-01"].enhanced_peak_mbps,
            0
        ); // 3 of 6 at zero
    }

    #[test]
    fn json_has_the_documented_shape() {
        let r = run(
            "eip,interval_start,bytes_in,bytes_out\n203.0.113.10,2026-11-01T00:00:00+08:00,1,2\n",
            None,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["interval_seconds"], 300);
        assert_eq!(v["timezone"], "Asia/Shanghai");
        let day = &v["eips"]["203.0.113.10"]["days"]["2026-11-01"];
        for k in [
            "samples",
            "inbound_bytes",
            "outbound_bytes",
            "enhanced_peak_mbps",
            "p95_bps",
        ] {
            assert!(day[k].is_u64(), "day.{k}");
        }
        let month = &v["eips"]["203.0.113.10"]["months"]["2026-11"];
        for k in [
            "samples",
            "inbound_bytes",
            "outbound_bytes",
            "enhanced_avg_peak_mbps",
            "p95_bps",
        ] {
            assert!(month[k].is_u64(), "month.{k}");
        }
        assert!(month["in_use_days"].is_f64());
        assert!(
            month.get("baseline_mbps").is_none(),
            "only with a bandwidth history"
        );
    }
}
