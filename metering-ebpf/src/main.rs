//! eip-meter's data plane: two TC programs on each uplink.
//!
//! * `eip_ingress` (uplink ingress): packets towards the Internet-facing side's EIPs, keyed by
//!   **destination** address: inbound traffic.
//! * `eip_egress` (uplink egress): packets leaving for the Internet, keyed by **source** address:
//!   outbound traffic.
//!
//! Both look the address up in the daemon-filled `EIP -> slot` hash, apply the slot's policy
//! (blocked EIPs are dropped, capped EIPs go through their bucket) and add the delivered
//! packet's IP-layer bytes to that slot's per-CPU counters; a dropped packet is added to the
//! slot's drop counters instead, so billing sees delivered traffic only. An address that is no
//! EIP goes to `NON_EIP_COUNTERS` and is never dropped. Any internal error (a header that cannot
//! be read, a missing map entry) passes the packet on uncounted: a fault in the meter must never
//! cost a customer a packet.
//!
//! ## Why the bucket is safe across CPUs
//!
//! One EIP's packets arrive on every CPU at once, so its bucket is shared state. A bucket is a
//! GCRA: a single `u64` *theoretical arrival time* (`tat`) per direction, updated with a
//! compare-and-swap from `tat` to `max(tat, now) + cost`. Whichever CPU wins the swap has paid
//! for its packet; a loser re-reads and tries again, so no token is ever spent twice and none
//! is lost. After [`CAS_TRIES`] failed swaps (heavy contention; never seen with 2 CPUs) the cost
//! is added with a plain atomic add, which can only charge, never free, tokens. A spin lock
//! would serialise every packet of a busy EIP; per-CPU buckets would cap one flow at
//! `rate / CPUs`. LLVM emits the 64-bit `cmpxchg_64` and `lock +=` instructions for any BPF CPU
//! level; the kernel accepts them since 5.12.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use metering_common::{
    BucketConfig, BucketPairConfig, BucketPairState, BucketState, DEFAULT_CAPACITY,
    DirectionCounters, DirectionDrops, DropCounters, EipKey, EipPolicy, NO_BUCKET, POLICY_FLAG_ECN,
    STATE_ACTIVE, TrafficCounters,
};

/// `EIP -> slot`. Preallocated (no `BPF_F_NO_PREALLOC`), resized by the daemon at load time.
#[map(name = "EIP_SLOTS")]
static EIP_SLOTS: HashMap<EipKey, u32> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// Per-slot delivered-traffic counters, per CPU so the hot path needs no atomics.
#[map(name = "EIP_COUNTERS")]
static EIP_COUNTERS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(DEFAULT_CAPACITY, 0);

/// Traffic whose address is no EIP (one entry).
#[map(name = "NON_EIP_COUNTERS")]
static NON_EIP_COUNTERS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(1, 0);

/// Per-slot state and bucket pair, written by the daemon.
#[map(name = "EIP_POLICY")]
static EIP_POLICY: Array<EipPolicy> = Array::with_max_entries(DEFAULT_CAPACITY, 0);

/// Per-slot drop and ECN-mark counters: one copy shared by all CPUs (atomic adds) because drops
/// are the exception and a per-CPU copy would cost 96 bytes x CPUs per slot.
#[map(name = "EIP_DROPS")]
static EIP_DROPS: Array<DropCounters> = Array::with_max_entries(DEFAULT_CAPACITY, 0);

/// Caps by bucket pair (slots first, then groups); the daemon sizes both bucket maps.
#[map(name = "BUCKET_CONFIG")]
static BUCKET_CONFIG: Array<BucketPairConfig> = Array::with_max_entries(DEFAULT_CAPACITY, 0);

#[map(name = "BUCKET_STATE")]
static BUCKET_STATE: Array<BucketPairState> = Array::with_max_entries(DEFAULT_CAPACITY, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HLEN: u32 = 40;
/// Bits times nanoseconds per second: cost in ns = bytes x this / rate in bit/s.
const BIT_NS_PER_BYTE_SECOND: u64 = 8 * 1_000_000_000;
/// Compare-and-swap attempts before the cost is charged with a plain atomic add.
const CAS_TRIES: u32 = 4;

/// Return code that hands the packet on unchanged: the next TCX program, or the kernel's default
/// (pass) when we are last. With legacy cls_bpf it continues to the next filter.
const PASS_ON: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Inbound,
    Outbound,
}

#[classifier]
pub fn eip_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Inbound)
}

#[classifier]
pub fn eip_egress(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Outbound)
}

/// Never attached: the benchmark's floor, the same call with nothing in it.
#[classifier]
pub fn eip_floor(_ctx: TcContext) -> i32 {
    PASS_ON
}

/// One packet as the meter sees it.
struct Metered {
    key: EipKey,
    /// IP-layer bytes summed over all wire segments.
    bytes: u64,
    /// Wire segments (1 unless this is a GSO/GRO super-packet).
    packets: u64,
    ipv6: bool,
}

/// What the policy decided for one packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Pass, with CE set if the packet is ECN-capable.
    Mark,
    RateLimited,
    Blocked,
}

#[inline(always)]
fn handle(ctx: &TcContext, direction: Direction) -> i32 {
    let metered = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => parse_ipv4(ctx, direction),
        ETH_P_IPV6 => parse_ipv6(ctx, direction),
        // ARP, LLDP, ...: not IP traffic, not billed, never policed.
        _ => return PASS_ON,
    };
    let Ok(metered) = metered else {
        return PASS_ON;
    };
    let Some(slot) = (unsafe { EIP_SLOTS.get(&metered.key) }) else {
        add_counts(NON_EIP_COUNTERS.get_ptr_mut(0), direction, &metered);
        return PASS_ON;
    };
    let slot = *slot;
    let verdict = match EIP_POLICY.get(slot) {
        Some(policy) => decide(policy, direction, &metered),
        None => Verdict::Pass,
    };
    match verdict {
        Verdict::Pass => {
            add_counts(EIP_COUNTERS.get_ptr_mut(slot), direction, &metered);
            PASS_ON
        }
        Verdict::Mark => {
            // Delivered whether or not it could be marked: the packet goes out.
            if set_ce(ctx, metered.ipv6) == Ok(true) {
                add_drops(slot, direction, &metered, verdict);
            }
            add_counts(EIP_COUNTERS.get_ptr_mut(slot), direction, &metered);
            PASS_ON
        }
        Verdict::RateLimited | Verdict::Blocked => {
            add_drops(slot, direction, &metered, verdict);
            DROP
        }
    }
}

#[inline(always)]
fn decide(policy: &EipPolicy, direction: Direction, metered: &Metered) -> Verdict {
    if policy.state != STATE_ACTIVE {
        return Verdict::Blocked;
    }
    if policy.bucket == NO_BUCKET {
        return Verdict::Pass;
    }
    let (Some(config), Some(state)) = (
        BUCKET_CONFIG.get(policy.bucket),
        BUCKET_STATE.get_ptr_mut(policy.bucket),
    ) else {
        return Verdict::Pass;
    };
    let (config, state) = match direction {
        // SAFETY: `state` points at a live array element; only field addresses are taken.
        Direction::Inbound => (&config.inbound, unsafe { &raw mut (*state).inbound }),
        Direction::Outbound => (&config.outbound, unsafe { &raw mut (*state).outbound }),
    };
    let ecn = policy.flags & POLICY_FLAG_ECN != 0;
    // SAFETY: as above; `police` only touches the bucket through atomics and volatile reads.
    unsafe { police(config, state, metered.bytes, bpf_ktime_get_ns(), ecn) }
}

/// The GCRA step (see the module docs and [`BucketConfig`]).
///
/// # Safety
/// `state` must point at a bucket in a map value.
#[inline(always)]
unsafe fn police(
    config: &BucketConfig,
    state: *mut BucketState,
    bytes: u64,
    now: u64,
    ecn: bool,
) -> Verdict {
    let rate = config.rate_bps;
    if rate == 0 {
        return Verdict::Pass;
    }
    // An skb is far below 1 GiB, and 2^30 x 8e9 < 2^64: the product cannot overflow. (No
    // `saturating_mul`: its 128-bit multiply has no BPF instruction.)
    let bytes = if bytes > 1 << 30 { 1 << 30 } else { bytes };
    let cost = bytes * BIT_NS_PER_BYTE_SECOND / rate;
    let tat_ptr = unsafe { &raw mut (*state).tat };
    let mut tries = 0;
    while tries < CAS_TRIES {
        let tat = unsafe { read_volatile(tat_ptr) };
        let base = if tat > now { tat } else { now };
        let backlog = base - now;
        if backlog > config.burst_ns {
            return Verdict::RateLimited;
        }
        let verdict = if ecn && backlog > config.mark_ns {
            Verdict::Mark
        } else {
            Verdict::Pass
        };
        if unsafe { compare_and_swap(tat_ptr, tat, base + cost) } {
            return verdict;
        }
        tries += 1;
    }
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(tat_ptr, cost) };
    Verdict::Pass
}

#[inline(always)]
unsafe fn compare_and_swap(ptr: *mut u64, old: u64, new: u64) -> bool {
    let (_, swapped) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(ptr, old, new)
    };
    swapped
}

#[inline(always)]
fn add_counts(counters: Option<*mut TrafficCounters>, direction: Direction, metered: &Metered) {
    let Some(counters) = counters else {
        return;
    };
    // SAFETY: a per-CPU array element; TC programs run with migration disabled, so no other
    // program touches this CPU's copy while we add to it.
    let counters = unsafe { &mut *counters };
    let dir: &mut DirectionCounters = match direction {
        Direction::Inbound => &mut counters.inbound,
        Direction::Outbound => &mut counters.outbound,
    };
    dir.bytes += metered.bytes;
    dir.packets += metered.packets;
}

#[inline(always)]
fn add_drops(slot: u32, direction: Direction, metered: &Metered, verdict: Verdict) {
    let Some(drops) = EIP_DROPS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: an element of a shared array; every write is an atomic add.
    let dir: *mut DirectionDrops = match direction {
        Direction::Inbound => unsafe { &raw mut (*drops).inbound },
        Direction::Outbound => unsafe { &raw mut (*drops).outbound },
    };
    let (packets, bytes) = unsafe {
        match verdict {
            Verdict::RateLimited => (
                &raw mut (*dir).rate_limited_packets,
                &raw mut (*dir).rate_limited_bytes,
            ),
            Verdict::Blocked => (
                &raw mut (*dir).blocked_packets,
                &raw mut (*dir).blocked_bytes,
            ),
            Verdict::Mark | Verdict::Pass => (
                &raw mut (*dir).ecn_marked_packets,
                &raw mut (*dir).ecn_marked_bytes,
            ),
        }
    };
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(packets, metered.packets);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes, metered.bytes);
    }
}

/// Sets the ECN field to CE if the packet is ECN-capable (ECT(0) or ECT(1)) and says whether it
/// did, fixing the IPv4 header checksum. Read only here, on the rare near-the-cap path. GSO
/// copies the header into every segment, so a super-packet's segments all carry the mark.
#[inline(always)]
fn set_ce(ctx: &TcContext, ipv6: bool) -> Result<bool, i64> {
    // IPv4 TOS, or the second byte of IPv6 (its traffic class straddles bytes 0 and 1, the ECN
    // bits are bits 4-5 of byte 1).
    let byte: u8 = ctx.load(ETH_HLEN + 1)?;
    let (ecn, ce_bits) = if ipv6 {
        ((byte >> 4) & 3, 0x30)
    } else {
        (byte & 3, 0x03)
    };
    if ecn != 1 && ecn != 2 {
        return Ok(false);
    }
    if ipv6 {
        ctx.store(ETH_HLEN + 1, &(byte | ce_bits), 0)?;
    } else {
        let old_word: u16 = ctx.load(ETH_HLEN)?;
        ctx.store(ETH_HLEN + 1, &(byte | ce_bits), 0)?;
        let new_word: u16 = ctx.load(ETH_HLEN)?;
        ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(old_word), u64::from(new_word), 2)?;
    }
    Ok(true)
}

/// Segments this skb stands for on the wire (`gso_segs` is 0 for an ordinary packet).
#[inline(always)]
fn wire_segments(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel handed us; gso_segs is readable in TC.
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    if segs == 0 { 1 } else { segs }
}

/// Transport header length of a super-packet's segments (what GSO repeats in every segment),
/// its header at `l4_offset`. Only GSO super-packets come here, so the one extra bounds check
/// (and, rarely, a pull) is off the small-packet path.
#[inline(always)]
fn l4_header_len(ctx: &TcContext, proto: u8, l4_offset: usize) -> Result<u32, ()> {
    match proto {
        IPPROTO_TCP => {
            // The TCP data offset is byte 12 of its header.
            let start = linear_headers(ctx, l4_offset + 13)?;
            let tcp = start + l4_offset;
            if tcp + 13 > ctx.data_end() {
                return Err(());
            }
            // SAFETY: within the bounds just checked against `data_end`.
            let data_offset = unsafe { *((tcp + 12) as *const u8) };
            Ok(u32::from(data_offset >> 4) * 4)
        }
        IPPROTO_UDP => Ok(8),
        _ => Ok(0),
    }
}

/// IP-layer bytes of the whole skb, with each extra segment's headers added back.
///
/// An ordinary packet is its IP length field (which, unlike `skb->len`, excludes link-layer
/// padding). A super-packet's length field may be 0 (BIG TCP), so it is measured from `skb->len`,
/// and every segment but the first adds one copy of the IP + transport headers.
#[inline(always)]
fn ip_layer_bytes(ctx: &TcContext, ip_len_field: u32, segments: u32, header_len: u32) -> u64 {
    if segments <= 1 {
        return u64::from(ip_len_field);
    }
    let super_len = u64::from(ctx.len().saturating_sub(ETH_HLEN as u32));
    super_len + u64::from(segments - 1) * u64::from(header_len)
}

/// Address of the packet's first byte with at least `len` bytes of it in the linear area, read
/// in place (direct packet access) instead of copied out field by field with
/// `bpf_skb_load_bytes`, one helper call each. The headers of a packet off the wire are
/// linear; when they are not (some tunnels, a clone), they are pulled in once. `Err`: the
/// packet is shorter than `len`, or the pull failed.
#[inline(always)]
fn linear_headers(ctx: &TcContext, len: usize) -> Result<usize, ()> {
    if ctx.data() + len > ctx.data_end() {
        ctx.pull_data(len as u32).map_err(|_| ())?;
    }
    // A pull moves the data: read the pointers again (the verifier insists too).
    let start = ctx.data();
    if start + len > ctx.data_end() {
        return Err(());
    }
    Ok(start)
}

/// Reads a `T` at `offset` from `start`.
///
/// # Safety
/// `start + offset + size_of::<T>()` must lie within the bounds checked by [`linear_headers`].
#[inline(always)]
unsafe fn field<T: Copy>(start: usize, offset: usize) -> T {
    unsafe { *((start + offset) as *const T) }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, direction: Direction) -> Result<Metered, ()> {
    const MIN_HEADERS: usize = ETH_HLEN + 20;
    let start = linear_headers(ctx, MIN_HEADERS)?;
    // SAFETY (all reads below): offsets within the first MIN_HEADERS bytes.
    let version_ihl: u8 = unsafe { field(start, ETH_HLEN) };
    let ihl = u32::from(version_ihl & 0x0f) * 4;
    let total_len = u32::from(u16::from_be(unsafe { field(start, ETH_HLEN + 2) }));
    let segments = wire_segments(ctx);
    // A header the IP layer refuses after us (`ip_rcv`: another version, a header under 20
    // bytes, a length under the header or past the frame's end) is not billed: a 64-byte frame
    // claiming 65,535 bytes would otherwise bill a thousand times its size to the EIP it names.
    // A super-packet's length field may be 0 (BIG TCP); its size is `skb->len`.
    if version_ihl >> 4 != 4
        || ihl < 20
        || (segments <= 1
            && (total_len < ihl || total_len > ctx.len().saturating_sub(ETH_HLEN as u32)))
    {
        return Err(());
    }
    let addr: u32 = match direction {
        Direction::Inbound => unsafe { field(start, ETH_HLEN + 16) }, // destination
        Direction::Outbound => unsafe { field(start, ETH_HLEN + 12) }, // source
    };
    let header_len = if segments > 1 {
        let proto: u8 = unsafe { field(start, ETH_HLEN + 9) };
        ihl + l4_header_len(ctx, proto, ETH_HLEN + ihl as usize)?
    } else {
        0
    };
    Ok(Metered {
        key: EipKey::from_ipv4_raw(addr),
        bytes: ip_layer_bytes(ctx, total_len, segments, header_len),
        packets: u64::from(segments),
        ipv6: false,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, direction: Direction) -> Result<Metered, ()> {
    const MIN_HEADERS: usize = ETH_HLEN + IPV6_HLEN as usize;
    let start = linear_headers(ctx, MIN_HEADERS)?;
    // SAFETY (all reads below): offsets within the first MIN_HEADERS bytes.
    let version: u8 = unsafe { field(start, ETH_HLEN) };
    let payload_len = u32::from(u16::from_be(unsafe { field(start, ETH_HLEN + 4) }));
    // As for IPv4: what `ipv6_rcv` refuses (another version, a payload past the frame's end) is
    // not billed. A super-packet's length field may be 0 (BIG TCP); its size is `skb->len`.
    let segments = wire_segments(ctx);
    if version >> 4 != 6
        || (segments <= 1 && IPV6_HLEN + payload_len > ctx.len().saturating_sub(ETH_HLEN as u32))
    {
        return Err(());
    }
    let addr: [u32; 4] = match direction {
        Direction::Inbound => unsafe { field(start, ETH_HLEN + 24) }, // destination
        Direction::Outbound => unsafe { field(start, ETH_HLEN + 8) }, // source
    };
    let header_len = if segments > 1 {
        // GSO is only built for TCP/UDP directly after the fixed header.
        let next_header: u8 = unsafe { field(start, ETH_HLEN + 6) };
        IPV6_HLEN + l4_header_len(ctx, next_header, MIN_HEADERS)?
    } else {
        0
    };
    Ok(Metered {
        key: EipKey::from_ipv6_raw(addr),
        bytes: ip_layer_bytes(ctx, IPV6_HLEN + payload_len, segments, header_len),
        packets: u64::from(segments),
        ipv6: true,
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
