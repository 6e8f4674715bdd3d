//! The one module that talks to the kernel: loads the eBPF object, pins its maps, attaches the
//! programs, and keeps the `EIP -> slot` hash in step with the inventory.
//!
//! Pinned layout (`<bpffs_root>/<layout version>/<instance>/`):
//!
//! | file                    | what                                               |
//! |-------------------------|----------------------------------------------------|
//! | `EIP_SLOTS`             | `EIP -> slot` hash                                 |
//! | `EIP_COUNTERS`          | per-CPU counters by slot                           |
//! | `NON_EIP_COUNTERS`      | per-CPU counters of traffic to/from non-EIPs       |
//! | `EIP_POLICY`            | state and bucket pair by slot                      |
//! | `EIP_DROPS`             | drop and ECN-mark counters by slot                 |
//! | `BUCKET_CONFIG`         | caps by bucket pair (slots, then groups)           |
//! | `BUCKET_STATE`          | GCRA state by bucket pair (written by programs)    |
//! | `link_<if>_<direction>` | TCX link (only with `on_exit = "keep"`)            |
//!
//! Maps are always pinned so `eip-meter counters` can read them from another process; links are
//! pinned only when they must outlive the daemon.
//!
//! | file          | job                                                                   |
//! |---------------|-----------------------------------------------------------------------|
//! | `load.rs`     | load the object, create or reuse the pinned maps, shut down            |
//! | `links/`      | attach the programs, take over pinned links, follow uplinks (netlink) |
//! | `maps.rs`     | publish and withdraw EIPs, write policies and caps, read counters      |
//! | `batch.rs`    | `BPF_MAP_LOOKUP_BATCH` of the per-CPU counters                         |
//! | `writes.rs`   | an apply's writes, flushed map by map with `BPF_MAP_UPDATE_BATCH`      |
//! | `pinned.rs`   | read-only view of the pins from another process (`eip-meter counters`) |
//! | `testrun.rs`  | `BPF_PROG_TEST_RUN` and the kernel's run-time statistics               |

mod batch;
pub mod links;
mod load;
mod maps;
mod pinned;
mod testrun;
mod writes;

use std::{
    io,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{Ebpf, maps::MapError};
use metering_common::{BucketPairConfig, DropCounters, EipKey, TrafficCounters};

pub use batch::BATCH_SLOTS;
pub use links::{LossCause, UplinkEvent, UplinkState, UplinkStatus};
pub use pinned::PinnedMaps;

use crate::{
    config::{DataplaneConfig, EipState},
    slots::{SlotError, SlotTable},
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "{path} is not on a bpf filesystem (mount one with `mount -t bpf bpf {path}` or set dataplane.bpffs_root)"
    )]
    NotBpffs { path: PathBuf },
    #[error("cannot create pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "pinned maps in {pin_dir} were created with capacity {pinned}, config says {configured}; stop the daemon with on_exit = \"detach\" (or remove the directory) to resize"
    )]
    CapacityMismatch {
        pin_dir: PathBuf,
        pinned: u32,
        configured: u32,
    },
    #[error("map {map}: {op}: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        source: MapError,
    },
    #[error("map {map}: batch {op}: {source}")]
    Batch {
        map: &'static str,
        op: &'static str,
        source: io::Error,
    },
    #[error("program {program}: {op}: {source}")]
    Program {
        program: &'static str,
        op: String,
        source: aya::programs::ProgramError,
    },
    #[error("link {path}: {op}: {source}")]
    Link {
        path: PathBuf,
        op: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "pinned maps in {pin_dir} were created with group capacity {pinned}, config says {configured}; stop the daemon with on_exit = \"detach\" (or remove the directory) to resize"
    )]
    GroupCapacityMismatch {
        pin_dir: PathBuf,
        pinned: u32,
        configured: u32,
    },
    #[error(
        "all {capacity} group buckets are in use; raise dataplane.group_capacity (needs a restart with on_exit = \"detach\")"
    )]
    GroupsFull { capacity: u32 },
    #[error(transparent)]
    Slots(#[from] SlotError),
    #[error("cannot size per-CPU values to this host's CPUs: {0}")]
    Cpus(io::Error),
    #[error("uplink {interface}: {op}: {source}")]
    Netlink {
        interface: String,
        op: &'static str,
        source: io::Error,
    },
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, op, source }
}

/// Converts an address to the kernel's key (IPv4 as IPv4-mapped).
pub fn key_of(addr: IpAddr) -> EipKey {
    let v6 = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    EipKey::from_octets(v6.octets())
}

/// Converts a kernel key back to an address (IPv4-mapped comes back as IPv4).
pub fn addr_of(key: &EipKey) -> IpAddr {
    crate::addr::normalize(IpAddr::V6(Ipv6Addr::from(key.octets())))
}
/// The loaded data plane. Dropping it without [`Dataplane::shutdown`] leaves pins behind, as a
/// crash would.
pub struct Dataplane {
    ebpf: Ebpf,
    config: DataplaneConfig,
    pin_dir: PathBuf,
    slots: SlotTable,
    groups: maps::GroupBuckets,
    /// What this process last wrote per EIP, so a reload touches only what changed.
    written: writes::WrittenPolicies,
    /// The configured uplinks and what is attached to each.
    uplinks: links::Uplinks,
    /// Whether the maps were left pinned by an earlier daemon (`on_exit = "keep"` or a crash).
    reused: bool,
    nr_cpus: usize,
}

/// What [`Dataplane::apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub removed: Vec<(IpAddr, TrafficCounters, DropCounters)>,
    /// EIPs whose state, caps or group changed.
    pub changed: usize,
    pub groups_added: usize,
    pub groups_removed: usize,
}

/// Cumulative run-time statistics of one program, from [`Dataplane::program_run_stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramRunStats {
    pub program: &'static str,
    pub run_time: std::time::Duration,
    pub run_count: u64,
}

/// Policy and drops of one provisioned EIP as the kernel holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EipEnforcement {
    pub state: Option<EipState>,
    /// Bucket pair in use, own or a group's (None: uncapped).
    pub caps: Option<BucketPairConfig>,
    pub drops: DropCounters,
}

impl Dataplane {
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn slots(&self) -> &SlotTable {
        &self.slots
    }

    /// Whether the maps were left pinned by an earlier daemon, whose counts they carry on.
    pub fn reused_pins(&self) -> bool {
        self.reused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_both_families() {
        for s in ["203.0.113.10", "2001:db8::10", "198.51.100.255"] {
            let a: IpAddr = s.parse().unwrap();
            assert_eq!(addr_of(&key_of(a)), a);
        }
    }
}
