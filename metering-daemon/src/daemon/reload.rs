//! Applying a new config file: what the file owns (its EIPs and groups, with their states and
//! bandwidths) becomes what the file says, as one planned change, and `[policing]` changes at
//! once, without reattaching anything or resetting a counter. What the API owns is untouched
//! (unless the file now lists it: then the file takes it over).

use std::{net::IpAddr, time::Instant};

use tracing::{error, info, warn};

use super::{Daemon, Reload, now_seconds};
use crate::{
    config::{EipConfig, GroupConfig},
    exposition::tally::ReloadResult,
    inventory::{Source, Summary},
    policy,
};

impl Daemon {
    pub(super) fn reload(&mut self, reload: Reload) {
        let mut new = match reload {
            Reload::Apply(config) => *config,
            Reload::Rejected => {
                self.tally.reload(ReloadResult::Rejected);
                self.publish();
                return;
            }
        };
        if new.dataplane != self.config.dataplane
            || new.sampler != self.config.sampler
            || new.metrics != self.config.metrics
            || new.api != self.config.api
        {
            warn!(
                "changes to [dataplane], [sampler], [metrics] and [api] take effect only after a restart; applying the EIP inventory"
            );
            // What runs keeps running with the sections it started with.
            new.dataplane = self.config.dataplane.clone();
            new.sampler = self.config.sampler.clone();
            new.metrics = self.config.metrics.clone();
            new.api = self.config.api.clone();
        }
        let started = Instant::now();
        let groups = std::mem::take(&mut new.groups);
        let eips = std::mem::take(&mut new.eips);
        let at = now_seconds() as i64;
        let (deltas, unchanged) = match self.inventory.plan_sync(
            Source::File,
            groups,
            eips,
            at,
            self.limits,
        ) {
            Ok(planned) => planned,
            Err(errors) => {
                for e in errors.iter().take(20) {
                    error!(subject = e.subject, code = e.code, "{}", e.message);
                }
                error!(
                    problems = errors.len(),
                    "config not applied: it conflicts with the inventory the API holds; nothing changed"
                );
                self.tally.reload(ReloadResult::Rejected);
                self.publish();
                return;
            }
        };
        let policing_changed = new.policing != self.config.policing;
        let lifecycle_changed = new.lifecycle != self.config.lifecycle;
        self.config = new;
        if lifecycle_changed {
            self.limits.lifecycle = super::lifecycle_rules(&self.config);
            self.inventory.set_lifecycle(self.limits.lifecycle);
        }
        match self.apply_deltas(&deltas, "file", None) {
            Ok(report) => {
                if policing_changed {
                    self.apply_whole_policy();
                }
                let s = Summary::of(&deltas, unchanged);
                self.tally.reload(ReloadResult::Applied);
                info!(
                    added = s.added,
                    removed = s.removed,
                    changed = s.changed,
                    kernel_changed = report.changed,
                    groups_added = report.groups_added,
                    groups_removed = report.groups_removed,
                    eips = self.dataplane.slots().len(),
                    apply_ms = started.elapsed().as_millis() as u64,
                    "config applied"
                );
            }
            Err(e) => {
                error!(error = %e, "config not applied");
                self.tally.reload(ReloadResult::Failed);
            }
        }
        self.publish();
    }

    /// Writes every EIP's and group's caps again (after `[policing]` changed) and refreshes
    /// the figures that depend on them.
    pub(super) fn apply_whole_policy(&mut self) {
        let (groups, eips) = self.inventory.specs();
        let desired = policy::desired_of(&groups, &eips, &self.config.policing);
        if let Err(e) = self.dataplane.apply(&desired) {
            error!(error = %e, "new [policing] not applied to every EIP");
            self.tally.reload(ReloadResult::Failed);
        }
        self.tally
            .set_inventory(&groups, &eips, &self.config.policing);
    }

    /// Tells the sampler, at start, when EIPs started counting, what bandwidth each has, and
    /// which shared bandwidth each belongs to.
    pub(super) fn note_inventory(&mut self, groups: &[GroupConfig], eips: &[EipConfig]) {
        let at = now_seconds() as i64;
        for eip in eips {
            self.sampler.eip_added(eip.address, at);
            if let Some(bw) = eip.bandwidth_mbps {
                self.sampler.bandwidth_set(eip.address, at, bw);
            }
        }
        let groups: Vec<(String, Option<u64>)> = groups
            .iter()
            .map(|g| (g.name.clone(), Some(g.bandwidth_mbps)))
            .collect();
        let members: Vec<(IpAddr, String)> = eips
            .iter()
            .filter_map(|e| Some((e.address, e.group.clone()?)))
            .collect();
        self.sampler.configure_groups(&groups, &members, at);
    }
}
