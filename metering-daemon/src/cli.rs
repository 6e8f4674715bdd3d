//! The `eip-meter` command line. The only place that reads signals and prints for people.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info};

use crate::{
    config::{AnyInterface, Config, ConfigError, CurrentNetns, HostCheck},
    dataplane::PinnedMaps,
    report::CounterReport,
};

/// Meter the traffic of cloud Elastic IPs with eBPF.
///
/// `run` loads TC programs onto the uplink interfaces named in the config, provisions the EIPs
/// listed there and counts every EIP's inbound (towards the EIP) and outbound (from the EIP)
/// IP-layer bytes and packets. Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON).
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RuleArg {
    /// The larger of inbound and outbound.
    Max,
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GbArg {
    Decimal,
    Binary,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon. SIGHUP re-reads the config and applies the EIP inventory; SIGTERM or
    /// SIGINT stops it (detaching, or leaving the pins, as `dataplane.on_exit` says).
    Run {
        /// Config file (TOML).
        #[arg(long, short, env = "EIP_METER_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file without applying anything; every problem is listed with its line.
    /// Exit code 0 when valid, 1 when not.
    Validate {
        #[arg(long, short, env = "EIP_METER_CONFIG")]
        config: PathBuf,
    },
    /// Recompute billing figures offline from raw 5-minute samples and print them as JSON.
    ///
    /// SAMPLES rows: `eip,interval_start,bytes_in,bytes_out[,host]` after a header line, with
    /// `interval_start` in RFC 3339 with an offset. Rows of one EIP and interval from different
    /// hosts are summed first. Any bad row (unaligned start, duplicate host, negative or
    /// non-numeric count, malformed address) is reported with its line and nothing is printed
    /// on stdout; the exit code is then 1.
    Compute {
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
        /// Which direction makes an interval's billing sample.
        #[arg(long, value_enum, default_value_t = RuleArg::Max)]
        sample_rule: RuleArg,
        /// GB of the outbound figures: 10^9 (decimal) or 2^30 (binary) bytes.
        #[arg(long, value_enum, default_value_t = GbArg::Decimal)]
        gb_unit: GbArg,
    },
    /// Export the raw samples of the sample store as CSV (the input of `compute`), for audits.
    Samples {
        #[arg(long, short, env = "EIP_METER_CONFIG")]
        config: PathBuf,
    },
    /// Print every EIP's counters from the pinned maps of a running (or kept) daemon.
    Counters {
        /// Config of the daemon whose maps to read (its pin directory is used).
        #[arg(long, short, env = "EIP_METER_CONFIG")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the `eip-meter` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
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

fn load_config(path: &Path, host: &dyn HostCheck) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Config::parse(&text, host).map_err(|problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { config } => match load_config(&config, &CurrentNetns) {
            Ok(c) => {
                println!(
                    "{}: OK ({} EIPs, interfaces {}, capacity {}, pins in {})",
                    config.display(),
                    c.eips.len(),
                    c.dataplane.interfaces.join(", "),
                    c.dataplane.capacity,
                    c.dataplane.pin_dir().display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Compute {
            samples,
            timezone,
            interval,
            bandwidth_history,
            groups,
            sample_rule,
            gb_unit,
        } => compute(ComputeArgs {
            samples,
            timezone,
            interval,
            bandwidth_history,
            groups,
            rule: sample_rule,
            gb_unit,
        }),
        Command::Samples { config } => {
            let c = load_config(&config, &AnyInterface)?;
            let path = c.sampler.store_path();
            anyhow::ensure!(path.exists(), "no sample store at {}", path.display());
            let store = crate::store::Store::open(&path)?;
            let stdout = std::io::stdout();
            let n = store.export_samples(std::io::BufWriter::new(stdout.lock()))?;
            info!(samples = n, store = %path.display(), "exported");
            Ok(ExitCode::SUCCESS)
        }
        Command::Counters { config, json } => {
            let c = load_config(&config, &AnyInterface)?;
            let pin_dir = c.dataplane.pin_dir();
            let maps = PinnedMaps::open(&pin_dir).with_context(|| {
                format!(
                    "no data plane pinned in {} (is the daemon running?)",
                    pin_dir.display()
                )
            })?;
            let report = CounterReport::new(&maps.read_counters()?, maps.read_non_eip()?);
            print!(
                "{}",
                if json {
                    report.to_json() + "\n"
                } else {
                    report.to_table()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let initial = load_config(&config, &CurrentNetns)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(run_with_signals(config, initial))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_with_signals(path: PathBuf, initial: Config) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let (reload_tx, reload_rx) = mpsc::channel(4);

    // SIGHUP: re-read and validate; an invalid file is reported and changes nothing.
    let reloader = async move {
        while hangup.recv().await.is_some() {
            info!(config = %path.display(), "SIGHUP: reloading");
            match load_config(&path, &CurrentNetns) {
                Ok(c) => {
                    if reload_tx.send(c).await.is_err() {
                        break;
                    }
                }
                Err(e) => error!(error = %e, "reload rejected; keeping the running inventory"),
            }
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM"),
            _ = interrupt.recv() => info!("SIGINT"),
        }
    };
    tokio::select! {
        result = crate::run(initial, reload_rx, shutdown) => result.map_err(Into::into),
        () = reloader => unreachable!("the SIGHUP stream never ends"),
    }
}

fn open_input(path: &Path) -> anyhow::Result<Box<dyn std::io::Read>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(std::io::BufReader::new(file)))
}

struct ComputeArgs {
    samples: PathBuf,
    timezone: String,
    interval: u32,
    bandwidth_history: Option<PathBuf>,
    groups: Option<PathBuf>,
    rule: RuleArg,
    gb_unit: GbArg,
}

fn compute(args: ComputeArgs) -> anyhow::Result<ExitCode> {
    use crate::billing::{GbUnit, SampleRule, calendar::Calendar, replay, series::SeriesOptions};
    let ComputeArgs {
        samples,
        timezone,
        interval,
        bandwidth_history,
        groups,
        rule,
        gb_unit,
    } = args;
    let calendar = Calendar::new(&timezone, interval)?;
    let options = SeriesOptions {
        rule: match rule {
            RuleArg::Max => SampleRule::Max,
            RuleArg::Inbound => SampleRule::Inbound,
            RuleArg::Outbound => SampleRule::Outbound,
        },
        gb_unit: match gb_unit {
            GbArg::Decimal => GbUnit::Decimal,
            GbArg::Binary => GbUnit::Binary,
        },
    };
    let history = bandwidth_history.as_deref().map(open_input).transpose()?;
    let groups = groups.as_deref().map(open_input).transpose()?;
    match replay::compute_with_groups(open_input(&samples)?, history, groups, calendar, options) {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report)?);
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
