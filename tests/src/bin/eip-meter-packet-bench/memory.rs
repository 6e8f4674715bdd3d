//! What one cache miss costs on this machine: the floor under `ns_per_packet_cold`.
//!
//! A pointer chase (each load's address comes from the load before, so the CPU cannot overlap
//! them) through every cache line of a buffer in random order, as a packet's lookups go to a
//! random EIP's lines: nanoseconds per load, over a buffer that fits the L2 and over ones the
//! size of the maps (a million EIPs' hash table is 89 MB), with 4 KiB pages (what the kernel's
//! `vmalloc`ed maps have) and with 2 MiB pages (the best any layout could get).

use std::time::Instant;

use crate::Spread;

const LINE: usize = 64;
const LOADS: usize = 10_000_000;
const REPS: usize = 3;

pub struct MissCost {
    /// Bytes of the buffer, huge pages or not, and ns per dependent load.
    pub points: Vec<(usize, bool, Spread)>,
}

impl MissCost {
    /// `(key, spread)` per point, as `packet.json` names them.
    pub fn named(&self) -> Vec<(String, Spread)> {
        self.points
            .iter()
            .map(|(size, huge, s)| {
                let pages = if *huge { "2m" } else { "4k" };
                (
                    format!("ns_per_dependent_load_{}mib_{pages}_pages", size >> 20),
                    *s,
                )
            })
            .collect()
    }
}

pub fn measure() -> MissCost {
    let mut points = Vec::new();
    for size in [1 << 20, 64 << 20, 256 << 20] {
        for huge in [false, true] {
            let runs: Vec<f64> = (0..REPS).map(|_| chase(size, huge)).collect();
            points.push((size, huge, Spread::of(&runs)));
        }
    }
    MissCost { points }
}

/// ns per dependent load over a random cycle through every line of `size` bytes.
fn chase(size: usize, huge: bool) -> f64 {
    let lines = size / LINE;
    // SAFETY: a private anonymous mapping of `size` bytes, unmapped below; no other reference.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap {size} bytes");
    let advice = if huge {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    // SAFETY: advice on the mapping just made (a hint: failure only changes the page size).
    unsafe { libc::madvise(base, size, advice) };
    let base = base.cast::<u8>();
    // A random cyclic order of the lines (Sattolo's shuffle: one cycle through all of them).
    let mut order: Vec<usize> = (0..lines).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for i in (1..lines).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % i as u64) as usize;
        order.swap(i, j);
    }
    for w in 0..lines {
        let from = order[w];
        let to = order[(w + 1) % lines];
        // SAFETY: both offsets are lines inside the mapping; each line's first word is written.
        unsafe {
            base.add(from * LINE)
                .cast::<*const u8>()
                .write(base.add(to * LINE));
        }
    }
    // SAFETY: a line inside the mapping.
    let mut p: *const u8 = unsafe { base.add(order[0] * LINE) };
    let started = Instant::now();
    for _ in 0..LOADS {
        // SAFETY: every line's first word holds the address of another line of the mapping.
        p = unsafe { p.cast::<*const u8>().read_volatile() };
    }
    let ns = started.elapsed().as_nanos() as f64 / LOADS as f64;
    std::hint::black_box(p);
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base.cast(), size) };
    ns
}
