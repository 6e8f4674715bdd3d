//! The daemon's main loop: load, provision, attach, then sample at every interval boundary,
//! follow the uplinks, and apply inventory changes until told to stop. Signal handling lives at
//! the edge (`cli`); this takes plain futures and channels so tests can drive it in-process.
//! The wall clock is read here, never in the billing code.

use std::{
    collections::HashSet,
    future::Future,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::{
    billing::series::SeriesOptions,
    config::Config,
    dataplane::{
        Dataplane, DataplaneError, UplinkEvent, UplinkStatus,
        links::watch::{LinkNotice, LinkWatcher},
    },
    policy,
    sampling::{Coverage, Gaps, Sampler},
    store::{Store, StoreError},
};

/// How often the uplinks are checked besides link notifications and sampling rounds: what
/// sends no notification (`bpftool link detach`, another agent replacing our program) is
/// repaired within this.
pub const UPLINK_CHECK_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn rfc3339(t: f64) -> String {
    chrono::DateTime::from_timestamp(t.floor() as i64, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// Runs the daemon until `shutdown` resolves. Each config received on `reloads` replaces the EIP
/// inventory, states, bandwidths, groups and `[policing]` at once, without reattaching anything
/// (the `[dataplane]` and `[sampler]` sections are fixed for the life of the process).
pub async fn run(
    config: Config,
    mut reloads: mpsc::Receiver<Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let state_dir = &config.sampler.state_dir;
    std::fs::create_dir_all(state_dir).map_err(|source| DaemonError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let calendar = config.sampler.calendar();
    let store = Store::open(&config.sampler.store_path())?;
    let options = SeriesOptions {
        rule: config.sampler.sample_rule,
        gb_unit: config.sampler.gb_unit,
    };
    let mut sampler = Sampler::open(calendar, options, config.sampler.host.clone(), store)?;

    let mut dataplane = Dataplane::load(&config.dataplane)?;
    // Provision before attaching, so the first counted packet already finds its EIP.
    let report = dataplane.apply(&policy::desired(&config))?;
    // Kept maps carry counts up to when the previous daemon's links stopped: if a link did not
    // survive, the traffic since the last committed round may be missing.
    let unmetered_since = match (dataplane.reused_pins(), sampler.last_boundary()) {
        (true, Some(boundary)) => boundary as f64,
        _ => f64::INFINITY,
    };
    // Gaps a previous daemon recorded that reach past the last committed round still mark it.
    let earlier_gaps = sampler.store().gaps_after(
        sampler
            .last_boundary()
            .map_or(f64::NEG_INFINITY, |b| b as f64),
    )?;
    let mut uplinks = UplinkLog::new(state_dir, Gaps::from_records(&earlier_gaps));
    let events = dataplane.attach_since(unmetered_since)?;
    uplinks.note(&events, &dataplane, sampler.store());
    let mut watcher = match LinkWatcher::subscribe() {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, period_seconds = UPLINK_CHECK_PERIOD.as_secs(), "no link notifications; uplinks are checked periodically only");
            None
        }
    };
    note_inventory(&mut sampler, &config, &[]);
    let pid_path = pid_file(state_dir);
    if let Err(e) = std::fs::write(&pid_path, format!("{}\n", std::process::id())) {
        warn!(path = %pid_path.display(), error = %e, "pid file not written; `eip-meter eip`/`group` cannot find this daemon");
    }
    info!(
        eips = dataplane.slots().len(),
        added = report.added,
        removed = report.removed.len(),
        groups = config.groups.len(),
        share = config.policing.share,
        capacity = config.dataplane.capacity,
        interval_seconds = calendar.interval(),
        timezone = calendar.timezone(),
        "ready"
    );
    notify_systemd("READY=1");

    tokio::pin!(shutdown);
    let mut recheck = tokio::time::interval(UPLINK_CHECK_PERIOD);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut current = config;
    let step = i64::from(calendar.interval());
    loop {
        let now = now_seconds();
        let boundary = calendar.interval_start(now.floor() as i64) + step;
        let wait = Duration::from_secs_f64((boundary as f64 - now).max(0.0));
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {
                // Repair first: a round must not start with an uplink silently bare.
                let events = dataplane.check_uplinks();
                uplinks.note(&events, &dataplane, sampler.store());
                let started = Instant::now();
                let readings = match dataplane.read_counters() {
                    Ok(r) => r,
                    Err(e) => {
                        // The kernel kept the counts: the next round's delta covers this one.
                        error!(boundary, error = %e, "cannot read counters; sampling at the next boundary");
                        continue;
                    }
                };
                let coverage = uplinks.gaps.coverage(boundary - step, boundary);
                match sampler.round_with(boundary, &readings, coverage) {
                    Ok(r) => {
                        uplinks.gaps.forget_before(boundary);
                        if coverage == Coverage::Incomplete {
                            warn!(boundary, interval_start = %rfc3339((boundary - step) as f64), samples = r.samples, "an uplink was not metered for part of this interval; its samples are marked partial");
                        }
                        info!(
                            boundary,
                            eips = readings.len(),
                            samples = r.samples,
                            closed_days = r.closed_days,
                            closed_months = r.closed_months,
                            compute_ms = (r.compute_seconds * 1e3) as u64,
                            commit_ms = (r.commit_seconds * 1e3) as u64,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "sampled"
                        );
                    }
                    // Nothing of the round was committed; the next round covers it.
                    Err(e) => error!(boundary, error = %e, "sampling round not committed"),
                }
                uplinks.write_status(&dataplane);
            }
            notice = next_notice(&mut watcher) => match notice {
                Some(notice) => {
                    if dataplane.concerns_uplink(&notice) {
                        debug!(ifindex = notice.ifindex, name = ?notice.name, "link notice");
                        let events = dataplane.check_uplinks();
                        uplinks.note(&events, &dataplane, sampler.store());
                    }
                }
                None => {
                    warn!(period_seconds = UPLINK_CHECK_PERIOD.as_secs(), "link notifications stopped; uplinks are checked periodically only");
                    watcher = None;
                }
            },
            _ = recheck.tick() => {
                let events = dataplane.check_uplinks();
                uplinks.note(&events, &dataplane, sampler.store());
            }
            Some(new) = reloads.recv() => {
                if new.dataplane != current.dataplane || new.sampler != current.sampler {
                    warn!("changes to [dataplane] and [sampler] take effect only after a restart; applying the EIP inventory");
                }
                let started = Instant::now();
                match dataplane.apply(&policy::desired(&new)) {
                    Ok(r) => {
                        let at = now_seconds() as i64;
                        for (eip, last, drops) in &r.removed {
                            info!(
                                %eip,
                                inbound_rate_limited_bytes = drops.inbound.rate_limited_bytes,
                                outbound_rate_limited_bytes = drops.outbound.rate_limited_bytes,
                                inbound_blocked_bytes = drops.inbound.blocked_bytes,
                                outbound_blocked_bytes = drops.outbound.blocked_bytes,
                                "final drop counters of a removed EIP"
                            );
                            if let Err(e) = sampler.eip_removed(*eip, at, last) {
                                error!(%eip, error = %e, "final samples of a removed EIP not committed");
                            }
                        }
                        let removed: Vec<IpAddr> = r.removed.iter().map(|(e, ..)| *e).collect();
                        note_inventory(&mut sampler, &new, &removed);
                        info!(
                            added = r.added,
                            removed = r.removed.len(),
                            changed = r.changed,
                            groups_added = r.groups_added,
                            groups_removed = r.groups_removed,
                            eips = dataplane.slots().len(),
                            apply_ms = started.elapsed().as_millis() as u64,
                            "config applied"
                        );
                    }
                    // The slot table and the kernel still agree (every step is undone on error),
                    // so the daemon keeps running with what was applied.
                    Err(e) => error!(error = %e, "inventory reload failed part-way"),
                }
                current = new;
            }
        }
    }
    info!("shutting down");
    let _ = std::fs::remove_file(&pid_path);
    let _ = std::fs::remove_file(&uplinks.status_path);
    notify_systemd("STOPPING=1");
    if let Err(e) = sampler.checkpoint_all() {
        error!(error = %e, "final checkpoint not written; the next start replays from the last one");
    }
    dataplane.shutdown()?;
    Ok(())
}

/// Where the running daemon writes its pid (read by `eip-meter eip` and `eip-meter group`).
pub fn pid_file(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("eip-meter.pid")
}

/// The next link notice, or never when there is no subscription.
async fn next_notice(watcher: &mut Option<LinkWatcher>) -> Option<LinkNotice> {
    match watcher {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// Where the daemon publishes its uplinks' attachment state for `eip-meter counters`.
pub fn uplinks_file(state_dir: &Path) -> PathBuf {
    state_dir.join("uplinks.json")
}

/// What the daemon knows about its uplinks' metering: the gaps (for marking samples), and the
/// state it last published. Logs every change: WARN when an uplink stops being metered, INFO
/// when it is back (with how long it was not), ERROR when attaching fails.
struct UplinkLog {
    gaps: Gaps,
    status_path: PathBuf,
    /// Uplinks whose attach failure was logged at ERROR (repeats go to DEBUG).
    failing: HashSet<String>,
}

impl UplinkLog {
    fn new(state_dir: &Path, gaps: Gaps) -> Self {
        Self {
            gaps,
            status_path: uplinks_file(state_dir),
            failing: HashSet::new(),
        }
    }

    /// Logs `events`, keeps their gaps, and records them in the store, so a restart still marks
    /// the intervals they touched.
    fn note(&mut self, events: &[UplinkEvent], dataplane: &Dataplane, store: &Store) {
        for event in events {
            match event {
                UplinkEvent::Lost {
                    interface,
                    ifindex,
                    cause,
                    since,
                } => {
                    self.gaps.opened(interface, *since);
                    if let Err(e) = store.gap_opened(interface, &cause.to_string(), *since) {
                        error!(interface, error = %e, "metering gap not recorded in the store; samples committed after a restart may not show it");
                    }
                    warn!(interface, ifindex, cause = %cause, since = %rfc3339(*since), "uplink not metered: its traffic is not counted until the programs are back on it");
                }
                UplinkEvent::Attached {
                    interface,
                    ifindex,
                    mode,
                    took_over,
                    gap,
                } => {
                    self.failing.remove(interface);
                    match gap {
                        Some((from, to)) => {
                            self.gaps.closed(interface, *from, *to);
                            if let Err(e) = store.gap_closed(interface, "not attached", *from, *to)
                            {
                                error!(interface, error = %e, "metering gap not recorded in the store; samples committed after a restart may not show it");
                            }
                            info!(interface, ifindex, mode, detached_seconds = format!("{:.3}", to - from), since = %rfc3339(*from), "uplink metered again");
                        }
                        None => info!(interface, ifindex, mode, took_over, "attached"),
                    }
                }
                UplinkEvent::AttachFailed { interface, error } => {
                    if self.failing.insert(interface.clone()) {
                        error!(
                            interface,
                            error,
                            "cannot attach to the uplink: its traffic is not counted; retrying"
                        );
                    } else {
                        debug!(interface, error, "attach still failing");
                    }
                }
            }
        }
        if !events.is_empty() {
            self.write_status(dataplane);
        }
    }

    /// Replaces the status file atomically (a reader sees the old one or the new one).
    fn write_status(&self, dataplane: &Dataplane) {
        let status: Vec<UplinkStatus> = dataplane.uplink_status();
        let tmp = self.status_path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&UplinkFile {
            pid: std::process::id(),
            checked_at: now_seconds().floor() as i64,
            uplinks: status,
        })
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &self.status_path));
        if let Err(e) = written {
            debug!(path = %self.status_path.display(), error = %e, "uplink status not written");
        }
    }
}

/// The contents of [`uplinks_file`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UplinkFile {
    /// The daemon that wrote it.
    pub pid: u32,
    /// UNIX seconds of the last check.
    pub checked_at: i64,
    pub uplinks: Vec<UplinkStatus>,
}

/// Tells the sampler when EIPs started counting and what bandwidth each has.
fn note_inventory(sampler: &mut Sampler, config: &Config, removed: &[IpAddr]) {
    let at = now_seconds() as i64;
    for eip in &config.eips {
        if removed.contains(&eip.address) {
            continue;
        }
        sampler.eip_added(eip.address, at);
        if let Some(bw) = eip.bandwidth_mbps {
            sampler.bandwidth_set(eip.address, at, bw);
        }
    }
}

/// Tells systemd (`Type=notify`) about state changes; a no-op outside systemd.
fn notify_systemd(state: &str) {
    use std::os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram},
    };
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        warn!(socket = path, error = %e, "cannot notify systemd");
    }
}
