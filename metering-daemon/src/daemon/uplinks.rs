//! The daemon's side of uplink changes: logs them (WARN when an uplink stops being metered,
//! INFO when it is back with how long it was not, ERROR when attaching fails), keeps their
//! gaps for marking samples, records them in the store, and publishes the uplinks' state for
//! `eip-meter counters`.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use tracing::{debug, error, info, warn};

use super::{now_seconds, rfc3339};
use crate::{
    dataplane::{UplinkEvent, UplinkStatus},
    sampling::Gaps,
    store::{Store, StoreError},
};

/// Where the daemon publishes its uplinks' attachment state for `eip-meter counters`.
pub fn uplinks_file(state_dir: &Path) -> PathBuf {
    state_dir.join("uplinks.json")
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

pub(super) struct UplinkLog {
    pub(super) gaps: Gaps,
    pub(super) status_path: PathBuf,
    /// Uplinks whose attach failure was logged at ERROR (repeats go to DEBUG).
    failing: HashSet<String>,
}

impl UplinkLog {
    pub(super) fn new(state_dir: &Path, gaps: Gaps) -> Self {
        Self {
            gaps,
            status_path: uplinks_file(state_dir),
            failing: HashSet::new(),
        }
    }

    /// Logs `events`, keeps their gaps, and records them in the store, so a restart still marks
    /// the intervals they touched. Returns the store errors (the caller counts them).
    pub(super) fn note(&mut self, events: &[UplinkEvent], store: &Store) -> Vec<StoreError> {
        let mut errors = Vec::new();
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
                        errors.push(e);
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
                                errors.push(e);
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
        errors
    }

    /// Replaces the status file atomically (a reader sees the old one or the new one).
    pub(super) fn write_status(&self, status: Vec<UplinkStatus>) {
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
