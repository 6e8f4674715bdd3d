//! The inventory in the kernel: publishing and withdrawing EIPs in an order that loses no
//! packet, their policies and caps (own and shared), and reading every EIP's counters.

use std::{collections::HashMap as StdHashMap, net::IpAddr};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use metering_common::{
    BucketPairConfig, BucketPairState, DropCounters, EipKey, EipPolicy, MAP_BUCKET_CONFIG,
    MAP_BUCKET_STATE, MAP_EIP_COUNTERS, MAP_EIP_DROPS, MAP_EIP_POLICY, MAP_EIP_SLOTS,
    MAP_NON_EIP_COUNTERS, NO_BUCKET, POLICY_FLAG_ECN, TrafficCounters,
};
use tracing::{debug, info};

use super::{
    ApplyReport, Dataplane, DataplaneError, EipEnforcement,
    batch::read_all_slots,
    key_of, map_err,
    pinned::{read_slot, read_slot_entries},
    writes::PendingWrites,
};
use crate::{
    config::EipState,
    policy::{Caps, DesiredPolicy, EipPlan, PolicyChanges},
};

/// Group name -> bucket pair index (after the slots' own pairs).
#[derive(Debug)]
pub(super) struct GroupBuckets {
    by_name: StdHashMap<String, (u32, BucketPairConfig)>,
    free: std::collections::VecDeque<u32>,
}

impl GroupBuckets {
    pub(super) fn new(base: u32, capacity: u32) -> Self {
        Self {
            by_name: StdHashMap::new(),
            free: (base..base + capacity).collect(),
        }
    }
}

/// An EIP's own bucket (if any) is written before the policy that points at it.
fn stage_policy(
    pending: &mut PendingWrites,
    addr: IpAddr,
    slot: u32,
    (policy, own): (EipPolicy, Option<BucketPairConfig>),
) {
    if let Some(pair) = own {
        pending.buckets.push((slot, pair));
    }
    pending.policies.push((addr, slot, policy, own));
}

impl Dataplane {
    /// Makes the kernel's EIP set equal to `desired`, all metered and uncapped.
    pub fn apply_inventory(&mut self, desired: &[IpAddr]) -> Result<ApplyReport, DataplaneError> {
        self.apply(&DesiredPolicy {
            eips: desired
                .iter()
                .map(|&a| {
                    (
                        a,
                        EipPlan {
                            state: EipState::Active,
                            caps: Caps::None,
                        },
                    )
                })
                .collect(),
            ..DesiredPolicy::default()
        })
    }

    /// Makes the kernel hold `desired`: groups' caps first (so an EIP never points at a bucket
    /// that is not set up), then removals (freeing slots), changed policies, additions, and last
    /// the groups nobody uses any more. An EIP that is in both and did not change is not
    /// touched, so its counting and policing never pause.
    pub fn apply(&mut self, desired: &DesiredPolicy) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        for (name, pair) in &desired.groups {
            self.set_group(name, pair, &mut report)?;
        }

        let addrs: Vec<IpAddr> = desired.eips.iter().map(|(a, _)| *a).collect();
        let plan = self.slots.plan(&addrs);
        for addr in plan.remove {
            let (last, drops) = self.remove_eip(addr)?;
            report.removed.push((addr, last, drops));
        }
        self.set_eips(
            desired.eips.iter().map(|(addr, plan)| (*addr, plan)),
            desired.ecn,
            &mut report,
        )?;

        let wanted: std::collections::HashSet<&str> =
            desired.groups.iter().map(|(n, _)| n.as_str()).collect();
        let stale: Vec<String> = self
            .groups
            .by_name
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in stale {
            self.remove_group(&name, &mut report)?;
        }
        Ok(report)
    }

    /// Applies a few changes without looking at the rest of the inventory (the admin API's
    /// path: its cost does not grow with the number of EIPs). Same order as [`Dataplane::apply`]:
    /// groups set, EIPs removed, EIPs set (added or changed), groups removed. An EIP's own
    /// bucket state is kept across a change, as in a reload.
    pub fn apply_changes(
        &mut self,
        changes: &PolicyChanges,
    ) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        for (name, pair) in &changes.groups {
            if let Some(pair) = pair {
                self.set_group(name, pair, &mut report)?;
            }
        }
        for (addr, plan) in &changes.eips {
            if plan.is_none() && self.slots.slot(addr).is_some() {
                let (last, drops) = self.remove_eip(*addr)?;
                report.removed.push((*addr, last, drops));
            }
        }
        self.set_eips(
            changes
                .eips
                .iter()
                .filter_map(|(addr, plan)| plan.as_ref().map(|plan| (*addr, plan))),
            changes.ecn,
            &mut report,
        )?;
        for (name, pair) in &changes.groups {
            if pair.is_none() {
                self.remove_group(name, &mut report)?;
            }
        }
        Ok(report)
    }

    /// Adds or changes `eips`, staged and then flushed in batches ([`PendingWrites`]). If one
    /// cannot be added (no slot left), those before it are written, as if one at a time.
    fn set_eips<'a>(
        &mut self,
        eips: impl Iterator<Item = (IpAddr, &'a EipPlan)>,
        ecn: bool,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        let mut pending = PendingWrites::default();
        for (addr, plan) in eips {
            let staged = match self.slots.slot(&addr) {
                None => self
                    .stage_add(addr, plan, ecn, &mut pending)
                    .map(|_| report.added += 1),
                Some(slot) => {
                    self.stage_change(addr, slot, plan, ecn, &mut pending);
                    Ok(())
                }
            };
            if let Err(e) = staged {
                self.flush(pending)?;
                return Err(e);
            }
        }
        // Every addition stages one policy and one insert; the other policies are changes.
        report.changed += pending.policies.len() - pending.inserts.len();
        self.flush(pending)
    }

    /// Stages the policy of `addr` (in `slot`) if it differs from what this process last
    /// wrote there. Counted in the report when flushed.
    fn stage_change(
        &self,
        addr: IpAddr,
        slot: u32,
        plan: &EipPlan,
        ecn: bool,
        pending: &mut PendingWrites,
    ) {
        let wanted = self.kernel_policy(slot, plan, ecn);
        if self.written.get(slot) != Some(&wanted) {
            stage_policy(pending, addr, slot, wanted);
        }
    }

    /// Creates or re-caps a group's bucket pair (a new one starts full).
    fn set_group(
        &mut self,
        name: &str,
        pair: &BucketPairConfig,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        match self.groups.by_name.get(name) {
            Some((_, written)) if written == pair => {}
            Some(&(index, _)) => {
                self.write_bucket(index, pair)?;
                self.groups.by_name.insert(name.to_owned(), (index, *pair));
            }
            None => {
                let index = self
                    .groups
                    .free
                    .pop_front()
                    .ok_or(DataplaneError::GroupsFull {
                        capacity: self.config.group_capacity,
                    })?;
                self.reset_bucket_state(index)?;
                self.write_bucket(index, pair)?;
                self.groups.by_name.insert(name.to_owned(), (index, *pair));
                report.groups_added += 1;
            }
        }
        Ok(())
    }

    /// Frees a group's bucket pair (no EIP points at it any more).
    fn remove_group(&mut self, name: &str, report: &mut ApplyReport) -> Result<(), DataplaneError> {
        if let Some((index, _)) = self.groups.by_name.remove(name) {
            self.write_bucket(index, &BucketPairConfig::default())?;
            self.groups.free.push_back(index);
            report.groups_removed += 1;
        }
        Ok(())
    }

    /// The policy entry and own bucket pair that express `plan` for the EIP in `slot`.
    fn kernel_policy(
        &self,
        slot: u32,
        plan: &EipPlan,
        ecn: bool,
    ) -> (EipPolicy, Option<BucketPairConfig>) {
        let (bucket, own) = match &plan.caps {
            Caps::None => (NO_BUCKET, None),
            Caps::Own(pair) => (slot, Some(*pair)),
            Caps::Group(name) => (
                self.groups
                    .by_name
                    .get(name)
                    .map_or(NO_BUCKET, |(index, _)| *index),
                None,
            ),
        };
        let policy = EipPolicy {
            state: plan.state.code(),
            bucket,
            flags: if ecn { POLICY_FLAG_ECN } else { 0 },
            _pad: 0,
        };
        (policy, own)
    }

    fn write_bucket(&mut self, index: u32, pair: &BucketPairConfig) -> Result<(), DataplaneError> {
        self.array_mut::<BucketPairConfig>(MAP_BUCKET_CONFIG)?
            .set(index, *pair, 0)
            .map_err(map_err(MAP_BUCKET_CONFIG, "write caps"))
    }

    /// A full bucket: the programs treat any `tat` in the past as "no backlog".
    fn reset_bucket_state(&mut self, index: u32) -> Result<(), DataplaneError> {
        self.array_mut::<BucketPairState>(MAP_BUCKET_STATE)?
            .set(index, BucketPairState::default(), 0)
            .map_err(map_err(MAP_BUCKET_STATE, "reset bucket"))
    }

    fn array_mut<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<aya::maps::Array<&mut MapData, V>, DataplaneError> {
        let map = self.ebpf.map_mut(name).expect("map is in the object");
        aya::maps::Array::try_from(map).map_err(map_err(name, "open"))
    }

    fn array<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<aya::maps::Array<&MapData, V>, DataplaneError> {
        let map = self.ebpf.map(name).expect("map is in the object");
        aya::maps::Array::try_from(map).map_err(map_err(name, "open"))
    }

    /// Publishes `addr` to the kernel. Its counters, drops, bucket and policy are written
    /// *before* the hash entry exists, so the first packet that finds the entry counts from zero
    /// under the right policy and none is lost.
    pub fn add_eip(
        &mut self,
        addr: IpAddr,
        plan: &EipPlan,
        ecn: bool,
    ) -> Result<u32, DataplaneError> {
        let mut pending = PendingWrites::default();
        let slot = self.stage_add(addr, plan, ecn, &mut pending)?;
        self.flush(pending)?;
        Ok(slot)
    }

    /// Takes a slot for `addr` and stages what publishing it writes (see [`PendingWrites`]).
    fn stage_add(
        &mut self,
        addr: IpAddr,
        plan: &EipPlan,
        ecn: bool,
        pending: &mut PendingWrites,
    ) -> Result<u32, DataplaneError> {
        let assignment = self.slots.assign(addr)?;
        let slot = assignment.slot;
        if assignment.needs_zeroing {
            pending.zero.push(slot);
        }
        let wanted = self.kernel_policy(slot, plan, ecn);
        stage_policy(pending, addr, slot, wanted);
        pending.inserts.push((addr, slot));
        Ok(slot)
    }

    /// Withdraws `addr` from the kernel and returns its final counters and drops. The slot is
    /// freed to the back of the reuse queue, so stragglers that looked it up just before can
    /// still land.
    pub fn remove_eip(
        &mut self,
        addr: IpAddr,
    ) -> Result<(TrafficCounters, DropCounters), DataplaneError> {
        let Some(slot) = self.slots.slot(&addr) else {
            return Ok(Default::default());
        };
        self.slot_map_mut()?
            .remove(&key_of(addr))
            .map_err(map_err(MAP_EIP_SLOTS, "remove EIP"))?;
        self.slots.release(&addr);
        self.written.forget(slot);
        let last = read_slot(&self.counters_map()?, slot)?;
        let drops = self
            .array::<DropCounters>(MAP_EIP_DROPS)?
            .get(&slot, 0)
            .map_err(map_err(MAP_EIP_DROPS, "read slot"))?;
        info!(%addr, slot, inbound_bytes = last.inbound.bytes, outbound_bytes = last.outbound.bytes, "EIP removed");
        Ok((last, drops))
    }

    /// One EIP's slot, policy, caps, drops and counters as the kernel holds them now (`None`:
    /// not provisioned).
    pub fn eip_status(
        &self,
        addr: IpAddr,
    ) -> Result<Option<(u32, EipEnforcement, TrafficCounters)>, DataplaneError> {
        let Some(slot) = self.slots.slot(&addr) else {
            return Ok(None);
        };
        let policy = self
            .array::<EipPolicy>(MAP_EIP_POLICY)?
            .get(&slot, 0)
            .map_err(map_err(MAP_EIP_POLICY, "read slot"))?;
        let caps = if policy.bucket == NO_BUCKET {
            None
        } else {
            Some(
                self.array::<BucketPairConfig>(MAP_BUCKET_CONFIG)?
                    .get(&policy.bucket, 0)
                    .map_err(map_err(MAP_BUCKET_CONFIG, "read bucket"))?,
            )
        };
        let drops = self
            .array::<DropCounters>(MAP_EIP_DROPS)?
            .get(&slot, 0)
            .map_err(map_err(MAP_EIP_DROPS, "read slot"))?;
        let counters = read_slot(&self.counters_map()?, slot)?;
        let enforcement = EipEnforcement {
            state: EipState::from_code(policy.state),
            caps,
            drops,
        };
        Ok(Some((slot, enforcement, counters)))
    }

    /// Current counters of every provisioned EIP, read in batches (one syscall per
    /// [`super::BATCH_SLOTS`] slots) where the kernel supports it.
    pub fn read_counters(&self) -> Result<Vec<(IpAddr, TrafficCounters)>, DataplaneError> {
        let Some(Map::PerCpuArray(data)) = self.ebpf.map(MAP_EIP_COUNTERS) else {
            unreachable!("EIP_COUNTERS is a per-CPU array");
        };
        match read_all_slots::<TrafficCounters>(data, self.config.capacity, self.nr_cpus) {
            Ok(all) => Ok(self
                .slots
                .iter()
                .map(|(addr, slot)| (addr, all[slot as usize]))
                .collect()),
            Err(e) => {
                debug!(error = %e, "batch lookup unavailable; reading slot by slot");
                let counters = self.counters_map()?;
                self.slots
                    .iter()
                    .map(|(addr, slot)| Ok((addr, read_slot(&counters, slot)?)))
                    .collect()
            }
        }
    }

    /// Every provisioned EIP's drop and ECN-mark counters, in the order of
    /// [`Dataplane::read_counters`] (slot order).
    pub fn read_drops(&self) -> Result<Vec<DropCounters>, DataplaneError> {
        let Some(Map::Array(data)) = self.ebpf.map(MAP_EIP_DROPS) else {
            unreachable!("EIP_DROPS is an array");
        };
        match read_all_slots::<DropCounters>(data, self.config.capacity, 1) {
            Ok(all) => Ok(self
                .slots
                .iter()
                .map(|(_, slot)| all[slot as usize])
                .collect()),
            Err(e) => {
                debug!(error = %e, "batch lookup unavailable; reading slot by slot");
                let drops = self.array::<DropCounters>(MAP_EIP_DROPS)?;
                self.slots
                    .iter()
                    .map(|(_, slot)| {
                        drops
                            .get(&slot, 0)
                            .map_err(map_err(MAP_EIP_DROPS, "read slot"))
                    })
                    .collect()
            }
        }
    }

    /// Traffic to and from addresses that are no EIP.
    pub fn read_non_eip(&self) -> Result<TrafficCounters, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_NON_EIP_COUNTERS)
            .expect("map is in the object");
        let map = PerCpuArray::try_from(map).map_err(map_err(MAP_NON_EIP_COUNTERS, "open"))?;
        read_slot(&map, 0)
    }

    /// Shared-bandwidth buckets in use and their capacity.
    pub fn group_slots(&self) -> (usize, u32) {
        (self.groups.by_name.len(), self.config.group_capacity)
    }

    pub(super) fn read_slot_map(&self) -> Result<Vec<(IpAddr, u32)>, DataplaneError> {
        let map = self.ebpf.map(MAP_EIP_SLOTS).expect("map is in the object");
        let map =
            HashMap::<_, EipKey, u32>::try_from(map).map_err(map_err(MAP_EIP_SLOTS, "open"))?;
        read_slot_entries(&map)
    }

    fn slot_map_mut(&mut self) -> Result<HashMap<&mut MapData, EipKey, u32>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_EIP_SLOTS)
            .expect("map is in the object");
        HashMap::try_from(map).map_err(map_err(MAP_EIP_SLOTS, "open"))
    }

    fn counters_map(&self) -> Result<PerCpuArray<&MapData, TrafficCounters>, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_EIP_COUNTERS)
            .expect("map is in the object");
        PerCpuArray::try_from(map).map_err(map_err(MAP_EIP_COUNTERS, "open"))
    }
}
