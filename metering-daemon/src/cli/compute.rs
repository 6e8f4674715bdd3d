//! `eip-meter compute`: billing figures recomputed offline from CSV files, one EIP at a time
//! through an on-disk staging file, so memory stays bounded whatever the input's size, and the
//! JSON streamed out as each EIP is done.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::ValueEnum;
use serde::{Serialize, Serializer};

use crate::{
    billing::{
        GbUnit, SampleRule, SampleState,
        calendar::Calendar,
        fleet::{self, HostRounds},
        replay::{self, EipFigures, InputError},
        series::{BandwidthHistory, SeriesOptions},
    },
    store::staging::{Staging, StagingError},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum RuleArg {
    /// The larger of inbound and outbound.
    Max,
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum GbArg {
    Decimal,
    Binary,
}

pub(super) fn series_options(rule: RuleArg, gb_unit: GbArg) -> SeriesOptions {
    SeriesOptions {
        rule: match rule {
            RuleArg::Max => SampleRule::Max,
            RuleArg::Inbound => SampleRule::Inbound,
            RuleArg::Outbound => SampleRule::Outbound,
        },
        gb_unit: match gb_unit {
            GbArg::Decimal => GbUnit::Decimal,
            GbArg::Binary => GbUnit::Binary,
        },
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct ComputeArgs {
    /// Samples CSV (`-` for stdin).
    #[arg(long)]
    samples: PathBuf,
    /// IANA time zone whose days and months bill.
    #[arg(long, default_value = crate::billing::calendar::DEFAULT_TIMEZONE)]
    timezone: String,
    /// Interval length in seconds (must divide a day).
    #[arg(long, default_value_t = crate::billing::calendar::DEFAULT_INTERVAL_SECONDS)]
    interval: u32,
    /// Bandwidth history CSV: `eip,effective_from,bandwidth_mbps`. Enables the enhanced-95
    /// baseline and billed peak.
    #[arg(long)]
    bandwidth_history: Option<PathBuf>,
    /// Shared bandwidths CSV: `eip,group`. Adds a `groups` section whose figures come from
    /// the group's EIPs summed per interval; a group's bandwidth history rows use the group
    /// name in the `eip` column.
    #[arg(long)]
    groups: Option<PathBuf>,
    /// Sparse input, as the billing store keeps it: the intervals each host sampled,
    /// `host,interval_start,coverage` (`complete`, `incomplete` or `spread`). With it, an EIP
    /// present on a host (see --presence) that has no row for an interval that host sampled
    /// had a zero sample there (measured in a complete round, partial otherwise), so the
    /// samples file needs rows only for intervals with traffic; every row must name its host.
    #[arg(long, requires = "presence")]
    rounds: Option<PathBuf>,
    /// With --rounds: when each EIP was in each host's inventory, `eip,host,from,to`
    /// (interval starts, RFC 3339, `to` exclusive and empty while it still is).
    #[arg(long, requires = "rounds")]
    presence: Option<PathBuf>,
    /// Which direction makes an interval's billing sample.
    #[arg(long, value_enum, default_value_t = RuleArg::Max)]
    sample_rule: RuleArg,
    /// GB of the outbound figures: 10^9 (decimal) or 2^30 (binary) bytes.
    #[arg(long, value_enum, default_value_t = GbArg::Decimal)]
    gb_unit: GbArg,
}

fn open_input(path: &Path) -> anyhow::Result<Box<dyn std::io::Read>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))
}

/// The hosts' rounds of a sparse input, over the period they span.
struct Rounds {
    hosts: Vec<HostRounds>,
}

/// Everything read, staged or small enough to hold.
struct Inputs {
    staging: Staging,
    rounds: Option<Rounds>,
    bandwidth: HashMap<IpAddr, BandwidthHistory>,
    group_bandwidth: HashMap<String, BandwidthHistory>,
    groups: BTreeMap<String, Vec<IpAddr>>,
}

fn read_inputs(
    args: &ComputeArgs,
    calendar: &Calendar,
    errors: &mut Vec<InputError>,
) -> anyhow::Result<Inputs> {
    let mut staging = Staging::new()?;
    let mut failure: Option<StagingError> = None;
    let step = i64::from(calendar.interval());

    // Rounds first: they name the hosts every sparse row must come from.
    let mut rounds = None;
    if let Some(path) = &args.rounds {
        let mut seen: Vec<(usize, i64, bool)> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        replay::parse_rounds(open_input(path)?, calendar, errors, |host, t, complete| {
            let n = names.len();
            let h = *names.entry(host.to_owned()).or_insert(n);
            seen.push((h, t, complete));
        });
        for (name, _) in sorted_by_value(&names) {
            staging.host_id(name)?;
        }
        let from = seen.iter().map(|r| r.1).min().unwrap_or(0);
        let to = seen.iter().map(|r| r.1 + step).max().unwrap_or(0);
        let n = ((to - from) / step).max(0) as usize;
        let mut hosts: Vec<HostRounds> = (0..names.len())
            .map(|_| HostRounds::new(from, step, n))
            .collect();
        for (h, t, complete) in seen {
            hosts[h].add(t, complete);
        }
        rounds = Some(Rounds { hosts });
    }
    if let Some(path) = &args.presence {
        replay::parse_presence(open_input(path)?, errors, |eip, host, from, to| {
            if failure.is_some() {
                return;
            }
            match staging.host_id(host) {
                Ok(h) => {
                    if let Err(e) = staging.add_presence(eip, h, from, to) {
                        failure = Some(e);
                    }
                }
                Err(e) => failure = Some(e),
            }
        });
    }
    let known_hosts = staging.host_names().len();
    let sparse = rounds.is_some();
    replay::parse_samples(open_input(&args.samples)?, calendar, errors, |s, fail| {
        if failure.is_some() {
            return;
        }
        let host = match staging.host_id(&s.host) {
            Ok(h) => h,
            Err(e) => return failure = Some(e),
        };
        if sparse && host as usize >= known_hosts {
            return fail(format!(
                "host `{}` has no rounds in the rounds file: its rows cannot be placed",
                s.host
            ));
        }
        match staging.add_sample(
            s.eip,
            s.start,
            host,
            s.line,
            (s.inbound, s.outbound, s.partial),
        ) {
            Ok(None) => {}
            Ok(Some(first)) => fail(replay::duplicate_message(&s, first)),
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    staging.finish_loading()?;
    let (bandwidth, group_bandwidth) = match &args.bandwidth_history {
        Some(path) => replay::read_bandwidth(open_input(path)?, errors),
        None => Default::default(),
    };
    let mut groups: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    if let Some(path) = &args.groups {
        for (eip, group) in replay::read_groups(open_input(path)?, errors) {
            groups.entry(group).or_default().push(eip);
        }
    }
    Ok(Inputs {
        staging,
        rounds,
        bandwidth,
        group_bandwidth,
        groups,
    })
}

fn sorted_by_value(m: &HashMap<String, usize>) -> Vec<(&str, usize)> {
    let mut v: Vec<(&str, usize)> = m.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    v.sort_by_key(|e| e.1);
    v
}

impl Inputs {
    /// One EIP's series: its rows summed per host, or (sparse) rebuilt with its zeros.
    fn rows_of(&self, eip: IpAddr) -> Result<Vec<replay::Row>, StagingError> {
        let Some(rounds) = &self.rounds else {
            return self.staging.summed(eip);
        };
        let samples = fleet::samples(
            &rounds.hosts,
            &self.staging.presence(eip)?,
            &self.staging.host_rows(eip)?,
        );
        Ok(samples
            .into_iter()
            .map(|s| {
                (
                    s.start,
                    s.inbound_bytes,
                    s.outbound_bytes,
                    s.state == SampleState::Partial,
                )
            })
            .collect())
    }
}

/// A JSON object written as it is produced, entry by entry.
struct Streamed<'a, I: Iterator<Item = (String, EipFigures)>> {
    entries: RefCell<Option<I>>,
    empty: bool,
    _life: std::marker::PhantomData<&'a ()>,
}

impl<'a, I: Iterator<Item = (String, EipFigures)>> Streamed<'a, I> {
    fn new(entries: I, empty: bool) -> Self {
        Self {
            entries: RefCell::new(Some(entries)),
            empty,
            _life: std::marker::PhantomData,
        }
    }

    fn is_empty(&self) -> bool {
        self.empty
    }
}

impl<I: Iterator<Item = (String, EipFigures)>> Serialize for Streamed<'_, I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entries = self.entries.borrow_mut().take().expect("serialized once");
        serializer.collect_map(entries)
    }
}

/// The output, in the same shape as [`replay::Report`].
#[derive(Serialize)]
#[serde(bound = "")]
struct Output<'a, G, E>
where
    G: Iterator<Item = (String, EipFigures)>,
    E: Iterator<Item = (String, EipFigures)>,
{
    #[serde(skip_serializing_if = "Streamed::is_empty")]
    groups: Streamed<'a, G>,
    interval_seconds: u32,
    timezone: &'static str,
    sample_rule: SampleRule,
    gb_unit: GbUnit,
    missing_policy: &'static str,
    eips: Streamed<'a, E>,
}

/// EIPs read from the staging file at a time.
const EIP_BATCH: usize = 1000;

pub(super) fn compute(args: ComputeArgs) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    match write_figures(&args, &mut out)? {
        Ok(()) => {
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} problem(s); no figures computed", errors.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Reads every input and writes the figures as JSON to `out`; the input problems instead if
/// there are any (then nothing is written).
fn write_figures(
    args: &ComputeArgs,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Result<(), Vec<InputError>>> {
    let calendar = Calendar::new(&args.timezone, args.interval)?;
    let options = series_options(args.sample_rule, args.gb_unit);
    let mut errors = Vec::new();
    let inputs = read_inputs(args, &calendar, &mut errors)?;
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    // A read error while streaming ends the output early; it is reported after.
    let failure: RefCell<Option<StagingError>> = RefCell::new(None);
    let fail = |e: StagingError| {
        failure.borrow_mut().get_or_insert(e);
    };

    // Shared bandwidths first (they come first in the output): one at a time, their members'
    // series summed per interval; a group none of whose members has a sample is left out.
    let mut group_figures = Vec::new();
    for (name, members) in &inputs.groups {
        let mut sums: BTreeMap<i64, (u64, u64, bool)> = BTreeMap::new();
        for eip in members {
            for (t, i, o, p) in inputs.rows_of(*eip)? {
                let e = sums.entry(t).or_default();
                e.0 = e.0.saturating_add(i);
                e.1 = e.1.saturating_add(o);
                e.2 |= p;
            }
        }
        if sums.is_empty() {
            continue;
        }
        let rows = sums
            .into_iter()
            .map(|(t, (i, o, p))| (t, i, o, p))
            .collect();
        let history = inputs
            .group_bandwidth
            .get(name)
            .cloned()
            .unwrap_or_default();
        group_figures.push((
            name.clone(),
            replay::figures(rows, history, calendar, options),
        ));
    }

    let group_figures_empty = group_figures.is_empty();
    let mut batch: std::vec::IntoIter<IpAddr> = Vec::new().into_iter();
    let mut last: Option<IpAddr> = None;
    let mut done = false;
    let eip_entries = std::iter::from_fn(|| {
        loop {
            if let Some(eip) = batch.next() {
                return match inputs.rows_of(eip) {
                    Ok(rows) => {
                        let history = inputs.bandwidth.get(&eip).cloned().unwrap_or_default();
                        Some((
                            eip.to_string(),
                            replay::figures(rows, history, calendar, options),
                        ))
                    }
                    Err(e) => {
                        fail(e);
                        None
                    }
                };
            }
            if done || failure.borrow().is_some() {
                return None;
            }
            match inputs.staging.eips_after(last, EIP_BATCH) {
                Ok(next) if next.is_empty() => done = true,
                Ok(next) => {
                    last = next.last().copied();
                    batch = next.into_iter();
                }
                Err(e) => fail(e),
            }
        }
    });

    let output = Output {
        groups: Streamed::new(group_figures.into_iter(), group_figures_empty),
        interval_seconds: calendar.interval(),
        timezone: calendar.timezone(),
        sample_rule: options.rule,
        gb_unit: options.gb_unit,
        missing_policy: replay::MISSING_POLICY,
        eips: Streamed::new(eip_entries, false),
    };
    serde_json::to_writer_pretty(&mut *out, &output)?;
    writeln!(out)?;
    if let Some(e) = failure.into_inner() {
        return Err(anyhow::Error::new(e).context("the figures above are incomplete"));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Runs the staged compute over in-memory CSV texts.
    fn staged(samples: &str, groups: Option<&str>, sparse: Option<(&str, &str)>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let args = ComputeArgs {
            samples: file("samples.csv", samples),
            timezone: "Asia/Shanghai".into(),
            interval: 300,
            bandwidth_history: None,
            groups: groups.map(|g| file("groups.csv", g)),
            rounds: sparse.map(|(r, _)| file("rounds.csv", r)),
            presence: sparse.map(|(_, p)| file("presence.csv", p)),
            sample_rule: RuleArg::Max,
            gb_unit: GbArg::Decimal,
        };
        let mut out = Vec::new();
        write_figures(&args, &mut out).unwrap().unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The in-memory reference (`replay`), as the JSON `compute` printed before staging.
    fn in_memory(samples: &str, groups: Option<&str>) -> String {
        let report = replay::compute_with_groups(
            samples.as_bytes(),
            None::<&[u8]>,
            groups.map(str::as_bytes),
            Calendar::new("Asia/Shanghai", 300).unwrap(),
            SeriesOptions::default(),
        )
        .unwrap();
        format!("{}\n", serde_json::to_string_pretty(&report).unwrap())
    }

    const T0: i64 = 1_793_462_400; // 2026-10-31T16:00:00Z, a day start in Shanghai

    fn at(t: i64) -> String {
        chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Staged, one EIP at a time, gives what the in-memory replay gives.
        #[test]
        fn staged_equals_in_memory(
            rows in proptest::collection::vec(
                (0u8..6, 0i64..700, 0u8..2, 0u64..5_000_000_000, 0u64..5_000_000_000, any::<bool>()),
                1..200,
            ),
        ) {
            let mut seen = std::collections::HashSet::new();
            let mut csv = String::from("eip,interval_start,bytes_in,bytes_out,host,state\n");
            for (e, k, h, i, o, p) in rows {
                if !seen.insert((e, k, h)) {
                    continue;
                }
                let eip = if e < 4 { format!("203.0.113.{e}") } else { format!("2001:db8::{e}") };
                let state = if p { "partial" } else { "measured" };
                csv.push_str(&format!("{eip},{},{i},{o},r{h},{state}\n", at(T0 + 300 * k)));
            }
            let groups = "eip,group\n203.0.113.1,g1\n2001:db8::5,g1\n203.0.113.2,g2\n";
            // The same JSON (EIPs come in address order rather than text order).
            let a: serde_json::Value = serde_json::from_str(&staged(&csv, Some(groups), None)).unwrap();
            let b: serde_json::Value = serde_json::from_str(&in_memory(&csv, Some(groups))).unwrap();
            prop_assert_eq!(a, b);
        }

        /// Sparse input (rows only with traffic, plus rounds and presence) gives what the dense
        /// export of the same hosts gives.
        #[test]
        fn sparse_equals_dense(
            traffic in proptest::collection::vec((0u8..3, 0i64..600, 0u8..2, 1u64..1_000_000_000), 0..80),
            missing in proptest::collection::vec((0u8..2, 0i64..600), 0..20),
            incomplete in proptest::collection::vec((0u8..2, 0i64..600), 0..20),
            joins in proptest::collection::vec(0i64..300, 3),
        ) {
            // Two hosts sample intervals 0..600 except `missing`; EIP e is on both from
            // interval joins[e].
            let n = 600i64;
            let missing: std::collections::HashSet<(u8, i64)> = missing.into_iter().collect();
            let incomplete: std::collections::HashSet<(u8, i64)> = incomplete.into_iter().collect();
            let traffic: BTreeMap<(u8, i64, u8), u64> =
                traffic.into_iter().map(|(e, k, h, b)| ((e, k, h), b)).collect();
            let mut rounds = String::from("host,interval_start,coverage\n");
            let mut dense = String::from("eip,interval_start,bytes_in,bytes_out,host,state\n");
            let mut sparse = dense.clone();
            let mut presence = String::from("eip,host,from,to\n");
            for h in 0..2u8 {
                for k in 0..n {
                    if missing.contains(&(h, k)) {
                        continue;
                    }
                    let cover = if incomplete.contains(&(h, k)) { "incomplete" } else { "complete" };
                    rounds.push_str(&format!("r{h},{},{cover}\n", at(T0 + 300 * k)));
                    for e in 0..3u8 {
                        if k < joins[e as usize] {
                            continue;
                        }
                        let bytes = traffic.get(&(e, k, h)).copied().unwrap_or(0);
                        let partial = cover == "incomplete";
                        let state = if partial { "partial" } else { "measured" };
                        let row = format!("203.0.113.{e},{},{bytes},{},r{h},{state}\n", at(T0 + 300 * k), bytes / 3);
                        dense.push_str(&row);
                        if bytes > 0 {
                            sparse.push_str(&row);
                        }
                    }
                }
                for (e, join) in joins.iter().enumerate() {
                    presence.push_str(&format!("203.0.113.{e},r{h},{},\n", at(T0 + 300 * join)));
                }
            }
            prop_assert_eq!(
                staged(&sparse, None, Some((&rounds, &presence))),
                staged(&dense, None, None)
            );
        }
    }
}
