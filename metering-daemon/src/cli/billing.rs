//! Commands on the shared PostgreSQL billing store: `bill` (fleet figures, for a systemd
//! timer) and `store migrate`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use chrono::NaiveDate;
use clap::Subcommand;

use super::{
    compute::{GbArg, RuleArg, series_options},
    offline::parse_month,
};
use crate::{
    billing::calendar::{Calendar, Month},
    config::{BillingStoreConfig, DEFAULT_LOCAL_RETENTION_DAYS},
    store::postgres::{
        self,
        bill::{BillOptions, BillPeriod},
        migrate,
    },
};

/// How to reach the billing store (the same settings as a router's `[billing_store]`).
#[derive(Debug, clap::Args)]
pub(super) struct StoreArgs {
    /// libpq URL or key/value string naming the user, without the password
    /// (`postgres://billing@db.example/billing`, `host=/run/postgresql dbname=billing user=billing`).
    #[arg(long = "store", env = "EIP_METER_STORE_URL")]
    url: String,
    /// File holding the password (else $EIP_METER_STORE_PASSWORD, else none).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// PEM file of the CA of the server's certificate (TLS); default: the system's trust store.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

impl StoreArgs {
    fn config(&self) -> anyhow::Result<BillingStoreConfig> {
        let parsed: tokio_postgres::Config = self
            .url
            .parse()
            .with_context(|| "--store is not a libpq URL or key/value string".to_owned())?;
        anyhow::ensure!(
            parsed.get_password().is_none(),
            "--store must not hold the password (it would show in the process list): use --password-file or $EIP_METER_STORE_PASSWORD"
        );
        Ok(BillingStoreConfig {
            url: self.url.clone(),
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
            local_retention_days: DEFAULT_LOCAL_RETENTION_DAYS,
        })
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct BillArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    period: BillPeriodArgs,
    /// IANA time zone whose days and months bill (default: the one every host samples in).
    #[arg(long)]
    timezone: Option<String>,
    /// Hours after a period's end after which it closes even if a host has not shipped past
    /// it (a host that has not reported by then is billed without its missing intervals; its
    /// late samples make a new revision).
    #[arg(long, default_value_t = 48)]
    grace_hours: u32,
    /// Which direction makes an interval's billing sample.
    #[arg(long, value_enum, default_value_t = RuleArg::Max)]
    sample_rule: RuleArg,
    /// GB of the outbound figures: 10^9 (decimal) or 2^30 (binary) bytes.
    #[arg(long, value_enum, default_value_t = GbArg::Decimal)]
    gb_unit: GbArg,
    /// EIPs computed per slice: memory grows with this, not with the fleet.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    slice: u32,
    /// A price file (README, "Rating"): then every subject with a plan is also rated, and its
    /// charge lines settled in the period are written to the `charges` table (the same lines
    /// `eip-meter rate` gives offline).
    #[arg(long)]
    prices: Option<PathBuf>,
}

/// Exactly one of a day or a month.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(super) struct BillPeriodArgs {
    /// One day: YYYY-MM-DD, `today` or `yesterday` (in the billing time zone). Every
    /// subject's daily figures.
    #[arg(long, value_parser = parse_day_spec)]
    day: Option<DaySpec>,
    /// One month: YYYY-MM, `this` or `last` (in the billing time zone). Every day's figures
    /// and the month's.
    #[arg(long, value_parser = parse_month_spec)]
    month: Option<MonthSpec>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum DaySpec {
    Date(NaiveDate),
    Today,
    Yesterday,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum MonthSpec {
    Month(Month),
    This,
    Last,
}

fn parse_day_spec(s: &str) -> Result<DaySpec, String> {
    match s {
        "today" => Ok(DaySpec::Today),
        "yesterday" => Ok(DaySpec::Yesterday),
        d => d
            .parse()
            .map(DaySpec::Date)
            .map_err(|_| format!("`{d}` is not a day (YYYY-MM-DD, today or yesterday)")),
    }
}

fn parse_month_spec(s: &str) -> Result<MonthSpec, String> {
    match s {
        "this" => Ok(MonthSpec::This),
        "last" => Ok(MonthSpec::Last),
        m => parse_month(m)
            .map(MonthSpec::Month)
            .map_err(|_| format!("`{m}` is not a month (YYYY-MM, this or last)")),
    }
}

impl BillPeriodArgs {
    /// The period, with `today`, `yesterday`, `this` and `last` taken at `now` in `calendar`.
    fn resolve(&self, calendar: &Calendar, now: i64) -> BillPeriod {
        let today = calendar.day_of(now);
        match (self.day, self.month) {
            (Some(DaySpec::Date(d)), _) => BillPeriod::Day(d),
            (Some(DaySpec::Today), _) => BillPeriod::Day(today),
            (Some(DaySpec::Yesterday), _) => {
                BillPeriod::Day(today.pred_opt().expect("a day before"))
            }
            (_, Some(MonthSpec::Month(m))) => BillPeriod::Month(m),
            (_, Some(MonthSpec::This)) => BillPeriod::Month(Month::of(today)),
            (_, Some(MonthSpec::Last)) => {
                let first = Month::of(today).first_day();
                BillPeriod::Month(Month::of(first.pred_opt().expect("a day before")))
            }
            _ => unreachable!("clap requires one"),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum StoreAction {
    /// Bring the billing store's schema to this version (as the schema's owner: creates the
    /// tables, the eip_meter_daemon and eip_meter_billing roles and their grants). Refuses a
    /// store at a newer version than this eip-meter knows.
    Migrate(StoreArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(super) fn store(action: StoreAction) -> anyhow::Result<ExitCode> {
    match action {
        StoreAction::Migrate(args) => {
            let config = args.config()?;
            runtime()?.block_on(async {
                let mut db = postgres::connect(&config).await?;
                let from = migrate::migrate(&mut db.client).await?;
                if from == migrate::SCHEMA_VERSION {
                    println!("{}: schema already at version {from}", db.target);
                } else {
                    println!(
                        "{}: schema migrated from version {from} to {}",
                        db.target,
                        migrate::SCHEMA_VERSION
                    );
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

pub(super) fn bill(args: BillArgs) -> anyhow::Result<ExitCode> {
    let config = args.store.config()?;
    runtime()?.block_on(async {
        let mut db = postgres::connect(&config).await?;
        migrate::check(&db.client).await?;
        let timezone = match &args.timezone {
            Some(tz) => tz.clone(),
            None => hosts_timezone(&db).await?,
        };
        let interval: i32 = db
            .client
            .query_opt("SELECT interval_seconds FROM hosts LIMIT 1", &[])
            .await
            .context("read hosts")?
            .map_or(crate::billing::calendar::DEFAULT_INTERVAL_SECONDS as i32, |r| r.get(0));
        let calendar = Calendar::new(&timezone, interval as u32)?;
        let now = chrono::Utc::now().timestamp();
        let period = args.period.resolve(&calendar, now);
        // A bad price file is found before anything is written.
        let prices = match &args.prices {
            Some(path) => {
                let text = super::read_settings(path)?;
                match crate::rating::Prices::parse(&text) {
                    Ok(p) => Some(p),
                    Err(problems) => {
                        for p in problems {
                            eprintln!("{}: {p}", path.display());
                        }
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            None => None,
        };
        let report = postgres::bill::bill(
            &mut db,
            &BillOptions {
                period,
                calendar,
                options: series_options(args.sample_rule, args.gb_unit),
                grace_seconds: i64::from(args.grace_hours) * 3600,
                now,
                slice: args.slice as usize,
            },
        )
        .await?;
        println!(
            "{}: {} EIPs and {} shared bandwidths from {} host(s) ({}); {} new revision(s) ({} of closed periods: late samples), {} unchanged; period {}",
            match period {
                BillPeriod::Day(d) => d.to_string(),
                BillPeriod::Month(m) => m.to_string(),
            },
            report.eips,
            report.groups,
            report.hosts.len(),
            report.hosts.join(", "),
            report.revisions,
            report.late_revisions,
            report.unchanged,
            if report.closed { "closed" } else { "open (provisional)" },
        );
        if let Some(prices) = prices {
            let gb_unit = series_options(args.sample_rule, args.gb_unit).gb_unit;
            return super::charges::rate_period(&mut db, period, &calendar, gb_unit, &prices).await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The time zone every registered host samples in; an error if they differ or there is none.
async fn hosts_timezone(db: &postgres::Db) -> anyhow::Result<String> {
    let zones: Vec<String> = db
        .client
        .query("SELECT DISTINCT timezone FROM hosts ORDER BY 1", &[])
        .await
        .context("read hosts")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    match zones.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!(
            "no host has shipped to the billing store yet: nothing to bill (or give --timezone)"
        ),
        many => anyhow::bail!(
            "the hosts sample in different time zones ({}): give --timezone",
            many.join(", ")
        ),
    }
}
