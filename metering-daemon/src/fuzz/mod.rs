//! One check per input surface, shared by the coverage-guided fuzzers in `fuzz/` (cargo fuzz on
//! the nightly toolchain) and by the test that replays their corpus and every past finding on
//! each `cargo xtask test`.
//!
//! Each check takes arbitrary bytes, hands them to the parser where a user's file or the disk
//! would, and panics only when an invariant breaks: a parser may refuse the input, but it must
//! not panic, must not run away (the fuzzers' time limit), and must say where a syntax error is.
//! The packet path is fuzzed separately, through `BPF_PROG_TEST_RUN` (`eip-meter-fuzz-packets`
//! in `tests/`), since it needs root and the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    billing::{
        calendar::Calendar,
        replay,
        series::{Sample, SeriesOptions},
    },
    cli::rate::{Inputs, rate_inputs},
    config::{Config, HostCheck, Problem},
    edit::{self, Change, EipChanges, GroupChanges},
    rating::Prices,
    store::{RecordFile, read_back},
};

/// One check: arbitrary bytes in, a panic when an invariant breaks.
pub type Check = fn(&[u8]);

/// The input surfaces, by the name of their fuzz target and corpus folder.
pub const TARGETS: [(&str, Check); 6] = [
    ("config", config),
    ("config_edit", config_edit),
    ("compute_csv", compute_csv),
    ("store_records", store_records),
    ("prices", prices),
    ("plans", plans),
];

/// A host where every interface exists: the checks are about the text.
struct AnyHost;

impl HostCheck for AnyHost {
    fn interface_exists(&self, _name: &str) -> bool {
        true
    }
}

/// A TOML syntax error must come with the line and column it is at.
fn syntax_errors_are_located(text: &str, problems: &[Problem]) {
    assert!(!problems.is_empty(), "refused without a reason");
    if text.parse::<toml::Table>().is_err() {
        assert!(
            problems.iter().any(|p| p.location.is_some()),
            "a syntax error without a location: {problems:?}"
        );
    }
}

/// The configuration file as `eip-meter validate` and the daemon read it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(problems) = Config::parse(text, &AnyHost) {
        syntax_errors_are_located(text, &problems);
    }
}

/// The comment-preserving editor behind `eip-meter eip|group set|remove` when no daemon runs.
/// The first bytes choose the edit; the rest is the file. An edit it accepts leaves a file that
/// is still TOML and shows the edit.
pub fn config_edit(data: &[u8]) {
    let [op, a, b, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let eip = if op & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, *a))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(*a)))
    };
    let group = format!("g{}", b % 4);
    let mbps = u64::from(*b) + 1;
    let edited = match (op >> 1) % 4 {
        0 => edit::set_eip(
            text,
            eip,
            &EipChanges {
                bandwidth_mbps: Change::Set(mbps),
                ..EipChanges::default()
            },
        ),
        1 => edit::remove_eip(text, eip),
        2 => edit::set_group(
            text,
            &group,
            &GroupChanges {
                bandwidth_mbps: Some(mbps),
                ..GroupChanges::default()
            },
        ),
        _ => edit::remove_group(text, &group),
    };
    let Ok(out) = edited else { return };
    let doc: toml::Table = out
        .parse()
        .unwrap_or_else(|e| panic!("an accepted edit left a file that is not TOML: {e}\n{out}"));
    let listed = |table: &str, key: &str, value: &str| {
        doc.get(table)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
            .filter(|e| {
                e.get(key)
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| same_subject(v, value))
            })
            .count()
    };
    match (op >> 1) % 4 {
        0 => assert_eq!(listed("eip", "address", &eip.to_string()), 1, "{out}"),
        1 => assert_eq!(listed("eip", "address", &eip.to_string()), 0, "{out}"),
        2 => assert_eq!(listed("group", "name", &group), 1, "{out}"),
        _ => assert_eq!(listed("group", "name", &group), 0, "{out}"),
    }
}

/// Two spellings of one EIP (`2001:db8::1` and `2001:DB8:0::1`) or one group name.
fn same_subject(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => crate::addr::normalize(a) == crate::addr::normalize(b),
        _ => a == b,
    }
}

/// `eip-meter compute`'s inputs: a samples CSV, a bandwidth CSV and a groups CSV, split at
/// `0xff` bytes. Every refused row names its file and line.
pub fn compute_csv(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let samples = parts.next().unwrap_or_default();
    let bandwidth = parts.next();
    let groups = parts.next();
    let calendar = Calendar::new("Asia/Shanghai", 300).expect("a known zone");
    if let Err(errors) = replay::compute_with_groups(
        samples,
        bandwidth,
        groups,
        calendar,
        SeriesOptions::default(),
    ) {
        assert!(!errors.is_empty(), "refused without a reason");
        for e in &errors {
            assert!(!e.message.is_empty(), "an error without a message: {e}");
        }
    }
}

/// The store's record files as read back from disk (the first byte chooses the kind). A
/// checkpoint that decodes must be usable: the next round pushes a sample into it and reads its
/// figures.
pub fn store_records(data: &[u8]) {
    let [kind, bytes @ ..] = data else { return };
    let kind = RecordFile::ALL[usize::from(*kind) % RecordFile::ALL.len()];
    let Ok(read) = read_back(kind, bytes) else {
        return;
    };
    let calendar = Calendar::new("Asia/Shanghai", 300).expect("a known zone");
    for series in read.series {
        // The store refuses a checkpoint that fails its check; one that passes must work.
        let Ok(mut series) = series.with_calendar(calendar).checked() else {
            continue;
        };
        let _ = series.open_figures();
        let next = series
            .last_start()
            .map_or(Some(1_700_000_100), |s| s.checked_add(300));
        if let Some(start) = next.filter(|s| calendar.is_aligned(*s)) {
            let _ = series.push(Sample {
                start,
                inbound_bytes: 1,
                outbound_bytes: 1,
                state: Default::default(),
            });
        }
        series.close();
        let _ = series.take_closed();
    }
}

/// A price file as `rate`, `bill` and `validate --prices` read it.
pub fn prices(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(problems) = Prices::parse(text) {
        syntax_errors_are_located(text, &problems);
    }
}

/// Figures of one EIP and one shared bandwidth over two days, as `eip-meter compute` prints
/// them: what a fuzzed plans file is rated against.
const FIGURES: &str = include_str!("figures.json");
/// A price for every billing type.
const PRICES: &str = include_str!("prices.toml");

/// A plans file as `eip-meter rate` reads it, rated against fixed figures and prices over
/// one month.
pub fn plans(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let inputs = Inputs {
        figures: FIGURES,
        plans: text,
        prices: PRICES,
        from: Some("2024-03-01T00:00:00+08:00"),
        to: Some("2024-04-01T00:00:00+08:00"),
    };
    if let Ok(rated) = rate_inputs(&inputs) {
        for line in &rated.lines {
            assert!(
                line.from <= line.to,
                "a line ends before it starts: {line:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
