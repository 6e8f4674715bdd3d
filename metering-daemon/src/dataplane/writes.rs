//! The writes of one apply, collected first and then flushed map by map with
//! `BPF_MAP_UPDATE_BATCH`: a million EIPs' policies in a few dozen syscalls instead of two or
//! three million. Flushing in map order keeps the order the programs rely on for every EIP:
//! a reused slot's counters, drops and bucket zeroed, then its own caps, then its policy, and
//! last the `EIP -> slot` entry that makes packets find it.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{Map, MapData};
use metering_common::{
    BucketPairConfig, BucketPairState, DropCounters, EipKey, EipPolicy, MAP_BUCKET_CONFIG,
    MAP_BUCKET_STATE, MAP_EIP_COUNTERS, MAP_EIP_DROPS, MAP_EIP_POLICY, MAP_EIP_SLOTS,
    TrafficCounters,
};

use super::{BATCH_SLOTS, Dataplane, DataplaneError, batch::BatchAttr, key_of};

/// An EIP's policy and own caps as last written.
type Written = (EipPolicy, Option<BucketPairConfig>);

/// What this process last wrote to each slot's policy and own caps, indexed by slot (slots are
/// handed out from 0 up, so it grows with the inventory): a change that would write the same
/// again is skipped.
#[derive(Debug, Default)]
pub(super) struct WrittenPolicies(Vec<Option<Written>>);

impl WrittenPolicies {
    pub fn get(&self, slot: u32) -> Option<&Written> {
        self.0.get(slot as usize).and_then(Option::as_ref)
    }

    fn record(&mut self, slot: u32, written: Written) {
        let i = slot as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, None);
        }
        self.0[i] = Some(written);
    }

    pub fn forget(&mut self, slot: u32) {
        if let Some(w) = self.0.get_mut(slot as usize) {
            *w = None;
        }
    }
}

/// What one apply will write, in the order [`Dataplane::flush`] writes it.
#[derive(Default)]
pub(super) struct PendingWrites {
    /// Reused slots whose counters, drops and bucket state go back to zero.
    pub zero: Vec<u32>,
    /// Own bucket pairs, by bucket index (= slot).
    pub buckets: Vec<(u32, BucketPairConfig)>,
    /// Policies, with what [`Dataplane`] remembers having written.
    pub policies: Vec<(IpAddr, u32, EipPolicy, Option<BucketPairConfig>)>,
    /// New `EIP -> slot` entries.
    pub inserts: Vec<(IpAddr, u32)>,
}

impl PendingWrites {
    pub fn is_empty(&self) -> bool {
        self.zero.is_empty()
            && self.buckets.is_empty()
            && self.policies.is_empty()
            && self.inserts.is_empty()
    }
}

impl Dataplane {
    /// Writes `pending` to the kernel. On an error, the EIPs not yet published are given their
    /// slots back (no packet can have found them), and those published stay, as with one write
    /// at a time.
    pub(super) fn flush(&mut self, pending: PendingWrites) -> Result<(), DataplaneError> {
        if pending.is_empty() {
            return Ok(());
        }
        let published = self.flush_maps(&pending);
        let inserted = match &published {
            Ok(()) => pending.inserts.len(),
            Err(failure) => failure.written,
        };
        for (addr, slot) in &pending.inserts[inserted..] {
            self.slots.release(addr);
            self.written.forget(*slot);
        }
        published.map_err(|f| DataplaneError::Batch {
            map: f.map,
            op: "update",
            source: f.source,
        })
    }

    /// On an error, `written` says how many inserts made it.
    fn flush_maps(&mut self, p: &PendingWrites) -> Result<(), BatchFailure> {
        // Nothing is published before the inserts: an error there publishes none.
        let before_inserts = |f: BatchFailure| BatchFailure { written: 0, ..f };
        let zero_counters = vec![TrafficCounters::default(); self.nr_cpus];
        let (zero_drops, zero_bucket) = ([DropCounters::default()], [BucketPairState::default()]);
        update_batch(
            self.map_data(MAP_EIP_COUNTERS),
            MAP_EIP_COUNTERS,
            p.zero.iter().map(|&slot| (slot, zero_counters.as_slice())),
            0,
        )
        .map_err(before_inserts)?;
        update_batch(
            self.map_data(MAP_EIP_DROPS),
            MAP_EIP_DROPS,
            p.zero.iter().map(|&slot| (slot, zero_drops.as_slice())),
            0,
        )
        .map_err(before_inserts)?;
        update_batch(
            self.map_data(MAP_BUCKET_STATE),
            MAP_BUCKET_STATE,
            p.zero.iter().map(|&slot| (slot, zero_bucket.as_slice())),
            0,
        )
        .map_err(before_inserts)?;
        update_batch(
            self.map_data(MAP_BUCKET_CONFIG),
            MAP_BUCKET_CONFIG,
            p.buckets
                .iter()
                .map(|(index, pair)| (*index, std::slice::from_ref(pair))),
            0,
        )
        .map_err(before_inserts)?;
        update_batch(
            self.map_data(MAP_EIP_POLICY),
            MAP_EIP_POLICY,
            p.policies
                .iter()
                .map(|(_, slot, policy, _)| (*slot, std::slice::from_ref(policy))),
            0,
        )
        .map_err(before_inserts)?;
        for (_, slot, policy, own) in &p.policies {
            self.written.record(*slot, (*policy, *own));
        }
        // Batches take no BPF_NOEXIST (only BPF_F_LOCK); the slot table knows these keys are
        // not in the map (it is rebuilt from the map at load).
        let keys: Vec<(EipKey, u32)> = p
            .inserts
            .iter()
            .map(|(addr, slot)| (key_of(*addr), *slot))
            .collect();
        update_batch(
            self.map_data(MAP_EIP_SLOTS),
            MAP_EIP_SLOTS,
            keys.iter()
                .map(|(key, slot)| (*key, std::slice::from_ref(slot))),
            0,
        )
    }

    fn map_data(&self, name: &'static str) -> &MapData {
        match self.ebpf.map(name).expect("map is in the object") {
            Map::Array(m) | Map::PerCpuArray(m) | Map::HashMap(m) => m,
            _ => unreachable!("{name} is an array or a hash"),
        }
    }
}

/// A batch that failed part-way: how many entries of it were written, and why the next was not.
struct BatchFailure {
    written: usize,
    map: &'static str,
    source: io::Error,
}

/// `union bpf_attr` as used by `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// The kernel's "operation not supported" (not a userspace errno).
const ENOTSUPP: i32 = 524;

/// Writes `entries` (key, value copies: one, or one per CPU for a per-CPU map) to `map` with
/// `BPF_MAP_UPDATE_BATCH` (kernel >= 5.6; aya 0.14 has no wrapper), in chunks of
/// [`BATCH_SLOTS`], falling back to one `BPF_MAP_UPDATE_ELEM` per entry where batches are not
/// supported. On an error, says how many entries were written.
fn update_batch<'a, K: Copy, V: Copy + 'a>(
    map: &MapData,
    name: &'static str,
    entries: impl Iterator<Item = (K, &'a [V])>,
    elem_flags: u64,
) -> Result<(), BatchFailure> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<V> = Vec::new();
    let mut done = 0usize;
    let mut batches = true;
    let mut entries = entries.peekable();
    while entries.peek().is_some() {
        keys.clear();
        values.clear();
        for (key, value) in entries.by_ref().take(BATCH_SLOTS as usize) {
            keys.push(key);
            values.extend_from_slice(value);
        }
        let written = if batches {
            match batch_syscall(fd, &keys, &values, elem_flags) {
                Err((0, e))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
                    ) =>
                {
                    batches = false;
                    elem_syscalls(fd, &keys, &values, elem_flags)
                }
                other => other,
            }
        } else {
            elem_syscalls(fd, &keys, &values, elem_flags)
        };
        match written {
            Ok(()) => done += keys.len(),
            Err((n, source)) => {
                return Err(BatchFailure {
                    written: done + n,
                    map: name,
                    source,
                });
            }
        }
    }
    Ok(())
}

fn batch_syscall<K, V>(
    fd: i32,
    keys: &[K],
    values: &[V],
    elem_flags: u64,
) -> Result<(), (usize, io::Error)> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        elem_flags,
        ..Default::default()
    };
    // SAFETY: `keys` holds `count` keys and `values` `count` values (times the CPUs for a
    // per-CPU map) of the map's sizes; the kernel only reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        let error = io::Error::last_os_error();
        // The kernel reports how many it wrote when an element fails; an error before the
        // first (bad flags, an unknown command) leaves `count` as it was.
        let written = if attr.count as usize == keys.len() {
            0
        } else {
            attr.count as usize
        };
        return Err((written, error));
    }
    Ok(())
}

fn elem_syscalls<K, V>(
    fd: i32,
    keys: &[K],
    values: &[V],
    elem_flags: u64,
) -> Result<(), (usize, io::Error)> {
    let copies = values.len() / keys.len().max(1);
    for (i, key) in keys.iter().enumerate() {
        let mut attr = ElemAttr {
            map_fd: fd as u32,
            key: key as *const K as u64,
            value: values[i * copies..].as_ptr() as u64,
            flags: elem_flags,
            ..Default::default()
        };
        // SAFETY: one key and `copies` values of the map's sizes, only read by the kernel.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                &mut attr as *mut ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if ret < 0 {
            return Err((i, io::Error::last_os_error()));
        }
    }
    Ok(())
}
