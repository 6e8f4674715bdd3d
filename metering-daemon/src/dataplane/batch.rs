//! Reading every slot of an array map (the per-CPU counters, the drop counters) in a few
//! syscalls.

use std::io;

use aya::maps::MapData;
use metering_common::{DropCounters, TrafficCounters};

/// A value an array map holds per slot, and how its copies (one per CPU in a per-CPU map)
/// add up.
pub(super) trait SlotValue: aya::Pod + Default + Send {
    fn combine(self, other: Self) -> Self;
}

impl SlotValue for TrafficCounters {
    fn combine(self, other: Self) -> Self {
        self.plus(other)
    }
}

impl SlotValue for DropCounters {
    /// A shared (not per-CPU) array has one copy.
    fn combine(self, other: Self) -> Self {
        other
    }
}

/// Slots read per `BPF_MAP_LOOKUP_BATCH` call.
pub const BATCH_SLOTS: u32 = 65_536;

/// `union bpf_attr` as used by the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
pub(super) struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every slot of an array map, its copies combined (`copies`: CPUs for a per-CPU map, else 1),
/// with `BPF_MAP_LOOKUP_BATCH` (kernel >= 5.6): 1,000,000 slots in ~16 syscalls instead of
/// 1,000,000. aya 0.14 has no wrapper for batch operations, hence the raw syscall. Large maps
/// are read in one slice per core at once: the copy out of the kernel is most of a round's read.
pub(super) fn read_all_slots<T: SlotValue>(
    map: &MapData,
    capacity: u32,
    copies: usize,
) -> io::Result<Vec<T>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = vec![T::default(); capacity as usize];
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let chunk = (capacity as usize)
        .div_ceil(threads)
        .max(2 * BATCH_SLOTS as usize);
    std::thread::scope(|scope| {
        let readers: Vec<_> = out
            .chunks_mut(chunk)
            .enumerate()
            .map(|(i, part)| {
                let first = (i * chunk) as u32;
                scope.spawn(move || read_slot_range(fd, first, part, copies))
            })
            .collect();
        readers
            .into_iter()
            .try_for_each(|r| r.join().expect("reader thread panicked"))
    })?;
    Ok(out)
}

/// Reads slots `first..first + out.len()` into `out`, each slot's `copies` combined.
fn read_slot_range<T: SlotValue>(
    fd: std::os::fd::RawFd,
    first: u32,
    out: &mut [T],
    copies: usize,
) -> io::Result<()> {
    // The kernel pads per-CPU values to 8 bytes; both value types are multiples of 8.
    let value = std::mem::size_of::<T>();
    debug_assert_eq!(value % 8, 0);
    let mut keys = vec![0u32; BATCH_SLOTS as usize];
    let mut values = vec![0u8; BATCH_SLOTS as usize * copies * value];
    // The batch continues after `token_in` (the last key read); none means from slot 0.
    let mut token_in = first.checked_sub(1);
    let mut token_out = 0u32;
    let mut done = 0usize;
    while done < out.len() {
        let mut attr = BatchAttr {
            in_batch: token_in.as_ref().map_or(0, |t| t as *const u32 as u64),
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: (out.len() - done).min(BATCH_SLOTS as usize) as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers sized for `count` keys and values; the kernel writes no
        // more than that and reports how many it wrote in `count`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let end_of_map = if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err);
            }
            true
        } else {
            false
        };
        for (i, &slot) in keys.iter().take(attr.count as usize).enumerate() {
            let base = i * copies * value;
            let sum = (0..copies).fold(T::default(), |acc, cpu| {
                // SAFETY: in bounds (i < count <= BATCH_SLOTS); T is Pod (plain integers).
                let v: T = unsafe {
                    std::ptr::read_unaligned(values.as_ptr().add(base + cpu * value).cast())
                };
                acc.combine(v)
            });
            if let Some(o) = (slot as usize)
                .checked_sub(first as usize)
                .and_then(|k| out.get_mut(k))
            {
                *o = sum;
            }
        }
        if end_of_map || attr.count == 0 {
            return Ok(());
        }
        done += attr.count as usize;
        token_in = Some(token_out);
    }
    Ok(())
}
