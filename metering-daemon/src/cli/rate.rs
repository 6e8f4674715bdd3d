//! `eip-meter rate`: charge lines from `eip-meter compute`'s figures, a plans file and a price
//! file, offline (the auditor's path).

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;

use crate::{
    billing::{
        GbUnit,
        calendar::Calendar,
        series::{DayFigures, MonthFigures},
    },
    rating::{ChargeLine, Life, Plan, Prices, Window, charges},
};

#[derive(Debug, clap::Args)]
pub(super) struct RateArgs {
    /// The figures: the JSON `eip-meter compute` prints (its time zone and GB unit are used).
    #[arg(long)]
    figures: PathBuf,
    /// Each EIP's and shared bandwidth's plan, creation, deletion and bandwidth history (TOML;
    /// README, "Rating").
    #[arg(long)]
    plans: PathBuf,
    /// The prices (TOML; README, "Rating").
    #[arg(long)]
    prices: PathBuf,
    /// Rate the lines settled after this time (RFC 3339 with an offset; default: all).
    #[arg(long)]
    from: Option<String>,
    /// ... and up to this time, inclusive (default: the end of the figures' last day).
    #[arg(long)]
    to: Option<String>,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Deserialize)]
struct SubjectFigures {
    #[serde(default)]
    days: BTreeMap<String, DayFigures>,
    #[serde(default)]
    months: BTreeMap<String, MonthFigures>,
}

#[derive(Deserialize)]
struct FiguresFile {
    timezone: String,
    #[serde(default)]
    gb_unit: GbUnit,
    #[serde(default)]
    groups: BTreeMap<String, SubjectFigures>,
    #[serde(default)]
    eips: BTreeMap<String, SubjectFigures>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    #[serde(default, rename = "eip")]
    eips: Vec<PlanEntry>,
    #[serde(default, rename = "group")]
    groups: Vec<PlanEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanEntry {
    /// The EIP (in `[[eip]]`).
    address: Option<String>,
    /// The shared bandwidth (in `[[group]]`).
    name: Option<String>,
    /// `monthly`, `hourly`, `traffic`, `enhanced95`, `p95`.
    plan: String,
    created: String,
    deleted: Option<String>,
    /// A monthly package's length: 1-9, 12, 24, 36.
    months: Option<u32>,
    #[serde(default)]
    bandwidth: Vec<BandwidthEntry>,
    /// When its service was stopped (arrears, expired, frozen): not billed.
    #[serde(default)]
    stopped: Vec<StoppedEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoppedEntry {
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BandwidthEntry {
    at: String,
    mbps: u64,
}

fn time(s: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("`{s}` is not an RFC 3339 time with an offset"))?
        .timestamp())
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub(super) fn rate(args: &RateArgs) -> anyhow::Result<ExitCode> {
    let figures = read(&args.figures)?;
    let plans = super::read_settings(&args.plans)?;
    let prices = super::read_settings(&args.prices)?;
    let inputs = Inputs {
        figures: &figures,
        plans: &plans,
        prices: &prices,
        from: args.from.as_deref(),
        to: args.to.as_deref(),
    };
    match rate_inputs(&inputs) {
        Ok(rated) => {
            print_lines(&rated.lines, &rated.currency, &rated.calendar, args.json);
            Ok(ExitCode::SUCCESS)
        }
        Err(RateError::Figures(e)) => Err(e.context(format!(
            "{} is not `eip-meter compute` output",
            args.figures.display()
        ))),
        Err(RateError::Prices(problems)) => {
            for p in problems {
                eprintln!("{}: {p}", args.prices.display());
            }
            Ok(ExitCode::FAILURE)
        }
        Err(RateError::PlansFile(e)) => {
            Err(e.context(format!("invalid plans file {}", args.plans.display())))
        }
        Err(RateError::Plans(problems)) => {
            for p in &problems {
                eprintln!("{}: {p}", args.plans.display());
            }
            eprintln!("{} problem(s); nothing rated", problems.len());
            Ok(ExitCode::FAILURE)
        }
        Err(RateError::Window(e)) => Err(e),
    }
}

/// What `rate` reads, as text (the command reads it from files; the fuzzers give it directly).
pub(crate) struct Inputs<'a> {
    pub figures: &'a str,
    pub plans: &'a str,
    pub prices: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
}

/// The charge lines of every subject with a plan, sorted by settlement.
pub(crate) struct Rated {
    pub lines: Vec<ChargeLine>,
    pub currency: String,
    pub calendar: Calendar,
}

/// Why nothing was rated; each says which input was wrong.
#[derive(Debug)]
pub(crate) enum RateError {
    Figures(anyhow::Error),
    Prices(Vec<crate::config::Problem>),
    PlansFile(anyhow::Error),
    /// One line per subject that could not be rated.
    Plans(Vec<String>),
    Window(anyhow::Error),
}

/// Rates every subject of the plans, all or nothing.
pub(crate) fn rate_inputs(inputs: &Inputs) -> Result<Rated, RateError> {
    let figures: FiguresFile =
        serde_json::from_str(inputs.figures).map_err(|e| RateError::Figures(e.into()))?;
    let prices = Prices::parse(inputs.prices).map_err(RateError::Prices)?;
    let plans: PlansFile =
        toml::from_str(inputs.plans).map_err(|e| RateError::PlansFile(e.into()))?;
    let calendar =
        Calendar::new(&figures.timezone, 300).map_err(|e| RateError::Figures(e.into()))?;
    let last_day_end = figures
        .eips
        .values()
        .chain(figures.groups.values())
        .flat_map(|f| f.days.keys())
        .max()
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .map(|d| calendar.day_bounds(d).1);
    let window = (|| {
        anyhow::Ok(Window {
            from: inputs.from.map(time).transpose()?.unwrap_or(i64::MIN),
            to: match (inputs.to, last_day_end) {
                (Some(t), _) => time(t)?,
                (None, Some(end)) => end,
                (None, None) => anyhow::bail!("the figures have no day: give --to"),
            },
        })
    })()
    .map_err(RateError::Window)?;
    let empty = SubjectFigures {
        days: BTreeMap::new(),
        months: BTreeMap::new(),
    };
    let mut lines: Vec<ChargeLine> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let entries = plans
        .eips
        .iter()
        .map(|p| {
            (
                p,
                p.address.clone(),
                &figures.eips,
                "[[eip]] needs `address`",
            )
        })
        .chain(
            plans
                .groups
                .iter()
                .map(|p| (p, p.name.clone(), &figures.groups, "[[group]] needs `name`")),
        );
    for (entry, subject, table, missing) in entries {
        let Some(subject) = subject else {
            problems.push(missing.to_owned());
            continue;
        };
        let subject = subject
            .parse::<std::net::IpAddr>()
            .map(|a| crate::addr::normalize(a).to_string())
            .unwrap_or(subject);
        match rate_one(
            entry,
            &subject,
            table.get(&subject).unwrap_or(&empty),
            &prices,
            &figures,
            &calendar,
            window,
        ) {
            Ok(mut l) => lines.append(&mut l),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        return Err(RateError::Plans(problems));
    }
    lines.sort_by(|a, b| {
        (a.settled_at, &a.subject, a.from).cmp(&(b.settled_at, &b.subject, b.from))
    });
    Ok(Rated {
        lines,
        currency: prices.currency,
        calendar,
    })
}

fn rate_one(
    entry: &PlanEntry,
    subject: &str,
    figures: &SubjectFigures,
    prices: &Prices,
    file: &FiguresFile,
    calendar: &Calendar,
    window: Window,
) -> anyhow::Result<Vec<ChargeLine>> {
    let mut stopped = entry
        .stopped
        .iter()
        .map(|s| Ok((time(&s.from)?, time(&s.to)?)))
        .collect::<anyhow::Result<Vec<(i64, i64)>>>()
        .with_context(|| format!("{subject}: stopped"))?;
    stopped.sort_unstable();
    let life = Life {
        created: time(&entry.created).with_context(|| format!("{subject}: created"))?,
        deleted: entry
            .deleted
            .as_deref()
            .map(time)
            .transpose()
            .with_context(|| format!("{subject}: deleted"))?,
        stopped: &stopped,
    };
    let mut history = entry
        .bandwidth
        .iter()
        .map(|b| Ok((time(&b.at)?, b.mbps)))
        .collect::<anyhow::Result<Vec<(i64, u64)>>>()
        .with_context(|| format!("{subject}: bandwidth"))?;
    history.sort_by_key(|&(t, _)| t);
    // A package starts when it is created.
    let start = (entry.plan == "monthly").then_some(life.created);
    let plan = Plan::from_parts(&entry.plan, start, entry.months)
        .map_err(|e| anyhow::anyhow!("{subject}: {}", crate::billing::plans::describe(&e)))?;
    let rated = charges::rate(
        &charges::Subject {
            name: subject,
            plan,
            life,
            bandwidth: &history,
            days: &figures.days,
            months: &figures.months,
        },
        prices,
        file.gb_unit,
        calendar,
        window,
    )?;
    Ok(rated)
}

fn print_lines(lines: &[ChargeLine], currency: &str, calendar: &Calendar, json_out: bool) {
    let tz = calendar.tz();
    let at = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|u| u.with_timezone(&tz).to_rfc3339())
            .unwrap_or_default()
    };
    let mut totals: BTreeMap<&str, Decimal> = BTreeMap::new();
    for l in lines {
        *totals.entry(&l.subject).or_default() += l.amount;
    }
    let total: Decimal = totals.values().copied().sum();
    if json_out {
        let lines: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                v["from"] = json!(at(l.from));
                v["to"] = json!(at(l.to));
                v["settled_at"] = json!(at(l.settled_at));
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "currency": currency,
                "timezone": calendar.timezone(),
                "rounding": "each line once, half away from zero, to 0.01",
                "lines": lines,
                "totals": totals,
                "total": total,
            }))
            .unwrap_or_default()
        );
        return;
    }
    println!("settled_at\tsubject\tplan\titem\tfrom\tto\tquantity\tunit_price\texact\tamount");
    for l in lines {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{} {}\t{}\t{}\t{}",
            at(l.settled_at),
            l.subject,
            l.plan,
            l.item,
            at(l.from),
            at(l.to),
            l.quantity.normalize(),
            l.unit,
            l.unit_price,
            l.exact.normalize(),
            l.amount
        );
    }
    for (subject, amount) in &totals {
        println!("total\t{subject}\t{amount} {currency}");
    }
    println!("total\tall\t{total} {currency}");
}
