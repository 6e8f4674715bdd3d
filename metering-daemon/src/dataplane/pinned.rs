//! A read-only view of a data plane's pins from another process (`eip-meter counters`, the
//! live-edit confirmation), without loading anything.

use std::{collections::HashMap as StdHashMap, net::IpAddr, path::Path};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use metering_common::{
    BucketPairConfig, DropCounters, EipKey, EipPolicy, MAP_BUCKET_CONFIG, MAP_EIP_COUNTERS,
    MAP_EIP_DROPS, MAP_EIP_POLICY, MAP_EIP_SLOTS, MAP_NON_EIP_COUNTERS, NO_BUCKET, TrafficCounters,
};

use super::{DataplaneError, EipEnforcement, addr_of, key_of, map_err};
use crate::config::EipState;

/// Read-only view of a running (or kept) data plane's pinned maps, for `eip-meter counters`.
pub struct PinnedMaps {
    slots: HashMap<MapData, EipKey, u32>,
    counters: PerCpuArray<MapData, TrafficCounters>,
    non_eip: PerCpuArray<MapData, TrafficCounters>,
    policy: aya::maps::Array<MapData, EipPolicy>,
    drops: aya::maps::Array<MapData, DropCounters>,
    buckets: aya::maps::Array<MapData, BucketPairConfig>,
}

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, DataplaneError> {
        let open = |name: &'static str| {
            MapData::from_pin(pin_dir.join(name)).map_err(map_err(name, "open pin"))
        };
        Ok(Self {
            slots: HashMap::try_from(Map::HashMap(open(MAP_EIP_SLOTS)?))
                .map_err(map_err(MAP_EIP_SLOTS, "open"))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open(MAP_EIP_COUNTERS)?))
                .map_err(map_err(MAP_EIP_COUNTERS, "open"))?,
            non_eip: PerCpuArray::try_from(Map::PerCpuArray(open(MAP_NON_EIP_COUNTERS)?))
                .map_err(map_err(MAP_NON_EIP_COUNTERS, "open"))?,
            policy: aya::maps::Array::try_from(Map::Array(open(MAP_EIP_POLICY)?))
                .map_err(map_err(MAP_EIP_POLICY, "open"))?,
            drops: aya::maps::Array::try_from(Map::Array(open(MAP_EIP_DROPS)?))
                .map_err(map_err(MAP_EIP_DROPS, "open"))?,
            buckets: aya::maps::Array::try_from(Map::Array(open(MAP_BUCKET_CONFIG)?))
                .map_err(map_err(MAP_BUCKET_CONFIG, "open"))?,
        })
    }

    /// Every EIP's policy as enforced and its drop counters, sorted by address.
    pub fn read_enforcement(&self) -> Result<Vec<(IpAddr, EipEnforcement)>, DataplaneError> {
        let mut rows = read_slot_entries(&self.slots)?
            .into_iter()
            .map(|(addr, slot)| Ok((addr, self.enforcement_at(slot)?)))
            .collect::<Result<Vec<_>, DataplaneError>>()?;
        rows.sort_by_key(|(addr, _)| *addr);
        Ok(rows)
    }

    /// One EIP's enforcement, by key lookup (`None`: not provisioned).
    pub fn enforcement_of(&self, addr: IpAddr) -> Result<Option<EipEnforcement>, DataplaneError> {
        match self.slots.get(&key_of(addr), 0) {
            Ok(slot) => self.enforcement_at(slot).map(Some),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_EIP_SLOTS, "look up EIP")(e)),
        }
    }

    fn enforcement_at(&self, slot: u32) -> Result<EipEnforcement, DataplaneError> {
        let policy = self
            .policy
            .get(&slot, 0)
            .map_err(map_err(MAP_EIP_POLICY, "read slot"))?;
        let caps = if policy.bucket == NO_BUCKET {
            None
        } else {
            Some(
                self.buckets
                    .get(&policy.bucket, 0)
                    .map_err(map_err(MAP_BUCKET_CONFIG, "read bucket"))?,
            )
        };
        let drops = self
            .drops
            .get(&slot, 0)
            .map_err(map_err(MAP_EIP_DROPS, "read slot"))?;
        Ok(EipEnforcement {
            state: EipState::from_code(policy.state),
            caps,
            drops,
        })
    }

    /// Every EIP's counters, sorted by address.
    pub fn read_counters(&self) -> Result<Vec<(IpAddr, TrafficCounters)>, DataplaneError> {
        let mut rows = read_slot_entries(&self.slots)?
            .into_iter()
            .map(|(addr, slot)| Ok((addr, read_slot(&self.counters, slot)?)))
            .collect::<Result<Vec<_>, DataplaneError>>()?;
        rows.sort_by_key(|(addr, _)| *addr);
        Ok(rows)
    }

    pub fn read_non_eip(&self) -> Result<TrafficCounters, DataplaneError> {
        read_slot(&self.non_eip, 0)
    }
}

pub(super) fn read_slot_entries<T: std::borrow::Borrow<MapData>>(
    map: &HashMap<T, EipKey, u32>,
) -> Result<Vec<(IpAddr, u32)>, DataplaneError> {
    let mut out = Vec::new();
    let mut seen = StdHashMap::new();
    for entry in map.iter() {
        let (key, slot) = entry.map_err(map_err(MAP_EIP_SLOTS, "iterate"))?;
        // A concurrent delete can make the kernel's iteration restart; keep the first sighting.
        if seen.insert(key, slot).is_none() {
            out.push((addr_of(&key), slot));
        }
    }
    Ok(out)
}

/// Sums one slot's per-CPU copies.
pub(super) fn read_slot<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, TrafficCounters>,
    slot: u32,
) -> Result<TrafficCounters, DataplaneError> {
    let values = map
        .get(&slot, 0)
        .map_err(map_err(MAP_EIP_COUNTERS, "read slot"))?;
    Ok(values
        .iter()
        .fold(TrafficCounters::default(), |sum, cpu| sum.plus(*cpu)))
}
