//! Applying inventory changes (the admin API's batches and syncs, a reloaded file) and
//! answering the API's reads. A change costs what it touches, not the inventory's size: the
//! store records it (one transaction), the kernel gets only the EIPs and groups it names, the
//! sampler and `/metrics` are updated in place.

use std::{
    collections::HashSet,
    net::IpAddr,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use hyper::StatusCode;
use metering_common::BucketPairConfig;
use serde_json::json;
use tracing::{error, info, warn};

use super::{Daemon, now_seconds};
use crate::{
    dataplane::ApplyReport,
    inventory::{
        Delta, Source, Summary,
        model::ItemError,
        protocol::{self, EipView, GroupView},
        record,
        server::{AdminRequest, ApiError, Command, Reply},
    },
    policy::{self, PolicyChanges},
    store::InventoryRecord,
};

/// Why a planned change was not applied (nothing of it was).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the change could not be recorded in the local store, so it was not applied: {0}")]
    Store(crate::store::StoreError),
    #[error("the kernel refused the change (it was undone): {0}")]
    Kernel(crate::dataplane::DataplaneError),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The subject's state before a delta as a delta of its own (to undo it).
fn inverse(d: &Delta) -> Delta {
    match d.clone() {
        Delta::Eip {
            address,
            before,
            after,
            effective_at,
        } => Delta::Eip {
            address,
            before: after,
            after: before,
            effective_at,
        },
        Delta::Group {
            name,
            before,
            after,
            effective_at,
        } => Delta::Group {
            name,
            before: after,
            after: before,
            effective_at,
        },
    }
}

impl Daemon {
    /// Applies planned deltas: recorded in the store first (so nothing the kernel enforces is
    /// lost at a restart), then the kernel, the sampler and the figures. On error nothing is
    /// applied: a kernel failure is undone in the kernel and recorded as a rollback.
    pub(super) fn apply_deltas(
        &mut self,
        deltas: &[Delta],
        source: &str,
        uid: Option<u32>,
    ) -> Result<ApplyReport, ApplyError> {
        if deltas.is_empty() {
            return Ok(ApplyReport::default());
        }
        let at_ms = now_ms();
        let rec = record::records(deltas, at_ms, source, uid);
        let store_record = InventoryRecord {
            upserts: &rec.upserts,
            removals: &rec.removals,
            audit: &rec.audit,
        };
        if let Err(e) = self.sampler.store_mut().record_inventory(&store_record) {
            self.tally.store_error();
            return Err(ApplyError::Store(e));
        }
        let policing = self.config.policing.clone();
        let mut changes = PolicyChanges {
            ecn: policing.ecn,
            ..PolicyChanges::default()
        };
        for d in deltas {
            match d {
                Delta::Eip { address, after, .. } => changes.eips.push((
                    *address,
                    after.as_ref().map(|a| policy::eip_plan(&a.spec, &policing)),
                )),
                Delta::Group { name, after, .. } => changes.groups.push((
                    name.clone(),
                    after
                        .as_ref()
                        .map(|a| policy::group_caps(&a.spec, &policing)),
                )),
            }
        }
        let report = match self.dataplane.apply_changes(&changes) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "kernel refused an inventory change; restoring the previous policy");
                let (groups, eips) = self.inventory.specs();
                if let Err(e) = self
                    .dataplane
                    .apply(&policy::desired_of(&groups, &eips, &policing))
                {
                    error!(error = %e, "previous policy not restored; the next reload or restart retries");
                }
                let undo: Vec<Delta> = deltas.iter().rev().map(inverse).collect();
                let rec = record::records(&undo, now_ms(), "rollback", uid);
                if let Err(e) = self.sampler.store_mut().record_inventory(&InventoryRecord {
                    upserts: &rec.upserts,
                    removals: &rec.removals,
                    audit: &rec.audit,
                }) {
                    error!(error = %e, "rollback not recorded in the local store");
                    self.tally.store_error();
                }
                return Err(ApplyError::Kernel(e));
            }
        };
        self.note_deltas(deltas, &report);
        self.inventory.commit(deltas);
        self.tally.inventory_changed(deltas, &policing);
        Ok(report)
    }

    /// Tells the sampler what changed: EIPs that stopped (their last samples are committed),
    /// started, changed bandwidth or group, and groups created, re-sized or removed.
    fn note_deltas(&mut self, deltas: &[Delta], report: &ApplyReport) {
        let now = now_seconds() as i64;
        if !report.removed.is_empty() {
            let mut finals = Vec::with_capacity(report.removed.len());
            for (eip, last, drops) in &report.removed {
                info!(
                    %eip,
                    inbound_rate_limited_bytes = drops.inbound.rate_limited_bytes,
                    outbound_rate_limited_bytes = drops.outbound.rate_limited_bytes,
                    inbound_blocked_bytes = drops.inbound.blocked_bytes,
                    outbound_blocked_bytes = drops.outbound.blocked_bytes,
                    "final drop counters of a removed EIP"
                );
                self.tally.eip_removed(last, drops);
                finals.push((*eip, *last));
            }
            if let Err(e) = self.sampler.eips_removed(&finals, now) {
                error!(eips = finals.len(), error = %e, "final samples of removed EIPs not committed");
                self.tally.store_error();
            }
        }
        let mut moves: Vec<(IpAddr, Option<String>)> = Vec::new();
        let mut removed_groups = Vec::new();
        let mut moves_at = now;
        for d in deltas {
            match d {
                Delta::Eip {
                    address,
                    before,
                    after,
                    effective_at,
                } => {
                    let Some(a) = after else {
                        if before
                            .as_ref()
                            .and_then(|b| b.spec.group.as_ref())
                            .is_some()
                        {
                            moves.push((*address, None));
                        }
                        continue;
                    };
                    if before.is_none() {
                        self.sampler.eip_added(*address, now);
                    }
                    let old = before.as_ref().map(|b| &b.spec);
                    if let Some(bw) = a.spec.bandwidth_mbps
                        && old.and_then(|o| o.bandwidth_mbps) != Some(bw)
                    {
                        self.sampler.bandwidth_set(*address, *effective_at, bw);
                    }
                    if old.and_then(|o| o.group.as_ref()) != a.spec.group.as_ref() {
                        moves.push((*address, a.spec.group.clone()));
                        moves_at = *effective_at;
                    }
                }
                Delta::Group {
                    name,
                    before,
                    after,
                    effective_at,
                } => match after {
                    Some(a) => {
                        let bw = (before.as_ref().map(|b| b.spec.bandwidth_mbps)
                            != Some(a.spec.bandwidth_mbps))
                        .then_some(a.spec.bandwidth_mbps);
                        self.sampler
                            .update_groups(&[(name.clone(), bw)], &[], &[], *effective_at);
                    }
                    None => removed_groups.push(name.clone()),
                },
            }
        }
        if !moves.is_empty() || !removed_groups.is_empty() {
            self.sampler
                .update_groups(&[], &removed_groups, &moves, moves_at);
        }
    }

    /// Answers one admin API request.
    pub(super) fn admin(&mut self, request: AdminRequest) {
        let reply = self.answer(request.command);
        let _ = request.reply.send(reply);
    }

    fn answer(&mut self, command: Command) -> Reply {
        match command {
            Command::Status => Ok(json!({
                "api": protocol::API_VERSION,
                "version": env!("CARGO_PKG_VERSION"),
                "host": self.config.sampler.host,
                "eips": self.inventory.eip_count(),
                "groups": self.inventory.groups().count(),
                "capacity": self.limits.eips,
                "group_capacity": self.limits.groups,
            })),
            Command::GetEip(addr) => self.eip_status(crate::addr::normalize(addr)),
            Command::ListEips { after, limit } => {
                let page = self.inventory.page(after, limit);
                let next = (page.len() == limit)
                    .then(|| page.last().map(|e| e.spec.address.to_string()))
                    .flatten();
                let eips: Vec<EipView> = page.into_iter().map(EipView::of).collect();
                Ok(json!({ "eips": eips, "next": next }))
            }
            Command::ListGroups => {
                let groups: Vec<GroupView> = self
                    .inventory
                    .groups()
                    .map(|g| GroupView::of(g, self.inventory.members(&g.spec.name)))
                    .collect();
                Ok(json!({ "groups": groups }))
            }
            Command::Apply {
                ops,
                caller,
                single,
            } => {
                let started = Instant::now();
                self.warn_forced_removals(&ops, caller.uid);
                let deltas = self
                    .inventory
                    .plan(&ops, Source::Api, now_seconds() as i64, self.limits)
                    .map_err(|e| refused(&e, ops.len(), single))?;
                let summary = Summary::of(&deltas, ops.len() - deltas.len());
                self.apply_and_answer(&deltas, "api", caller.uid, summary, started)
            }
            Command::Sync {
                groups,
                eips,
                at,
                caller,
                received_ms,
            } => {
                let started = Instant::now();
                let total = groups.len() + eips.len();
                let at = at.unwrap_or(now_seconds() as i64);
                let (deltas, unchanged) = self
                    .inventory
                    .plan_sync(Source::Api, groups, eips, at, self.limits)
                    .map_err(|e| refused(&e, total, false))?;
                let summary = Summary::of(&deltas, unchanged);
                let mut reply =
                    self.apply_and_answer(&deltas, "sync", caller.uid, summary, started)?;
                reply["received_ms"] = json!(received_ms);
                Ok(reply)
            }
        }
    }

    /// An operator's override is loud: a monthly package removed before its expiry.
    fn warn_forced_removals(&self, ops: &[(crate::inventory::Op, Option<i64>)], uid: Option<u32>) {
        let now = now_seconds() as i64;
        for (op, _) in ops {
            if let crate::inventory::Op::RemoveEip(address, true) = op
                && let Some(held) = self.inventory.eip(address)
                && let Some(crate::billing::plans::Plan::Monthly { start, months }) = held.spec.plan
                && let Some(expiry) = self.limits.lifecycle.expiry(start, months)
                && expiry > now
            {
                warn!(eip = %address, expiry, uid, "operator override: a monthly package removed before its expiry");
            }
        }
    }

    fn apply_and_answer(
        &mut self,
        deltas: &[Delta],
        source: &str,
        uid: Option<u32>,
        summary: Summary,
        started: Instant,
    ) -> Reply {
        self.apply_deltas(deltas, source, uid).map_err(|e| {
            error!(error = %e, source, "inventory change not applied");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        let apply_ms = started.elapsed().as_secs_f64() * 1000.0;
        if !deltas.is_empty() {
            info!(
                source,
                uid,
                added = summary.added,
                changed = summary.changed,
                removed = summary.removed,
                unchanged = summary.unchanged,
                eips = self.inventory.eip_count(),
                apply_ms,
                "inventory changed"
            );
            self.publish();
        }
        Ok(json!({
            "added": summary.added,
            "changed": summary.changed,
            "removed": summary.removed,
            "unchanged": summary.unchanged,
            "apply_ms": apply_ms,
        }))
    }

    fn eip_status(&self, addr: IpAddr) -> Reply {
        let held = self.inventory.eip(&addr).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_eip",
                format!("EIP {addr} is not in the inventory"),
            )
        })?;
        let mut body = serde_json::to_value(EipView::of(held)).unwrap_or_default();
        let kernel = match self.dataplane.eip_status(addr) {
            Ok(Some((slot, enforcement, counters))) => {
                let caps = |c: Option<BucketPairConfig>| {
                    c.map(|p| {
                        json!({
                            "inbound_bps": p.inbound.rate_bps,
                            "outbound_bps": p.outbound.rate_bps,
                            "burst_ns": p.inbound.burst_ns,
                        })
                    })
                };
                let d = enforcement.drops;
                json!({
                    "slot": slot,
                    "state": enforcement.state.map(|s| s.as_str()),
                    "caps": caps(enforcement.caps),
                    "inbound_bytes": counters.inbound.bytes,
                    "inbound_packets": counters.inbound.packets,
                    "outbound_bytes": counters.outbound.bytes,
                    "outbound_packets": counters.outbound.packets,
                    "inbound_rate_limited_bytes": d.inbound.rate_limited_bytes,
                    "outbound_rate_limited_bytes": d.outbound.rate_limited_bytes,
                    "inbound_blocked_bytes": d.inbound.blocked_bytes,
                    "outbound_blocked_bytes": d.outbound.blocked_bytes,
                })
            }
            Ok(None) => serde_json::Value::Null,
            Err(e) => {
                warn!(%addr, error = %e, "api: kernel state not read");
                json!({ "error": e.to_string() })
            }
        };
        body["kernel"] = kernel;
        Ok(body)
    }
}

fn refused(errors: &[ItemError], total: usize, single: bool) -> ApiError {
    let e = ApiError::items(errors, total, single);
    let subjects: HashSet<&str> = errors.iter().map(|e| e.subject.as_str()).collect();
    warn!(
        refused = errors.len(),
        subjects = subjects.len(),
        first = errors.first().map(|e| e.message.as_str()),
        "api: change refused; nothing applied"
    );
    e
}
