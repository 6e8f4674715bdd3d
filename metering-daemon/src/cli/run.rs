//! `eip-meter run` (signals at the edge, the daemon in between) and `eip-meter validate`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info};

use super::load_config;
use crate::config::{AnyInterface, Config, CurrentNetns};

pub(super) fn run(config: &Path) -> anyhow::Result<ExitCode> {
    // An uplink that does not exist yet is attached when it appears (`validate` still reports
    // it); every other problem stops the start.
    let initial = load_config(config, &AnyInterface)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_with_signals(config.to_owned(), initial))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn validate(config: &Path) -> ExitCode {
    match load_config(config, &CurrentNetns) {
        Ok(c) => {
            println!(
                "{}: OK ({} EIPs, {} shared bandwidths, interfaces {}, capacity {}, pins in {}, metrics {})",
                config.display(),
                c.eips.len(),
                c.groups.len(),
                c.dataplane.interfaces.join(", "),
                c.dataplane.capacity,
                c.dataplane.pin_dir().display(),
                if c.metrics.enabled {
                    format!("on http://{}/metrics", c.metrics.listen)
                } else {
                    "off".to_owned()
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
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
