//! The daemon's main loop: load, provision, attach, then sample at every interval boundary and
//! apply inventory changes until told to stop. Signal handling lives at the edge (`cli`); this
//! takes plain futures and channels so tests can drive it in-process. The wall clock is read
//! here, never in the billing code.

use std::{
    future::Future,
    net::IpAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::{
    billing::series::SeriesOptions,
    config::Config,
    dataplane::{Dataplane, DataplaneError},
    policy,
    sampler::Sampler,
    store::{Store, StoreError},
};

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
    dataplane.attach()?;
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
    let mut current = config;
    loop {
        let now = now_seconds();
        let boundary = calendar.interval_start(now.floor() as i64) + i64::from(calendar.interval());
        let wait = Duration::from_secs_f64((boundary as f64 - now).max(0.0));
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {
                let started = Instant::now();
                let readings = match dataplane.read_counters() {
                    Ok(r) => r,
                    Err(e) => {
                        // The kernel kept the counts: the next round's delta covers this one.
                        error!(boundary, error = %e, "cannot read counters; sampling at the next boundary");
                        continue;
                    }
                };
                match sampler.round(boundary, &readings) {
                    Ok(r) => info!(
                        boundary,
                        eips = readings.len(),
                        samples = r.samples,
                        closed_days = r.closed_days,
                        closed_months = r.closed_months,
                        compute_ms = (r.compute_seconds * 1e3) as u64,
                        commit_ms = (r.commit_seconds * 1e3) as u64,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "sampled"
                    ),
                    // Nothing of the round was committed; the next round covers it.
                    Err(e) => error!(boundary, error = %e, "sampling round not committed"),
                }
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
