//! Commands that read the local store without a daemon: `samples`, `report`, `plot`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use chrono::NaiveDate;
use tracing::info;

use super::load_config;
use crate::{
    billing::calendar::{Calendar, Month},
    config::{AnyInterface, Config},
    daemon::{ShipStatus, shipping_file},
    exposition::{
        plot::{self, ChartInput, ChartPeriod},
        report::{Inputs, Period, Report, ShippingRow, TransitionRow},
    },
    policy::{self, Caps},
    store::{Store, Subject},
};

/// A day or a month of the billing zone.
#[derive(Debug, clap::Args)]
#[group(multiple = false)]
pub(super) struct PeriodArgs {
    /// One day, YYYY-MM-DD, in the configured time zone.
    #[arg(long)]
    day: Option<NaiveDate>,
    /// One month, YYYY-MM (default: the current month).
    #[arg(long, value_parser = parse_month)]
    month: Option<Month>,
}

pub(super) fn parse_month(s: &str) -> Result<Month, String> {
    NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d")
        .map(Month::of)
        .map_err(|_| format!("`{s}` is not a month (YYYY-MM)"))
}

impl PeriodArgs {
    /// The period asked for, or the current month of the calendar.
    fn resolve(&self, calendar: &Calendar) -> ChartPeriod {
        match (self.day, self.month) {
            (Some(d), _) => ChartPeriod::Day(d),
            (_, Some(m)) => ChartPeriod::Month(m),
            _ => ChartPeriod::Month(Month::of(calendar.day_of(chrono::Utc::now().timestamp()))),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct ReportArgs {
    #[arg(long, short, env = "EIP_METER_CONFIG")]
    config: PathBuf,
    /// Only this EIP.
    #[arg(long, conflicts_with = "group")]
    eip: Option<IpAddr>,
    /// Only this shared bandwidth.
    #[arg(long)]
    group: Option<String>,
    #[command(flatten)]
    period: PeriodArgs,
    /// Print JSON (exact integers) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct PlotArgs {
    #[arg(long, short, env = "EIP_METER_CONFIG")]
    config: PathBuf,
    /// The EIP to draw.
    #[arg(long)]
    eip: IpAddr,
    #[command(flatten)]
    period: PeriodArgs,
    /// Where to write the SVG.
    #[arg(long, short)]
    output: PathBuf,
    /// Zoom the time axis to the samples instead of the whole day or month.
    #[arg(long)]
    fit: bool,
}

/// The store of a config, opened for reading beside a running daemon.
fn open_store(config: &Config) -> anyhow::Result<Store> {
    let path = config.sampler.store_path();
    anyhow::ensure!(path.exists(), "no sample store at {}", path.display());
    Ok(Store::open_reader(&path)?)
}

pub(super) fn samples(config: &Path) -> anyhow::Result<ExitCode> {
    let c = load_config(config, &AnyInterface)?;
    let store = open_store(&c)?;
    let stdout = std::io::stdout();
    let n = store.export_samples(std::io::BufWriter::new(stdout.lock()))?;
    info!(samples = n, store = %c.sampler.store_path().display(), "exported");
    Ok(ExitCode::SUCCESS)
}

pub(super) fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let c = load_config(&args.config, &AnyInterface)?;
    let calendar = c.sampler.calendar();
    let store = open_store(&c)?;
    let (period, (from, to)) = match args.period.resolve(&calendar) {
        ChartPeriod::Day(d) => (Period::Day(d.to_string()), calendar.day_bounds(d)),
        ChartPeriod::Month(m) => (Period::Month(m.to_string()), calendar.month_bounds(m)),
    };
    let prefix = match &period {
        Period::Day(d) | Period::Month(d) => d.clone(),
    };
    let mut open = Vec::new();
    for (eip, series) in store.load_series(calendar)? {
        open.push((Subject::Eip(eip), series.open_figures()));
    }
    for (name, series) in store.load_groups(calendar)? {
        open.push((Subject::Group(name), series.open_figures()));
    }
    let (uplinks, uplinks_checked_at) = super::status::uplink_rows(&c);
    let gaps = store
        .gaps_after(from as f64)?
        .into_iter()
        .filter(|g| g.from < to as f64)
        .collect();
    let only = match (&args.eip, &args.group) {
        (Some(a), _) => Some(Subject::Eip(crate::addr::normalize(*a))),
        (_, Some(g)) => Some(Subject::Group(g.clone())),
        _ => None,
    };
    let sources = store
        .load_inventory()?
        .into_iter()
        .filter_map(|r| {
            let subject = if r.kind == "group" {
                Subject::Group(r.subject)
            } else {
                Subject::Eip(r.subject.parse().ok()?)
            };
            Some((subject, r.source))
        })
        .collect();
    let state = |j: &Option<String>| {
        j.as_deref()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v["state"].as_str().map(str::to_owned))
    };
    let transitions = store
        .audit_by_source("lifecycle", from, to)?
        .into_iter()
        .map(|r| TransitionRow {
            at: r.effective_from,
            eip: r.subject.clone(),
            from: state(&r.before),
            to: state(&r.after),
        })
        .collect();
    let report = Report::build(Inputs {
        transitions,
        sources,
        timezone: calendar.timezone().to_owned(),
        interval_seconds: calendar.interval(),
        closed_days: store.closed_days(&prefix)?,
        closed_months: match &period {
            Period::Month(m) => store.closed_months(m)?,
            Period::Day(_) => Vec::new(),
        },
        period,
        only,
        open,
        uplinks,
        uplinks_checked_at,
        gaps,
        shipping: shipping_row(&c, &store)?,
    });
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

/// Where shipping stands: the local store's unshipped rounds, and what the daemon last wrote
/// about its attempts.
fn shipping_row(c: &Config, store: &Store) -> anyhow::Result<Option<ShippingRow>> {
    if c.billing_store.is_none() {
        return Ok(None);
    }
    let shipped = store.shipped()?.map_or(0, |(seq, _)| seq);
    let (unshipped_rounds, oldest_unshipped_boundary) = store.unshipped(shipped)?;
    let status: Option<ShipStatus> = std::fs::read(shipping_file(&c.sampler.state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let status = status.unwrap_or_default();
    Ok(Some(ShippingRow {
        unshipped_rounds,
        oldest_unshipped_boundary,
        last_shipped_at: store.shipped()?.map(|(_, at)| at),
        errors_total: status.errors_total,
        conflicts_total: status.conflicts_total,
        last_error: status.last_error,
    }))
}

pub(super) fn plot(args: &PlotArgs) -> anyhow::Result<ExitCode> {
    let c = load_config(&args.config, &AnyInterface)?;
    let calendar = c.sampler.calendar();
    let store = open_store(&c)?;
    let eip = crate::addr::normalize(args.eip);
    let period = args.period.resolve(&calendar);
    let ((from, to), name) = match period {
        ChartPeriod::Day(d) => (calendar.day_bounds(d), d.to_string()),
        ChartPeriod::Month(m) => (calendar.month_bounds(m), m.to_string()),
    };
    let samples = store.samples_of(eip, from, to)?;
    anyhow::ensure!(
        !samples.is_empty(),
        "the store has no sample of {eip} in {name} ({})",
        calendar.timezone()
    );
    // This router's cap and the purchased bandwidth, as the daemon last applied them (the
    // file's EIPs and the API's alike).
    let (groups, eips) = crate::inventory::record::from_rows(store.load_inventory()?)
        .map_err(|e| anyhow::anyhow!("the store's inventory is unreadable: {e}"))?;
    let entry = eips.iter().find(|e| e.spec.address == eip).map(|e| &e.spec);
    let group = |name: &str| groups.iter().find(|g| g.spec.name == name).map(|g| &g.spec);
    let pair = entry
        .and_then(|e| match policy::eip_plan(e, &c.policing).caps {
            Caps::Own(p) => Some(p),
            Caps::Group(g) => group(&g).map(|g| policy::group_caps(g, &c.policing)),
            Caps::None => None,
        })
        .unwrap_or_default();
    let purchased = entry.and_then(|e| match &e.group {
        Some(g) => group(g).map(|x| x.bandwidth_mbps),
        None => e.bandwidth_mbps,
    });
    let title = format!("EIP {eip}, {name} ({})", calendar.timezone());
    let (svg, figures) = plot::draw(&ChartInput {
        title: &title,
        calendar,
        rule: c.sampler.sample_rule,
        period,
        samples: &samples,
        cap_bps: [pair.inbound.rate_bps, pair.outbound.rate_bps],
        purchased_mbps: purchased,
        fit: args.fit,
    })?;
    std::fs::write(&args.output, svg)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "{}: {} samples of {eip} in {name}; daily enhanced peaks {:?} Mbit/s; classic 95th {} bit/s{}",
        args.output.display(),
        samples.len(),
        figures.daily_peaks.iter().map(|d| d.2).collect::<Vec<_>>(),
        figures.p95_bps.unwrap_or(0),
        figures.average_peak_mbps.map_or(String::new(), |a| format!(
            "; average monthly peak {a} Mbit/s"
        ))
    );
    Ok(ExitCode::SUCCESS)
}
