//! The daemon: load, provision, attach, then sample at every interval boundary, follow the
//! uplinks, apply inventory changes and serve `/metrics` until told to stop. Signal handling
//! lives at the edge (`cli`); this takes plain futures and channels so tests can drive it
//! in-process. The wall clock is read here, never in the billing code.
//!
//! * `mod.rs`: start-up, the loop, shutdown.
//! * `round.rs`: one sampling round and the figures it publishes.
//! * `clock.rs`: which boundary is due, and wall-clock steps.
//! * `reload.rs`: applying a new config.
//! * `admin.rs`: applying inventory changes (API batches and syncs, reloads), answering reads.
//! * `lifecycle.rs`: expiry, renewal, freeze and release at their second.
//! * `uplinks.rs`: logging, recording and publishing uplink changes.

mod admin;
mod clock;
mod lifecycle;
mod reload;
mod round;
mod ship;
mod uplinks;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{Notify, mpsc};
use tracing::{debug, error, info, warn};

pub use ship::{ShipStatus, shipping_file};
pub use uplinks::{UplinkFile, uplinks_file};

use crate::{
    billing::{calendar::Calendar, series::SeriesOptions},
    config::Config,
    dataplane::{
        Dataplane, DataplaneError, UplinkEvent,
        links::watch::{LinkNotice, LinkWatcher},
    },
    exposition::{MetricsHandle, server, tally::Tally},
    inventory::{self, Inventory, Limits, Source},
    policy,
    sampling::{Gaps, Sampler},
    store::{Store, StoreError, postgres::ship::HostIdentity},
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
    #[error(
        "state directory {path} is not writable (under systemd, the unit needs StateDirectory= or ReadWritePaths= for it)"
    )]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "metrics.listen {addr}: cannot listen there (choose another address, or set metrics.enabled = false)"
    )]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Api(#[from] inventory::server::ApiBindError),
    #[error("the local store's inventory is unreadable: {0}")]
    StoredInventory(String),
    #[error(
        "the config file conflicts with the inventory the API created (nothing started):\n{}",
        .0.iter().map(|e| format!("  {}: {} ({})", e.subject, e.message, e.code)).collect::<Vec<_>>().join("\n")
    )]
    Conflict(Vec<inventory::ItemError>),
    #[error(transparent)]
    Apply(#[from] admin::ApplyError),
}

/// A reload request: a new valid config, or a file that was refused (counted, nothing changes).
#[derive(Debug)]
pub enum Reload {
    Apply(Box<Config>),
    Rejected,
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

/// The lifecycle's periods from the config, in the billing zone.
fn lifecycle_rules(config: &Config) -> crate::rating::LifecycleRules {
    let l = &config.lifecycle;
    crate::rating::LifecycleRules {
        tz: config.sampler.calendar().tz(),
        package_expiry_time: l.package_expiry_time,
        retention_seconds: l.retention_seconds,
        grace_seconds: l.grace_seconds,
        frozen_seconds: l.frozen_seconds,
    }
}

/// Where the running daemon writes its pid (read by `eip-meter eip` and `eip-meter group`).
pub fn pid_file(state_dir: &Path) -> PathBuf {
    state_dir.join("eip-meter.pid")
}

/// Everything the running daemon holds.
struct Daemon {
    config: Config,
    calendar: Calendar,
    dataplane: Dataplane,
    sampler: Sampler,
    uplinks: uplinks::UplinkLog,
    tally: Tally,
    metrics: MetricsHandle,
    /// Shipping to the billing store (when configured): woken after every round.
    shipping: Option<(Arc<Notify>, ship::SharedStatus)>,
    /// Every EIP and group, with its owner (the config's own lists are emptied at start).
    inventory: Inventory,
    limits: Limits,
    /// After a lifecycle transition could not be applied: not before this (UNIX seconds).
    lifecycle_retry_at: f64,
    /// While the store refuses writes: the boundary of the first round it refused, and
    /// whether rounds are now skipped. One error per episode (and one when skipping starts),
    /// not one per round.
    store_refusing: Option<(i64, bool)>,
    /// The wall clock against the monotonic one, across rounds.
    clock: clock::ClockWatch,
}

/// Runs the daemon until `shutdown` resolves. Each config received on `reloads` replaces the EIP
/// inventory, states, bandwidths, groups and `[policing]` at once, without reattaching anything
/// (the `[dataplane]`, `[sampler]` and `[metrics]` sections are fixed for the life of the
/// process).
pub async fn run(
    config: Config,
    mut reloads: mpsc::Receiver<Reload>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let state_dir = config.sampler.state_dir.clone();
    // A state directory that cannot be written (ProtectSystem=strict without StateDirectory=)
    // would otherwise surface as an obscure SQLite error.
    let probe = state_dir.join(".writable");
    private_dir(&state_dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|source| DaemonError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
    // Bound first: an address in use is a clear error before anything is loaded.
    let listener = if config.metrics.enabled {
        let addr = config.metrics.listen;
        Some(server::bind(addr).map_err(|source| DaemonError::MetricsListen { addr, source })?)
    } else {
        None
    };
    let api = if config.api.enabled {
        Some(inventory::server::bind(&config.api)?)
    } else {
        None
    };
    let calendar = config.sampler.calendar();
    let store = Store::open(&config.sampler.store_path())?;
    let options = SeriesOptions {
        rule: config.sampler.sample_rule,
        gb_unit: config.sampler.gb_unit,
    };
    let mut sampler = Sampler::open(calendar, options, config.sampler.host.clone(), store)?;

    // The inventory: what the store says was applied (the API's EIPs among it), then the file
    // as it is now, which owns what it lists.
    let mut config = config;
    let limits = Limits {
        eips: config.dataplane.capacity,
        groups: config.dataplane.group_capacity,
        lifecycle: lifecycle_rules(&config),
    };
    let (stored_groups, stored_eips) =
        inventory::record::from_rows(sampler.store().load_inventory()?)
            .map_err(DaemonError::StoredInventory)?;
    let mut inventory = Inventory::new(stored_groups, stored_eips).with_lifecycle(limits.lifecycle);
    let (file_deltas, _) = inventory
        .plan_sync(
            Source::File,
            std::mem::take(&mut config.groups),
            std::mem::take(&mut config.eips),
            now_seconds() as i64,
            limits,
        )
        .map_err(DaemonError::Conflict)?;
    let rec =
        inventory::record::records(&file_deltas, (now_seconds() * 1000.0) as i64, "file", None);
    sampler
        .store_mut()
        .record_inventory(&crate::store::InventoryRecord {
            upserts: &rec.upserts,
            removals: &rec.removals,
            audit: &rec.audit,
        })?;
    inventory.commit(&file_deltas);
    drop(rec);
    let (groups, eips) = inventory.specs();

    let mut dataplane = Dataplane::load(&config.dataplane)?;
    // Provision before attaching, so the first counted packet already finds its EIP.
    let report = dataplane.apply(&policy::desired_of(&groups, &eips, &config.policing))?;
    // Kept maps carry counts up to when the previous daemon's links stopped: if a link did not
    // survive, the traffic since the last committed round may be missing.
    let last_boundary = sampler.last_boundary();
    let unmetered_since = match (dataplane.reused_pins(), last_boundary) {
        (true, Some(boundary)) => boundary as f64,
        _ => f64::INFINITY,
    };
    // Gaps a previous daemon recorded that reach past the last committed round still mark it.
    let earlier_gaps = sampler
        .store()
        .gaps_after(last_boundary.map_or(f64::NEG_INFINITY, |b| b as f64))?;
    let mut tally = Tally::new(
        &config,
        (config.dataplane.capacity, config.dataplane.group_capacity),
        last_boundary,
    );
    tally.set_inventory(&groups, &eips, &config.policing);
    let mut daemon = Daemon {
        uplinks: uplinks::UplinkLog::new(&state_dir, Gaps::from_records(&earlier_gaps)),
        calendar,
        dataplane,
        sampler,
        tally,
        metrics: MetricsHandle::default(),
        shipping: None,
        config,
        inventory,
        limits,
        lifecycle_retry_at: 0.0,
        store_refusing: None,
        clock: clock::ClockWatch::default(),
    };
    let mut shipper = None;
    if let Some(store) = daemon.config.billing_store.clone() {
        let me = HostIdentity {
            host: daemon.config.sampler.host.clone(),
            instance: daemon.sampler.store().instance()?,
            interval_seconds: calendar.interval(),
            timezone: calendar.timezone().to_owned(),
        };
        let wake = Arc::new(Notify::new());
        let status = ship::SharedStatus::default();
        shipper = Some(ship::spawn(
            store,
            daemon.config.sampler.store_path(),
            shipping_file(&state_dir),
            me,
            wake.clone(),
            status.clone(),
        ));
        daemon.tally.shipping(status.clone());
        daemon.shipping = Some((wake, status));
    }
    let events = daemon.dataplane.attach_since(unmetered_since)?;
    daemon.note_uplinks(&events);
    let mut watcher = match LinkWatcher::subscribe() {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, period_seconds = UPLINK_CHECK_PERIOD.as_secs(), "no link notifications; uplinks are checked periodically only");
            None
        }
    };
    daemon.note_inventory(&groups, &eips);
    drop((groups, eips));
    // Transitions due while the daemon was down, effective when they were due.
    daemon.run_lifecycle();
    daemon.publish();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(listener) = listener {
        info!(listen = %daemon.config.metrics.listen, per_eip = daemon.config.metrics.per_eip, "serving /metrics");
        tokio::spawn(server::serve(
            listener,
            daemon.metrics.clone(),
            async move {
                let _ = server_stopped.await;
            },
        ));
    }
    let (admin_tx, mut admin_rx) = mpsc::channel::<inventory::server::AdminRequest>(64);
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(listeners) = api {
        info!(socket = %listeners.socket_path().display(), group = daemon.config.api.group.as_deref(), tcp = daemon.config.api.tcp.as_ref().map(|t| t.listen.to_string()), "serving the admin API");
        tokio::spawn(inventory::server::serve(listeners, admin_tx, async move {
            let _ = api_stopped.await;
        }));
    } else {
        drop(admin_tx);
    }
    let pid_path = pid_file(&state_dir);
    if let Err(e) = std::fs::write(&pid_path, format!("{}\n", std::process::id())) {
        warn!(path = %pid_path.display(), error = %e, "pid file not written; `eip-meter eip`/`group` cannot find this daemon");
    }
    info!(
        eips = daemon.dataplane.slots().len(),
        added = report.added,
        removed = report.removed.len(),
        groups = daemon.inventory.groups().count(),
        share = daemon.config.policing.share,
        capacity = daemon.config.dataplane.capacity,
        interval_seconds = calendar.interval(),
        timezone = calendar.timezone(),
        "ready"
    );
    notify_systemd(sd_notify::NotifyState::Ready);

    tokio::pin!(shutdown);
    let mut recheck = tokio::time::interval(UPLINK_CHECK_PERIOD);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let step = i64::from(calendar.interval());
    loop {
        let now = now_seconds();
        let boundary = calendar.interval_start(now.floor() as i64) + step;
        let wait = Duration::from_secs_f64((boundary as f64 - now).max(0.0));
        let lifecycle_wait = daemon
            .inventory
            .next_due()
            .map(|at| (at as f64).max(daemon.lifecycle_retry_at))
            .map(|at| Duration::from_secs_f64((at - now).max(0.0)));
        tokio::select! {
            () = sleep_for(lifecycle_wait) => daemon.run_lifecycle(),
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => daemon.round_if_due(),
            notice = next_notice(&mut watcher) => match notice {
                Some(notice) => {
                    if daemon.dataplane.concerns_uplink(&notice) {
                        debug!(ifindex = notice.ifindex, name = ?notice.name, "link notice");
                        daemon.check_uplinks();
                    }
                }
                None => {
                    warn!(period_seconds = UPLINK_CHECK_PERIOD.as_secs(), "link notifications stopped; uplinks are checked periodically only");
                    watcher = None;
                }
            },
            _ = recheck.tick() => daemon.check_uplinks(),
            Some(reload) = reloads.recv() => daemon.reload(reload),
            Some(request) = admin_rx.recv() => daemon.admin(request),
        }
    }
    info!("shutting down");
    notify_systemd(sd_notify::NotifyState::Stopping);
    let _ = stop_server.send(());
    let _ = stop_api.send(());
    if daemon.config.api.enabled {
        // The serving task may not get to run again before the runtime stops.
        let _ = std::fs::remove_file(&daemon.config.api.socket);
    }
    if let Some(task) = shipper {
        // A batch under way is rolled back by the billing store; the next start ships it.
        task.abort();
    }
    let _ = std::fs::remove_file(&pid_path);
    let _ = std::fs::remove_file(&daemon.uplinks.status_path);
    if let Err(e) = daemon.sampler.checkpoint_all() {
        error!(error = %e, "final checkpoint not written; the next start replays from the last one");
        let waiting = daemon.sampler.pending_commits();
        if waiting > 0 {
            // With `keep` the kernel's counters stay and the next start's first round covers
            // these intervals; with `detach` they leave with the maps.
            error!(rounds = waiting, on_exit = ?daemon.config.dataplane.on_exit, "rounds the store refused are lost from it at this stop");
        }
    }
    daemon.dataplane.shutdown()?;
    Ok(())
}

/// Creates the state directory as 0700, or makes it so: it holds every sample and the
/// inventory, which no other local user needs to read.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        info!(path = %dir.display(), was = format!("{mode:04o}"), "state directory made private (0700)");
    }
    Ok(())
}

impl Daemon {
    /// Makes the current figures what `/metrics` shows.
    fn publish(&mut self) {
        self.tally.uplinks(self.dataplane.uplink_status());
        self.metrics.publish(self.tally.published());
    }

    /// Checks every uplink, repairs what needs it, and reports any change.
    fn check_uplinks(&mut self) {
        let events = self.dataplane.check_uplinks();
        self.note_uplinks(&events);
    }

    fn note_uplinks(&mut self, events: &[UplinkEvent]) {
        if events.is_empty() {
            return;
        }
        for _ in self.uplinks.note(events, self.sampler.store()) {
            self.tally.store_error();
        }
        self.uplinks.write_status(self.dataplane.uplink_status());
        self.publish();
    }
}

/// Sleeps `wait`, or forever when there is nothing to wait for.
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(w) => tokio::time::sleep(w).await,
        None => std::future::pending().await,
    }
}

/// The next link notice, or never when there is no subscription.
async fn next_notice(watcher: &mut Option<LinkWatcher>) -> Option<LinkNotice> {
    match watcher {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// Tells systemd (`Type=notify`) about a state change; a no-op outside systemd.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        warn!(error = %e, "cannot notify systemd");
    }
}
