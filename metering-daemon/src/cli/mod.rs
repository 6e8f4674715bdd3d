//! The `eip-meter` command line. The only place that reads signals, prints for people, and
//! uses `anyhow`.
//!
//! * `run.rs`: `run` and `validate`.
//! * `status.rs`: `counters`, from the pinned maps of a running (or kept) daemon.
//! * `inventory.rs`: `eip` and `group`, through the admin API or as edits of the config file.
//! * `admin.rs`: the admin API's client side: `eip show|list|apply|sync`, `history`.
//! * `billing.rs`: `bill` and `store migrate`, on the shared PostgreSQL billing store.
//! * `offline.rs`: `samples`, `report`, `plot`: the local store's samples and figures, without
//!   a daemon.
//! * `compute.rs`: `compute`, figures recomputed from CSV files in bounded memory.
//! * `rate.rs`: `rate`, charge lines from `compute`'s figures, plans and prices, offline.

mod admin;
mod billing;
mod charges;
mod compute;
mod inventory;
mod offline;
pub(crate) mod rate;
mod run;
mod status;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing::error;

use crate::config::{Config, ConfigError, HostCheck};

/// Meter the traffic of cloud Elastic IPs with eBPF.
///
/// `run` loads TC programs onto the uplink interfaces named in the config, provisions the EIPs
/// listed there and counts every EIP's inbound (towards the EIP) and outbound (from the EIP)
/// IP-layer bytes and packets, samples them every interval into a local store, and serves the
/// figures to Prometheus. Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON).
#[derive(Debug, Parser)]
#[command(name = "eip-meter", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The config file, for every command that reads one.
#[derive(Debug, clap::Args)]
pub(super) struct ConfigArg {
    /// Config file (TOML).
    #[arg(long, short, env = "EIP_METER_CONFIG")]
    pub(super) config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon. SIGHUP re-reads the config and applies the EIP inventory; SIGTERM or
    /// SIGINT stops it (detaching, or leaving the pins, as `dataplane.on_exit` says).
    Run(ConfigArg),
    /// Check a config file without applying anything; every problem is listed with its line
    /// (including uplinks that do not exist here and a metrics address in use).
    /// Exit code 0 when valid, 1 when not.
    Validate(ConfigArg),
    /// Print every EIP's counters from the pinned maps of a running (or kept) daemon, after
    /// each uplink's attachment state.
    Counters(status::CountersArgs),
    /// Add, resize, block, unblock, move between groups or remove EIPs, live; show, list,
    /// apply batches, sync the whole inventory.
    ///
    /// A change goes where the EIP lives. When the daemon runs, a new EIP or one the API
    /// created is changed through its admin API (kept in its store; answered once the kernel
    /// maps hold it). An EIP listed in the config file (or any, with --in-file, or when no
    /// daemon runs) is changed in the file: edited with its comments kept, validated whole
    /// (nothing written if invalid), replaced atomically, then the daemon is sent SIGHUP and
    /// the kernel maps are watched until they show the change.
    Eip {
        #[command(subcommand)]
        action: inventory::EipAction,
    },
    /// Add, resize or remove a shared bandwidth (a group of EIPs under one cap), live.
    Group {
        #[command(subcommand)]
        action: inventory::GroupAction,
    },
    /// List the audit trail of inventory changes from the local store: when, effective when,
    /// who (source and uid), the subject, before and after. Needs no running daemon.
    History(admin::HistoryArgs),
    /// Export the raw samples of the sample store as CSV (the input of `compute`), for audits.
    Samples(ConfigArg),
    /// Print the billing figures of the local store for a day or a month: closed days and
    /// months as stored, the open ones as they stand, per EIP and shared bandwidth, with the
    /// uplinks' state and the metering gaps. Needs no running daemon.
    Report(offline::ReportArgs),
    /// Draw one EIP's samples of a day or a month as an SVG chart, with its enhanced-95 daily
    /// peaks, the classic 95th, the monthly average peak and its cap.
    Plot(offline::PlotArgs),
    /// Recompute billing figures offline from raw 5-minute samples and print them as JSON.
    ///
    /// SAMPLES rows: `eip,interval_start,bytes_in,bytes_out[,host[,state]]` after a header
    /// line, with `interval_start` in RFC 3339 with an offset and `state` `measured` (default)
    /// or `partial`. Rows of one EIP and interval from different hosts are summed first. Any
    /// bad row (unaligned start, duplicate host, negative or non-numeric count, malformed
    /// address) is reported with its line and nothing is printed on stdout; the exit code is
    /// then 1.
    Compute(compute::ComputeArgs),
    /// Rate figures into charge lines, offline (the auditor's path): `compute`'s JSON, a plans
    /// file (each EIP's and shared bandwidth's plan, creation, deletion, bandwidth history)
    /// and a price file. Each line carries its interval, quantity, unit price, the exact amount
    /// and the amount settled (rounded once, half away from zero, to the cent). Lines are
    /// chosen by their settlement time in (--from, --to].
    Rate(rate::RateArgs),
    /// Compute the fleet's figures for a day or a month in the shared PostgreSQL billing store,
    /// from every router's shipped samples (summed per interval across hosts before any
    /// percentile), and write them to its `figures` table as revisions. For a systemd timer
    /// (deploy/eip-meter-bill.timer); running it again changes nothing unless samples arrived.
    Bill(billing::BillArgs),
    /// Manage the shared PostgreSQL billing store.
    Store {
        #[command(subcommand)]
        action: billing::StoreAction,
    },
}

/// Entry point of the `eip-meter` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            error!("{}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each cause once: many messages already name their source, and
/// repeating it would only bury the point.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Reads a file that decides prices or plans: refused when every local user may write it,
/// with a warning when its group may.
fn read_settings(path: &Path) -> anyhow::Result<String> {
    use crate::config::permissions::{self, Exposure};
    match permissions::mode_of(path).map(|mode| permissions::settings_file(path, mode)) {
        Some(Exposure::Refuse(message)) => anyhow::bail!(message),
        Some(Exposure::Warn(message)) => eprintln!("warning: {message}"),
        _ => {}
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn load_config(path: &Path, host: &dyn HostCheck) -> Result<Config, ConfigError> {
    Config::load_with(path, host)
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run::run(&args.config),
        Command::Validate(args) => Ok(run::validate(&args.config)),
        Command::Counters(args) => status::counters(&args),
        Command::Eip { action } => inventory::eip(action),
        Command::Group { action } => inventory::group(action),
        Command::History(args) => admin::history(&args),
        Command::Samples(args) => offline::samples(&args.config),
        Command::Report(args) => offline::report(&args),
        Command::Plot(args) => offline::plot(&args),
        Command::Compute(args) => compute::compute(args),
        Command::Rate(args) => rate::rate(&args),
        Command::Bill(args) => billing::bill(args),
        Command::Store { action } => billing::store(action),
    }
}
