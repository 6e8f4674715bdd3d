//! Assignment of EIPs to counter slots (pure bookkeeping, no syscalls).
//!
//! Slots are dense indices into the per-CPU counter array. Freed slots go to the *back* of a
//! FIFO, so a slot is reused as late as possible: a packet that looked up the old `EIP -> slot`
//! entry just before it was deleted has long finished by the time the slot serves another EIP.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use crate::FastMap;

type AddrMap<V> = FastMap<IpAddr, V>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error(
        "all {capacity} EIP slots are in use; raise dataplane.capacity (needs a restart with on_exit = \"detach\")"
    )]
    Full { capacity: u32 },
    #[error("EIP {addr} already has slot {slot}")]
    AlreadyAssigned { addr: IpAddr, slot: u32 },
    #[error("pinned map holds slot {slot} for {addr}, outside capacity {capacity}")]
    OutOfRange {
        addr: IpAddr,
        slot: u32,
        capacity: u32,
    },
    #[error("pinned map gives slot {slot} to both {first} and {second}")]
    SharedSlot {
        slot: u32,
        first: IpAddr,
        second: IpAddr,
    },
}

/// A slot handed out by [`SlotTable::assign`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub slot: u32,
    /// The slot may hold counts from an earlier EIP and must be zeroed before it is published.
    pub needs_zeroing: bool,
}

/// Which EIPs to add and remove to go from the current inventory to a desired one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<IpAddr>,
    pub remove: Vec<IpAddr>,
}

#[derive(Debug)]
pub struct SlotTable {
    capacity: u32,
    by_addr: AddrMap<u32>,
    /// The EIP of every slot, for iteration in slot order (sequential over the counter array).
    owner: Vec<Option<IpAddr>>,
    free: VecDeque<u32>,
    /// Slots at or above this index were never used since the maps were created (zero already).
    clean_from: u32,
}

impl SlotTable {
    /// A table for freshly created (all-zero) maps.
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            by_addr: AddrMap::default(),
            owner: vec![None; capacity as usize],
            free: (0..capacity).collect(),
            clean_from: 0,
        }
    }

    /// A table rebuilt from the `EIP -> slot` entries of maps that outlived a previous daemon.
    /// Every free slot is treated as dirty: a removed EIP may have left counts in it.
    pub fn from_existing(
        capacity: u32,
        existing: impl IntoIterator<Item = (IpAddr, u32)>,
    ) -> Result<Self, SlotError> {
        let mut by_addr = AddrMap::default();
        let mut owner: HashMap<u32, IpAddr> = HashMap::new();
        for (addr, slot) in existing {
            if slot >= capacity {
                return Err(SlotError::OutOfRange {
                    addr,
                    slot,
                    capacity,
                });
            }
            if let Some(first) = owner.insert(slot, addr) {
                return Err(SlotError::SharedSlot {
                    slot,
                    first,
                    second: addr,
                });
            }
            by_addr.insert(addr, slot);
        }
        let free = (0..capacity).filter(|s| !owner.contains_key(s)).collect();
        let mut by_slot = vec![None; capacity as usize];
        for (slot, addr) in owner {
            by_slot[slot as usize] = Some(addr);
        }
        Ok(Self {
            capacity,
            by_addr,
            owner: by_slot,
            free,
            clean_from: capacity,
        })
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    pub fn slot(&self, addr: &IpAddr) -> Option<u32> {
        self.by_addr.get(addr).copied()
    }

    /// Every `(EIP, slot)`, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, u32)> + '_ {
        self.owner
            .iter()
            .enumerate()
            .filter_map(|(slot, a)| a.map(|a| (a, slot as u32)))
    }

    /// Takes the next free slot for `addr`. The caller publishes it to the kernel; if that fails
    /// it must call [`SlotTable::release`] so the table matches the kernel again.
    pub fn assign(&mut self, addr: IpAddr) -> Result<Assignment, SlotError> {
        if let Some(&slot) = self.by_addr.get(&addr) {
            return Err(SlotError::AlreadyAssigned { addr, slot });
        }
        let slot = self.free.pop_front().ok_or(SlotError::Full {
            capacity: self.capacity,
        })?;
        let needs_zeroing = slot < self.clean_from;
        if !needs_zeroing {
            // Everything below the next fresh slot has been handed out at least once.
            self.clean_from = slot + 1;
        }
        self.by_addr.insert(addr, slot);
        self.owner[slot as usize] = Some(addr);
        Ok(Assignment {
            slot,
            needs_zeroing,
        })
    }

    /// Frees `addr`'s slot (to the back of the queue). Returns the slot it had.
    pub fn release(&mut self, addr: &IpAddr) -> Option<u32> {
        let slot = self.by_addr.remove(addr)?;
        self.owner[slot as usize] = None;
        self.free.push_back(slot);
        Some(slot)
    }

    /// The adds and removes that turn the current inventory into `desired` (order kept).
    ///
    /// One lookup per desired address and a pass over the slots; no set of the desired
    /// addresses is built (a million of them cost more to hash than to look up).
    pub fn plan(&self, desired: &[IpAddr]) -> Plan {
        let mut kept = vec![false; self.owner.len()];
        let mut add = Vec::new();
        for addr in desired {
            match self.slot(addr) {
                Some(slot) => kept[slot as usize] = true,
                None => add.push(*addr),
            }
        }
        let mut remove: Vec<IpAddr> = self
            .owner
            .iter()
            .zip(&kept)
            .filter_map(|(owner, kept)| owner.filter(|_| !kept))
            .collect();
        remove.sort();
        Plan { add, remove }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn fresh_slots_need_no_zeroing_and_are_dense() {
        let mut t = SlotTable::new(3);
        let a = t.assign(ip("192.0.2.1")).unwrap();
        let b = t.assign(ip("192.0.2.2")).unwrap();
        assert_eq!((a.slot, a.needs_zeroing), (0, false));
        assert_eq!((b.slot, b.needs_zeroing), (1, false));
    }

    #[test]
    fn freed_slot_is_reused_last_and_zeroed() {
        let mut t = SlotTable::new(3);
        t.assign(ip("192.0.2.1")).unwrap();
        assert_eq!(t.release(&ip("192.0.2.1")), Some(0));
        let b = t.assign(ip("192.0.2.2")).unwrap();
        let c = t.assign(ip("192.0.2.3")).unwrap();
        let d = t.assign(ip("192.0.2.4")).unwrap();
        assert_eq!((b.slot, c.slot), (1, 2));
        assert_eq!(
            d,
            Assignment {
                slot: 0,
                needs_zeroing: true
            }
        );
        assert_eq!(
            t.assign(ip("192.0.2.5")),
            Err(SlotError::Full { capacity: 3 })
        );
    }

    #[test]
    fn double_assign_is_refused() {
        let mut t = SlotTable::new(3);
        t.assign(ip("2001:db8::1")).unwrap();
        assert!(matches!(
            t.assign(ip("2001:db8::1")),
            Err(SlotError::AlreadyAssigned { slot: 0, .. })
        ));
    }

    #[test]
    fn rebuilt_table_keeps_slots_and_zeroes_reuse() {
        let t = SlotTable::from_existing(4, [(ip("192.0.2.1"), 2), (ip("192.0.2.2"), 0)]);
        let mut t = t.unwrap();
        assert_eq!(t.slot(&ip("192.0.2.1")), Some(2));
        let n = t.assign(ip("192.0.2.3")).unwrap();
        assert_eq!(
            n,
            Assignment {
                slot: 1,
                needs_zeroing: true
            }
        );
    }

    #[test]
    fn rebuilt_table_rejects_corruption() {
        assert!(matches!(
            SlotTable::from_existing(2, [(ip("192.0.2.1"), 5)]),
            Err(SlotError::OutOfRange { .. })
        ));
        assert!(matches!(
            SlotTable::from_existing(2, [(ip("192.0.2.1"), 1), (ip("192.0.2.2"), 1)]),
            Err(SlotError::SharedSlot { .. })
        ));
    }

    #[test]
    fn plan_diffs_inventories() {
        let mut t = SlotTable::new(8);
        t.assign(ip("192.0.2.1")).unwrap();
        t.assign(ip("192.0.2.2")).unwrap();
        let p = t.plan(&[ip("192.0.2.2"), ip("192.0.2.3")]);
        assert_eq!(p.add, vec![ip("192.0.2.3")]);
        assert_eq!(p.remove, vec![ip("192.0.2.1")]);
    }
}
