//! Applying a new config: the EIP inventory, states, bandwidths, groups and `[policing]`
//! change at once, without reattaching anything or resetting a counter.

use std::{net::IpAddr, time::Instant};

use tracing::{error, info, warn};

use super::{Daemon, Reload, now_seconds};
use crate::{config::Config, exposition::tally::ReloadResult, policy, store::InventoryEntry};

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
        {
            warn!(
                "changes to [dataplane], [sampler] and [metrics] take effect only after a restart; applying the EIP inventory"
            );
            // What runs keeps running with the sections it started with.
            new.dataplane = self.config.dataplane.clone();
            new.sampler = self.config.sampler.clone();
            new.metrics = self.config.metrics.clone();
        }
        let started = Instant::now();
        match self.dataplane.apply(&policy::desired(&new)) {
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
                    self.tally.eip_removed(last, drops);
                    if let Err(e) = self.sampler.eip_removed(*eip, at, last) {
                        error!(%eip, error = %e, "final samples of a removed EIP not committed");
                        self.tally.store_error();
                    }
                }
                let removed: Vec<IpAddr> = r.removed.iter().map(|(e, ..)| *e).collect();
                self.note_inventory(&new, &removed);
                self.tally.reload(ReloadResult::Applied);
                info!(
                    added = r.added,
                    removed = r.removed.len(),
                    changed = r.changed,
                    groups_added = r.groups_added,
                    groups_removed = r.groups_removed,
                    eips = self.dataplane.slots().len(),
                    apply_ms = started.elapsed().as_millis() as u64,
                    "config applied"
                );
            }
            // The slot table and the kernel still agree (every step is undone on error), so
            // the daemon keeps running with what was applied.
            Err(e) => {
                error!(error = %e, "inventory reload failed part-way");
                self.tally.reload(ReloadResult::Failed);
            }
        }
        self.tally.inventory(&new);
        self.config = new;
        self.publish();
    }

    /// Tells the sampler when EIPs started counting, what bandwidth each has, and which
    /// shared bandwidth each belongs to.
    pub(super) fn note_inventory(&mut self, config: &Config, removed: &[IpAddr]) {
        let at = now_seconds() as i64;
        let removed: std::collections::HashSet<&IpAddr> = removed.iter().collect();
        for eip in &config.eips {
            if removed.contains(&eip.address) {
                continue;
            }
            self.sampler.eip_added(eip.address, at);
            if let Some(bw) = eip.bandwidth_mbps {
                self.sampler.bandwidth_set(eip.address, at, bw);
            }
        }
        let groups: Vec<(String, Option<u64>)> = config
            .groups
            .iter()
            .map(|g| (g.name.clone(), Some(g.bandwidth_mbps)))
            .collect();
        let members: Vec<(IpAddr, String)> = config
            .eips
            .iter()
            .filter_map(|e| Some((e.address, e.group.clone()?)))
            .collect();
        self.sampler.configure_groups(&groups, &members, at);
        // The history the billing store bills baselines and in-use time from.
        let entries: Vec<InventoryEntry> = config
            .eips
            .iter()
            .map(|e| InventoryEntry {
                kind: "eip",
                subject: e.address.to_string(),
                bandwidth_mbps: e.bandwidth_mbps,
                group: e.group.clone(),
                state: e.state.as_str().to_owned(),
            })
            .chain(config.groups.iter().map(|g| InventoryEntry {
                kind: "group",
                subject: g.name.clone(),
                bandwidth_mbps: Some(g.bandwidth_mbps),
                group: None,
                state: "active".to_owned(),
            }))
            .collect();
        match self.sampler.store_mut().record_inventory(&entries, at) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(changes = n, "inventory history recorded"),
            Err(e) => {
                error!(error = %e, "inventory history not recorded; the billing store's baselines may miss this change");
                self.tally.store_error();
            }
        }
    }
}
