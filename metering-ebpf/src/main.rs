//! eip-meter's data plane: two TC programs on each uplink.
//!
//! * `eip_ingress` (uplink ingress): packets towards the Internet-facing side's EIPs, keyed by
//!   **destination** address: inbound traffic.
//! * `eip_egress` (uplink egress): packets leaving for the Internet, keyed by **source** address:
//!   outbound traffic.
//!
//! Both look the address up in the daemon-filled `EIP -> slot` hash and add the packet's IP-layer
//! bytes to that slot's per-CPU counters; an address that is no EIP goes to `NON_EIP_COUNTERS`.
//! The programs never drop, redirect or modify a packet, and any internal error (a header that
//! cannot be read, a missing map entry) just leaves the packet uncounted and passes it on:
//! metering must never cost a customer a packet.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use metering_common::{DEFAULT_CAPACITY, DirectionCounters, EipKey, TrafficCounters};

/// `EIP -> slot`. Preallocated (no `BPF_F_NO_PREALLOC`), resized by the daemon at load time.
#[map(name = "EIP_SLOTS")]
static EIP_SLOTS: HashMap<EipKey, u32> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// Per-slot counters, per CPU so the hot path needs no atomics.
#[map(name = "EIP_COUNTERS")]
static EIP_COUNTERS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(DEFAULT_CAPACITY, 0);

/// Traffic whose address is no EIP (one entry).
#[map(name = "NON_EIP_COUNTERS")]
static NON_EIP_COUNTERS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HLEN: u32 = 40;

/// Return code that hands the packet on unchanged: the next TCX program, or the kernel's default
/// (pass) when we are last. With legacy cls_bpf it continues to the next filter.
const PASS_ON: i32 = TC_ACT_UNSPEC;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Inbound,
    Outbound,
}

#[classifier]
pub fn eip_ingress(ctx: TcContext) -> i32 {
    let _ = count(&ctx, Direction::Inbound);
    PASS_ON
}

#[classifier]
pub fn eip_egress(ctx: TcContext) -> i32 {
    let _ = count(&ctx, Direction::Outbound);
    PASS_ON
}

/// One packet as the meter sees it.
struct Metered {
    key: EipKey,
    /// IP-layer bytes summed over all wire segments.
    bytes: u64,
    /// Wire segments (1 unless this is a GSO/GRO super-packet).
    packets: u64,
}

#[inline(always)]
fn count(ctx: &TcContext, direction: Direction) -> Result<(), i64> {
    let metered = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => parse_ipv4(ctx, direction)?,
        ETH_P_IPV6 => parse_ipv6(ctx, direction)?,
        // ARP, LLDP, ...: not IP traffic, not billed.
        _ => return Ok(()),
    };

    let counters = match unsafe { EIP_SLOTS.get(&metered.key) } {
        Some(slot) => EIP_COUNTERS.get_ptr_mut(*slot),
        None => NON_EIP_COUNTERS.get_ptr_mut(0),
    };
    let Some(counters) = counters else {
        return Ok(());
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
    Ok(())
}

/// Segments this skb stands for on the wire (`gso_segs` is 0 for an ordinary packet).
#[inline(always)]
fn wire_segments(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel handed us; gso_segs is readable in TC.
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    if segs == 0 { 1 } else { segs }
}

/// Transport header length of a super-packet's segments (what GSO repeats in every segment).
#[inline(always)]
fn l4_header_len(ctx: &TcContext, proto: u8, l4_offset: usize) -> Result<u32, i64> {
    match proto {
        IPPROTO_TCP => {
            let data_offset: u8 = ctx.load(l4_offset + 12)?;
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

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, direction: Direction) -> Result<Metered, i64> {
    let version_ihl: u8 = ctx.load(ETH_HLEN)?;
    let ihl = u32::from(version_ihl & 0x0f) * 4;
    let total_len = u32::from(u16::from_be(ctx.load::<u16>(ETH_HLEN + 2)?));
    let addr_offset = match direction {
        Direction::Inbound => ETH_HLEN + 16,  // destination
        Direction::Outbound => ETH_HLEN + 12, // source
    };
    let addr: u32 = ctx.load(addr_offset)?;
    let segments = wire_segments(ctx);
    let header_len = if segments > 1 {
        let proto: u8 = ctx.load(ETH_HLEN + 9)?;
        ihl + l4_header_len(ctx, proto, ETH_HLEN + ihl as usize)?
    } else {
        0
    };
    Ok(Metered {
        key: EipKey::from_ipv4_raw(addr),
        bytes: ip_layer_bytes(ctx, total_len, segments, header_len),
        packets: u64::from(segments),
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, direction: Direction) -> Result<Metered, i64> {
    let payload_len = u32::from(u16::from_be(ctx.load::<u16>(ETH_HLEN + 4)?));
    let addr_offset = match direction {
        Direction::Inbound => ETH_HLEN + 24, // destination
        Direction::Outbound => ETH_HLEN + 8, // source
    };
    let addr: [u32; 4] = ctx.load(addr_offset)?;
    let segments = wire_segments(ctx);
    let header_len = if segments > 1 {
        // GSO is only built for TCP/UDP directly after the fixed header.
        let next_header: u8 = ctx.load(ETH_HLEN + 6)?;
        IPV6_HLEN + l4_header_len(ctx, next_header, ETH_HLEN + IPV6_HLEN as usize)?
    } else {
        0
    };
    Ok(Metered {
        key: EipKey::from_ipv6_raw(addr),
        bytes: ip_layer_bytes(ctx, IPV6_HLEN + payload_len, segments, header_len),
        packets: u64::from(segments),
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
