//! Map layouts shared by the eBPF programs (`metering-ebpf`) and the daemon (`metering-daemon`).
//!
//! Everything here is `#[repr(C)]`, has explicit padding and no `bool` or enum fields, so the
//! kernel and user space agree on every byte. The `user` feature implements `aya::Pod` so the
//! daemon can read and write these types through aya's map wrappers.
//!
//! The data plane is Katran-shaped: the daemon assigns every EIP a dense *slot* and writes
//! `EIP -> slot` into a preallocated hash ([`MAP_EIP_SLOTS`]); the programs count into a per-CPU
//! array indexed by slot ([`MAP_EIP_COUNTERS`]). Nothing is ever evicted and no packet has to
//! insert anything, so no first packet can be lost to a lookup-then-insert race.
//!
//! Enforcement hangs off the same slot: [`MAP_EIP_POLICY`] says whether the EIP is active or
//! blocked and which bucket pair caps it; the bucket pairs live in [`MAP_BUCKET_CONFIG`] (written
//! by the daemon only) and [`MAP_BUCKET_STATE`] (written by the programs only, with atomics).
//! An EIP's own buckets sit at its slot's index; a shared-bandwidth group's at
//! `capacity + group index`.
#![no_std]

/// Version of the pinned-object layout. Every change to a map's key, value or meaning must bump
/// it: aya reuses an existing pinned map without checking its layout, so a new layout must never
/// find an old pin under the same path.
pub const PIN_LAYOUT_VERSION: &str = "v2";

/// `EIP -> slot` hash, filled by the daemon. Key [`EipKey`], value `u32` slot.
pub const MAP_EIP_SLOTS: &str = "EIP_SLOTS";
/// Per-CPU [`TrafficCounters`] indexed by slot.
pub const MAP_EIP_COUNTERS: &str = "EIP_COUNTERS";
/// Per-CPU [`TrafficCounters`] with one entry: traffic on the hooks whose address is no EIP.
pub const MAP_NON_EIP_COUNTERS: &str = "NON_EIP_COUNTERS";

/// [`EipPolicy`] by slot, written by the daemon.
pub const MAP_EIP_POLICY: &str = "EIP_POLICY";
/// [`DropCounters`] by slot (shared across CPUs, added to atomically: drops are the rare path).
pub const MAP_EIP_DROPS: &str = "EIP_DROPS";
/// [`BucketPairConfig`] by bucket pair, written by the daemon.
pub const MAP_BUCKET_CONFIG: &str = "BUCKET_CONFIG";
/// [`BucketPairState`] by bucket pair, written by the programs with compare-and-swap.
pub const MAP_BUCKET_STATE: &str = "BUCKET_STATE";

/// TC program on the uplink's ingress: counts traffic *towards* an EIP (destination address).
pub const PROG_INGRESS: &str = "eip_ingress";
/// TC program on the uplink's egress: counts traffic *from* an EIP (source address).
pub const PROG_EGRESS: &str = "eip_egress";
/// A classifier that only returns: never attached, the floor of the per-packet benchmark (the
/// cost of the harness and the program call itself).
pub const PROG_FLOOR: &str = "eip_floor";

/// Slots compiled into the object; the daemon overrides it at load time with the configured
/// capacity (`EbpfLoader::set_max_entries`).
pub const DEFAULT_CAPACITY: u32 = 65_536;

/// An EIP as a 16-byte address in network byte order. IPv4 addresses are stored IPv4-mapped
/// (`::ffff:a.b.c.d`) so IPv4 and IPv6 EIPs live in one hash.
///
/// Held as four `u32` words (each the raw network-order bytes) because that is how the program
/// loads them from the packet, without byte swapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EipKey {
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<EipKey>() == 16);

/// The third word of an IPv4-mapped address (`0000:ffff` in network byte order), as it reads
/// from memory on a little-endian host.
pub const IPV4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl EipKey {
    /// Key for an IPv4 address given as its raw network-order word (as loaded from a header).
    #[inline(always)]
    pub const fn from_ipv4_raw(addr: u32) -> Self {
        Self {
            addr: [0, 0, IPV4_MAPPED_WORD, addr],
        }
    }

    /// Key for an IPv6 address given as four raw network-order words.
    #[inline(always)]
    pub const fn from_ipv6_raw(addr: [u32; 4]) -> Self {
        Self { addr }
    }

    /// Key from the 16 octets of an IPv6 (or IPv4-mapped) address.
    pub const fn from_octets(o: [u8; 16]) -> Self {
        Self {
            addr: [
                u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
                u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
                u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
                u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
            ],
        }
    }

    /// The 16 octets of the address (IPv4 comes back IPv4-mapped).
    pub const fn octets(&self) -> [u8; 16] {
        let [a, b, c, d] = self.addr;
        let (a, b, c, d) = (
            a.to_ne_bytes(),
            b.to_ne_bytes(),
            c.to_ne_bytes(),
            d.to_ne_bytes(),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }
}

/// Bytes and packets in one direction.
///
/// Unit: IP-layer bytes (IP header + payload, no link-layer framing), counted per segment as it
/// leaves or would leave on the wire: a GSO/GRO super-packet of N segments counts N packets and
/// N copies of its IP and transport headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    pub bytes: u64,
    pub packets: u64,
}
const _: () = assert!(core::mem::size_of::<DirectionCounters>() == 16);

impl DirectionCounters {
    /// Adds another reading (used to sum the per-CPU copies).
    pub const fn plus(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.wrapping_add(other.bytes),
            packets: self.packets.wrapping_add(other.packets),
        }
    }
}

/// Per-slot counters. Inbound = towards the EIP (ingress of the uplink); outbound = from the EIP
/// (egress of the uplink). Monotonic for the life of the slot: user space takes deltas.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub inbound: DirectionCounters,
    pub outbound: DirectionCounters,
}
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 32);

impl TrafficCounters {
    /// Adds another reading (used to sum the per-CPU copies).
    pub const fn plus(self, other: Self) -> Self {
        Self {
            inbound: self.inbound.plus(other.inbound),
            outbound: self.outbound.plus(other.outbound),
        }
    }
}

/// [`EipPolicy::state`]: the EIP gets service.
pub const STATE_ACTIVE: u32 = 0;
/// [`EipPolicy::state`] values at or above this one block the EIP (both directions dropped);
/// the value says why, for the operator (the kernel treats them all alike).
pub const STATE_BLOCKED_EXPIRED: u32 = 1;
pub const STATE_BLOCKED_ARREARS: u32 = 2;
pub const STATE_BLOCKED_FROZEN: u32 = 3;
/// [`EipPolicy::bucket`] of an EIP without a cap.
pub const NO_BUCKET: u32 = u32::MAX;
/// [`EipPolicy::flags`]: mark ECN-capable packets CE once the backlog passes `mark_ns`.
pub const POLICY_FLAG_ECN: u32 = 1;

/// What the programs do with an EIP's packets, by slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EipPolicy {
    /// [`STATE_ACTIVE`] or one of the `STATE_BLOCKED_*` reasons.
    pub state: u32,
    /// Index into the bucket maps, or [`NO_BUCKET`].
    pub bucket: u32,
    /// `POLICY_FLAG_*` bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EipPolicy>() == 16);

impl Default for EipPolicy {
    fn default() -> Self {
        Self {
            state: STATE_ACTIVE,
            bucket: NO_BUCKET,
            flags: 0,
            _pad: 0,
        }
    }
}

/// One direction's cap, as a GCRA (virtual-scheduling token bucket) in nanoseconds.
///
/// A packet of `b` bytes costs `b * 8e9 / rate_bps` ns. The bucket's state is its *theoretical
/// arrival time* `tat`; `backlog = max(tat, now) - now` is how far the EIP has run ahead of its
/// rate. A packet passes while `backlog <= burst_ns` (then `tat = max(tat, now) + cost`), which
/// is a token bucket `burst_ns * rate` bytes deep that never starves a large packet. Above
/// `mark_ns` an ECN-capable packet is passed with CE set, so its sender slows down before the
/// bucket runs dry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketConfig {
    /// Cap in bit/s at the IP layer; 0 = no cap in this direction.
    pub rate_bps: u64,
    pub burst_ns: u64,
    pub mark_ns: u64,
    pub _reserved: u64,
}
const _: () = assert!(core::mem::size_of::<BucketConfig>() == 32);

/// Inbound and outbound caps of one bucket pair (an EIP's own, or a group's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketPairConfig {
    pub inbound: BucketConfig,
    pub outbound: BucketConfig,
}
const _: () = assert!(core::mem::size_of::<BucketPairConfig>() == 64);

/// A bucket's moving part, updated by the programs with atomic compare-and-swap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    /// Theoretical arrival time, `bpf_ktime_get_ns` clock.
    pub tat: u64,
}
const _: () = assert!(core::mem::size_of::<BucketState>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketPairState {
    pub inbound: BucketState,
    pub outbound: BucketState,
}
const _: () = assert!(core::mem::size_of::<BucketPairState>() == 16);

/// Traffic the programs did not deliver (or delivered marked), one direction.
/// Same unit as [`DirectionCounters`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionDrops {
    /// Dropped over the cap.
    pub rate_limited_packets: u64,
    pub rate_limited_bytes: u64,
    /// Dropped because the EIP is blocked.
    pub blocked_packets: u64,
    pub blocked_bytes: u64,
    /// Delivered with CE set because the EIP neared its cap.
    pub ecn_marked_packets: u64,
    pub ecn_marked_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<DirectionDrops>() == 48);

impl DirectionDrops {
    pub const fn plus(self, o: Self) -> Self {
        Self {
            rate_limited_packets: self
                .rate_limited_packets
                .wrapping_add(o.rate_limited_packets),
            rate_limited_bytes: self.rate_limited_bytes.wrapping_add(o.rate_limited_bytes),
            blocked_packets: self.blocked_packets.wrapping_add(o.blocked_packets),
            blocked_bytes: self.blocked_bytes.wrapping_add(o.blocked_bytes),
            ecn_marked_packets: self.ecn_marked_packets.wrapping_add(o.ecn_marked_packets),
            ecn_marked_bytes: self.ecn_marked_bytes.wrapping_add(o.ecn_marked_bytes),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub inbound: DirectionDrops,
    pub outbound: DirectionDrops,
}
const _: () = assert!(core::mem::size_of::<DropCounters>() == 96);

#[cfg(feature = "user")]
mod user {
    // SAFETY: every type below is #[repr(C)], made only of integers, with no padding (sizes asserted
    // above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::EipKey {}
    unsafe impl aya::Pod for super::DirectionCounters {}
    unsafe impl aya::Pod for super::TrafficCounters {}
    unsafe impl aya::Pod for super::EipPolicy {}
    unsafe impl aya::Pod for super::BucketPairConfig {}
    unsafe impl aya::Pod for super::BucketPairState {}
    unsafe impl aya::Pod for super::DropCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_key_is_ipv4_mapped_in_network_order() {
        // 203.0.113.10 as loaded raw from a header: the octets in memory order.
        let raw = u32::from_ne_bytes([203, 0, 113, 10]);
        let key = EipKey::from_ipv4_raw(raw);
        assert_eq!(
            key.octets(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 10]
        );
    }

    #[test]
    fn octets_round_trip() {
        let o = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        assert_eq!(EipKey::from_octets(o).octets(), o);
    }

    #[test]
    fn counters_add() {
        let a = TrafficCounters {
            inbound: DirectionCounters {
                bytes: 10,
                packets: 1,
            },
            outbound: DirectionCounters {
                bytes: 20,
                packets: 2,
            },
        };
        let s = a.plus(a);
        assert_eq!(s.inbound.bytes, 20);
        assert_eq!(s.outbound.packets, 4);
    }
}
