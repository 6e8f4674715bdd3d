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
    config::{AnyInterface, Config, ConfigError, CurrentNetns, EipState, HostCheck},
    dataplane::PinnedMaps,
    edit::{self, Change, EditError, EipChanges, GroupChanges},
    exposition::counters::CounterReport,
    policy::{self, Caps},
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
    /// SAMPLES rows: `eip,interval_start,bytes_in,bytes_out[,host[,state]]` after a header
    /// line, with `interval_start` in RFC 3339 with an offset and `state` `measured` (default) or
    /// `partial`. Rows of one EIP and interval from different
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
    /// Add, resize, block, unblock, move between groups or remove one EIP, live.
    ///
    /// Edits the config file (comments kept), validates the whole result (nothing is written if
    /// it is invalid), replaces the file atomically, sends the running daemon SIGHUP and waits
    /// until the kernel maps show the change. The file stays the source of truth, so a restart
    /// or a later reload keeps the change.
    Eip {
        #[command(subcommand)]
        action: EipAction,
    },
    /// Add, resize or remove a shared bandwidth (a group of EIPs under one cap), live.
    Group {
        #[command(subcommand)]
        action: GroupAction,
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

#[derive(Debug, clap::Args)]
struct LiveArgs {
    #[arg(long, short, env = "EIP_METER_CONFIG")]
    config: PathBuf,
    /// Only edit the file; do not signal the daemon.
    #[arg(long)]
    no_reload: bool,
    /// How long to wait for the kernel maps to show the change.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// A bandwidth in Mbit/s, or `none` to delete it.
fn mbps_change(s: &str) -> Result<Change<u64>, String> {
    if s == "none" {
        return Ok(Change::Clear);
    }
    match s.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!(
            "`{s}` is not a bandwidth in Mbit/s (>= 1) or `none`"
        )),
        Ok(v) => Ok(Change::Set(v)),
    }
}

fn group_change(s: &str) -> Result<Change<String>, String> {
    Ok(if s == "none" {
        Change::Clear
    } else {
        Change::Set(s.to_owned())
    })
}

fn parse_state(s: &str) -> Result<EipState, String> {
    EipState::ALL
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("`{s}` is not one of active, expired, arrears, frozen"))
}

#[derive(Debug, Subcommand)]
enum EipAction {
    /// Add the EIP if it is missing, then apply the given changes.
    Set {
        address: std::net::IpAddr,
        #[command(flatten)]
        live: LiveArgs,
        /// Purchased bandwidth in Mbit/s (cap of both directions x share), or `none`.
        #[arg(long, value_parser = mbps_change)]
        bandwidth: Option<Change<u64>>,
        /// Inbound bandwidth in Mbit/s if it differs, or `none`.
        #[arg(long, value_parser = mbps_change)]
        inbound: Option<Change<u64>>,
        /// Outbound bandwidth in Mbit/s if it differs, or `none`.
        #[arg(long, value_parser = mbps_change)]
        outbound: Option<Change<u64>>,
        /// Move into a shared bandwidth (its own bandwidths are dropped), or `none` to leave.
        #[arg(long, value_parser = group_change)]
        group: Option<Change<String>>,
        /// active, expired, arrears or frozen (the last three drop all its traffic).
        #[arg(long, value_parser = parse_state)]
        state: Option<EipState>,
    },
    /// Stop metering and policing the EIP (its last samples are written first).
    Remove {
        address: std::net::IpAddr,
        #[command(flatten)]
        live: LiveArgs,
    },
}

#[derive(Debug, Subcommand)]
enum GroupAction {
    /// Add the group if it is missing (then --bandwidth is required), or change its caps.
    Set {
        name: String,
        #[command(flatten)]
        live: LiveArgs,
        /// Purchased bandwidth in Mbit/s.
        #[arg(long)]
        bandwidth: Option<u64>,
        #[arg(long, value_parser = mbps_change)]
        inbound: Option<Change<u64>>,
        #[arg(long, value_parser = mbps_change)]
        outbound: Option<Change<u64>>,
    },
    /// Remove an empty group.
    Remove {
        name: String,
        #[command(flatten)]
        live: LiveArgs,
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
        Command::Eip { action } => match action {
            EipAction::Set {
                address,
                live,
                bandwidth,
                inbound,
                outbound,
                group,
                state,
            } => {
                let changes = EipChanges {
                    bandwidth_mbps: bandwidth.unwrap_or_default(),
                    inbound_mbps: inbound.unwrap_or_default(),
                    outbound_mbps: outbound.unwrap_or_default(),
                    group: group.unwrap_or_default(),
                    state,
                };
                live_edit(
                    &live,
                    |t| edit::set_eip(t, address, &changes),
                    |_| vec![crate::addr::normalize(address)],
                )
            }
            EipAction::Remove { address, live } => live_edit(
                &live,
                |t| edit::remove_eip(t, address),
                |_| vec![crate::addr::normalize(address)],
            ),
        },
        Command::Group { action } => match action {
            GroupAction::Set {
                name,
                live,
                bandwidth,
                inbound,
                outbound,
            } => {
                let changes = GroupChanges {
                    bandwidth_mbps: bandwidth,
                    inbound_mbps: inbound.unwrap_or_default(),
                    outbound_mbps: outbound.unwrap_or_default(),
                };
                live_edit(
                    &live,
                    |t| edit::set_group(t, &name, &changes),
                    |c| {
                        c.eips
                            .iter()
                            .filter(|e| e.group.as_deref() == Some(name.as_str()))
                            .map(|e| e.address)
                            .collect()
                    },
                )
            }
            GroupAction::Remove { name, live } => {
                live_edit(&live, |t| edit::remove_group(t, &name), |_| Vec::new())
            }
        },
        Command::Counters { config, json } => {
            let c = load_config(&config, &AnyInterface)?;
            let pin_dir = c.dataplane.pin_dir();
            let maps = PinnedMaps::open(&pin_dir).with_context(|| {
                format!(
                    "no data plane pinned in {} (is the daemon running?)",
                    pin_dir.display()
                )
            })?;
            let (uplinks, checked_at) = uplink_rows(&c);
            let report = CounterReport::new(
                &maps.read_counters()?,
                &maps.read_enforcement()?,
                maps.read_non_eip()?,
            )
            .with_uplinks(uplinks, checked_at);
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
            // An uplink that does not exist yet is attached when it appears (`validate` still
            // reports it); every other problem stops the start.
            let initial = load_config(&config, &AnyInterface)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(run_with_signals(config, initial))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The uplinks as the running daemon last checked them, or `unknown` when no daemon is
/// running (its status file is gone, or its process is).
fn uplink_rows(config: &Config) -> (Vec<crate::exposition::counters::UplinkRow>, Option<i64>) {
    use crate::exposition::counters::UplinkRow;
    let path = crate::daemon::uplinks_file(&config.sampler.state_dir);
    let file: Option<crate::daemon::UplinkFile> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    match file {
        Some(f) if process_alive(f.pid) => (
            f.uplinks.iter().map(UplinkRow::checked).collect(),
            Some(f.checked_at),
        ),
        _ => (
            config
                .dataplane
                .interfaces
                .iter()
                .map(|i| UplinkRow::unknown(i))
                .collect(),
            None,
        ),
    }
}

fn process_alive(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

/// Edit, validate, write atomically, signal the daemon, and confirm `affected` EIPs from the
/// kernel maps.
fn live_edit(
    live: &LiveArgs,
    apply: impl FnOnce(&str) -> Result<String, EditError>,
    affected: impl FnOnce(&Config) -> Vec<std::net::IpAddr>,
) -> anyhow::Result<ExitCode> {
    let path = &live.config;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let new_text = apply(&text)?;
    let config = match Config::parse(&new_text, &AnyInterface) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!(
                "the change would make {} invalid; nothing written:",
                path.display()
            );
            for p in problems {
                eprintln!("  {p}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    if new_text == text {
        println!("{}: already as asked; nothing to do", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    write_atomically(path, &new_text)?;
    if live.no_reload {
        println!("{}: written (daemon not signalled)", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let pid_file = crate::daemon::pid_file(&config.sampler.state_dir);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| {
            format!(
                "{} written, but no running daemon found ({} missing); it applies at the next start",
                path.display(),
                pid_file.display()
            )
        })?;
    let started = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("cannot signal the daemon (pid {pid})"))?;
    let eips = affected(&config);
    let desired = policy::desired(&config);
    let deadline = started + std::time::Duration::from_millis(live.timeout_ms);
    let maps = PinnedMaps::open(&config.dataplane.pin_dir())?;
    loop {
        if in_kernel(&maps, &desired, &eips)? {
            println!(
                "{}: applied by the daemon (pid {pid}) in {} ms",
                path.display(),
                started.elapsed().as_millis()
            );
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{} written and daemon {pid} signalled, but the kernel maps do not show the change after {} ms; see the daemon's log",
            path.display(),
            live.timeout_ms
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Whether the pinned maps hold `desired` for every EIP in `eips` (absent ones: not
/// provisioned). Looks up only those EIPs: this polls, and the inventory may be 1,000,000.
fn in_kernel(
    maps: &PinnedMaps,
    desired: &policy::DesiredPolicy,
    eips: &[std::net::IpAddr],
) -> anyhow::Result<bool> {
    for addr in eips {
        let plan = desired.eips.iter().find(|(a, _)| a == addr).map(|(_, p)| p);
        let matches = match (plan, maps.enforcement_of(*addr)?) {
            (None, None) => true,
            (Some(plan), Some(got)) => {
                let caps = match &plan.caps {
                    Caps::None => None,
                    Caps::Own(pair) => Some(*pair),
                    Caps::Group(name) => desired
                        .groups
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, p)| *p),
                };
                got.state == Some(plan.state) && got.caps == caps
            }
            _ => false,
        };
        if !matches {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Replaces `path` so a reader sees the old file or the new one, never half of it.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config"),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
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
            // Uplinks are fixed until a restart, and may be missing for a while: not checked.
            let reload = match load_config(&path, &AnyInterface) {
                Ok(c) => crate::daemon::Reload::Apply(Box::new(c)),
                Err(e) => {
                    error!(error = %e, "reload rejected; keeping the running inventory");
                    crate::daemon::Reload::Rejected
                }
            };
            if reload_tx.send(reload).await.is_err() {
                break;
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
