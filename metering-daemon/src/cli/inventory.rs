//! `eip-meter eip` and `eip-meter group`: edit the config file (comments kept), validate the
//! result, replace it atomically, signal the daemon and confirm from the kernel maps.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Subcommand;

use crate::{
    config::{AnyInterface, Config, EipState},
    dataplane::PinnedMaps,
    edit::{self, Change, EditError, EipChanges, GroupChanges},
    policy::{self, Caps},
};

pub(super) fn eip(action: EipAction) -> anyhow::Result<ExitCode> {
    match action {
        EipAction::Set {
            address,
            live,
            bandwidth,
            inbound,
            outbound,
            group,
            state,
            plan,
            plan_start,
            plan_months,
            renew_months,
        } => {
            let changes = EipChanges {
                bandwidth_mbps: bandwidth.unwrap_or_default(),
                inbound_mbps: inbound.unwrap_or_default(),
                outbound_mbps: outbound.unwrap_or_default(),
                group: group.unwrap_or_default(),
                state,
                plan: plan_of(plan.as_deref(), plan_start.as_deref(), plan_months)?,
                renew_months,
            };
            if let Some(api) = super::admin::owner_api(&live, "eips", &address.to_string())? {
                return super::admin::set_eip(&api, address, &changes);
            }
            live_edit(
                &live,
                |t| edit::set_eip(t, address, &changes),
                |_| vec![crate::addr::normalize(address)],
            )
        }
        EipAction::Remove {
            address,
            live,
            force,
        } => {
            if let Some(api) = super::admin::owner_api(&live, "eips", &address.to_string())? {
                let subject = if force {
                    format!("{address}?force=true")
                } else {
                    address.to_string()
                };
                return super::admin::remove(&api, "eips", &subject);
            }
            live_edit(
                &live,
                |t| edit::remove_eip(t, address),
                |_| vec![crate::addr::normalize(address)],
            )
        }
        EipAction::Show { address, config } => super::admin::show(&config.config, address),
        EipAction::List { config, limit } => super::admin::list(&config.config, limit),
        EipAction::Apply { config, file } => super::admin::apply(&config.config, &file),
        EipAction::Sync { config, file } => super::admin::sync(&config.config, &file),
    }
}

pub(super) fn group(action: GroupAction) -> anyhow::Result<ExitCode> {
    match action {
        GroupAction::Set {
            name,
            live,
            bandwidth,
            inbound,
            outbound,
            plan,
        } => {
            let changes = GroupChanges {
                bandwidth_mbps: bandwidth,
                inbound_mbps: inbound.unwrap_or_default(),
                outbound_mbps: outbound.unwrap_or_default(),
                plan: plan_of(plan.as_deref(), None, None)?,
            };
            if let Some(api) = super::admin::owner_api(&live, "groups", &name)? {
                return super::admin::set_group(&api, &name, &changes);
            }
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
            if let Some(api) = super::admin::owner_api(&live, "groups", &name)? {
                return super::admin::remove(&api, "groups", &name);
            }
            live_edit(&live, |t| edit::remove_group(t, &name), |_| Vec::new())
        }
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct LiveArgs {
    #[arg(long, short, env = "EIP_METER_CONFIG")]
    pub(super) config: PathBuf,
    /// Change the config file even when the daemon's admin API would take the change (the
    /// file then owns the subject).
    #[arg(long)]
    pub(super) in_file: bool,
    /// Only edit the file; do not signal the daemon (implies --in-file).
    #[arg(long)]
    pub(super) no_reload: bool,
    /// How long to wait for the kernel maps to show the change.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// The plan the flags give (a monthly package from now unless --plan-start says when).
fn plan_of(
    plan: Option<&str>,
    start: Option<&str>,
    months: Option<u32>,
) -> anyhow::Result<Option<crate::billing::plans::Plan>> {
    use crate::billing::plans::{Plan, describe};
    let Some(plan) = plan else {
        anyhow::ensure!(
            start.is_none() && months.is_none(),
            "--plan-start and --plan-months go with --plan monthly"
        );
        return Ok(None);
    };
    let start = match (plan, start) {
        (_, Some(t)) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .with_context(|| format!("--plan-start `{t}` is not RFC 3339 with an offset"))?
                .timestamp(),
        ),
        ("monthly", None) => Some(chrono::Utc::now().timestamp()),
        _ => None,
    };
    Plan::from_parts(plan, start, months)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--plan: {}", describe(&e)))
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
pub(super) enum EipAction {
    /// Add the EIP if it is missing, then apply the given changes.
    Set {
        address: IpAddr,
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
        /// How it is charged: monthly (with --plan-start and --plan-months), hourly, traffic,
        /// enhanced95 or p95. A monthly package expires at 23:59:59 on the same day
        /// --plan-months later and is then blocked, and released after the retention.
        #[arg(long)]
        plan: Option<String>,
        /// A monthly package's purchase time (RFC 3339 with an offset; default: now).
        #[arg(long)]
        plan_start: Option<String>,
        /// A monthly package's length: 1-9, or 12, 24, 36 months.
        #[arg(long)]
        plan_months: Option<u32>,
        /// Renew the monthly package by this many months (an expired one is active again at
        /// once), or convert an hourly or traffic plan into a package of this length from now.
        #[arg(long)]
        renew_months: Option<u32>,
    },
    /// Stop metering and policing the EIP (its last samples are written first). A monthly
    /// package is refused before it expires unless --force.
    Remove {
        address: IpAddr,
        #[command(flatten)]
        live: LiveArgs,
        /// Remove a monthly package before its expiry (an operator's override; logged).
        #[arg(long)]
        force: bool,
    },
    /// Show one EIP as the running daemon holds it: its settings, owner, and the kernel's
    /// state, caps, counters and drops.
    Show {
        address: IpAddr,
        #[command(flatten)]
        config: super::ConfigArg,
    },
    /// List every EIP of the running daemon (page by page through the admin API), one per line.
    List {
        #[command(flatten)]
        config: super::ConfigArg,
        /// EIPs per request.
        #[arg(long, default_value_t = 5000)]
        limit: usize,
    },
    /// Apply a batch of changes (JSON: {"changes": [...]}, see README "Admin API") through
    /// the admin API: all of them, or none with every refused item listed.
    Apply {
        #[command(flatten)]
        config: super::ConfigArg,
        /// The batch file (`-`: stdin).
        file: PathBuf,
    },
    /// Make the API-owned inventory exactly the EIPs and groups of FILE (NDJSON, one per
    /// line; see README "Admin API"), applying only the difference. Streamed: any size.
    Sync {
        #[command(flatten)]
        config: super::ConfigArg,
        /// The desired inventory (`-`: stdin).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum GroupAction {
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
        /// How it is charged: enhanced95 (300 Mbit/s and more), p95, hourly or traffic.
        #[arg(long)]
        plan: Option<String>,
    },
    /// Remove an empty group.
    Remove {
        name: String,
        #[command(flatten)]
        live: LiveArgs,
    },
}
/// Edit, validate, write atomically, signal the daemon, and confirm `affected` EIPs from the
/// kernel maps.
fn live_edit(
    live: &LiveArgs,
    apply: impl FnOnce(&str) -> Result<String, EditError>,
    affected: impl FnOnce(&Config) -> Vec<IpAddr>,
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
    eips: &[IpAddr],
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
