//! The daemon's main loop: load, provision, attach, then apply inventory changes until told to
//! stop. Signal handling lives at the edge (`cli`); this takes plain futures and channels so tests
//! can drive it in-process.

use std::{future::Future, net::IpAddr};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::{
    config::Config,
    dataplane::{Dataplane, DataplaneError},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

fn inventory(config: &Config) -> Vec<IpAddr> {
    config.eips.iter().map(|e| e.address).collect()
}

/// Runs the daemon until `shutdown` resolves. Each config received on `reloads` replaces the EIP
/// inventory (the `[dataplane]` section is fixed for the life of the process).
pub async fn run(
    config: Config,
    mut reloads: mpsc::Receiver<Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let mut dataplane = Dataplane::load(&config.dataplane)?;
    // Provision before attaching, so the first counted packet already finds its EIP.
    let report = dataplane.apply_inventory(&inventory(&config))?;
    dataplane.attach()?;
    info!(
        eips = dataplane.slots().len(),
        added = report.added,
        removed = report.removed.len(),
        capacity = config.dataplane.capacity,
        "ready"
    );
    notify_systemd("READY=1");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(new) = reloads.recv() => {
                if new.dataplane != config.dataplane {
                    warn!("changes to [dataplane] take effect only after a restart; applying the EIP inventory");
                }
                match dataplane.apply_inventory(&inventory(&new)) {
                    Ok(r) => info!(added = r.added, removed = r.removed.len(), eips = dataplane.slots().len(), "inventory reloaded"),
                    // The slot table and the kernel still agree (every step is undone on error),
                    // so the daemon keeps running with what was applied.
                    Err(e) => error!(error = %e, "inventory reload failed part-way"),
                }
            }
        }
    }
    info!("shutting down");
    notify_systemd("STOPPING=1");
    dataplane.shutdown()?;
    Ok(())
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
