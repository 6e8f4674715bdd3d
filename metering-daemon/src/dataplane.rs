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

use std::{
    collections::HashMap as StdHashMap,
    fs, io,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuValues},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
    },
    util::KernelVersion,
};
use metering_common::{
    BucketPairConfig, BucketPairState, DropCounters, EipKey, EipPolicy, MAP_BUCKET_CONFIG,
    MAP_BUCKET_STATE, MAP_EIP_COUNTERS, MAP_EIP_DROPS, MAP_EIP_POLICY, MAP_EIP_SLOTS,
    MAP_NON_EIP_COUNTERS, NO_BUCKET, POLICY_FLAG_ECN, PROG_EGRESS, PROG_INGRESS, TrafficCounters,
};
use tracing::{debug, info, warn};

use crate::{
    config::{AttachMode, DataplaneConfig, EipState, OnExit},
    policy::{Caps, DesiredPolicy, EipPlan},
    slots::{SlotError, SlotTable},
};

/// Every map the object has, in pin order.
const MAPS: [&str; 7] = [
    MAP_EIP_SLOTS,
    MAP_EIP_COUNTERS,
    MAP_NON_EIP_COUNTERS,
    MAP_EIP_POLICY,
    MAP_EIP_DROPS,
    MAP_BUCKET_CONFIG,
    MAP_BUCKET_STATE,
];

/// The compiled eBPF object, built by `build.rs` from the `metering-ebpf` crate.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/metering-ebpf"));

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xcafe_4a11);

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
    crate::config::normalize(IpAddr::V6(Ipv6Addr::from(key.octets())))
}

/// One attached program.
enum AttachedLink {
    /// A TCX link: alive while this fd or its pin exists.
    Tcx {
        #[expect(dead_code, reason = "held for its fd: dropping it releases the link")]
        link: FdLink,
        pin: Option<PathBuf>,
    },
    /// A netlink clsact filter: detached when this is dropped.
    Netlink(
        #[expect(dead_code, reason = "held: dropping it detaches the filter")] SchedClassifierLink,
    ),
}

/// The loaded data plane. Dropping it without [`Dataplane::shutdown`] leaves pins behind, as a
/// crash would.
pub struct Dataplane {
    ebpf: Ebpf,
    config: DataplaneConfig,
    pin_dir: PathBuf,
    slots: SlotTable,
    groups: GroupBuckets,
    /// What this process last wrote per EIP, so a reload touches only what changed.
    written: StdHashMap<IpAddr, (EipPolicy, Option<BucketPairConfig>)>,
    links: Vec<AttachedLink>,
    nr_cpus: usize,
}

/// Group name -> bucket pair index (after the slots' own pairs).
#[derive(Debug)]
struct GroupBuckets {
    by_name: StdHashMap<String, (u32, BucketPairConfig)>,
    free: std::collections::VecDeque<u32>,
}

impl GroupBuckets {
    fn new(base: u32, capacity: u32) -> Self {
        Self {
            by_name: StdHashMap::new(),
            free: (base..base + capacity).collect(),
        }
    }
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
    /// Loads the object, creating or reusing the pinned maps, and rebuilds the slot table from
    /// whatever EIPs a previous daemon left in them. Programs are not attached yet.
    pub fn load(config: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let pin_dir = config.pin_dir();
        ensure_bpffs(&config.bpffs_root)?;
        fs::create_dir_all(&pin_dir).map_err(|source| DataplaneError::PinDir {
            path: pin_dir.clone(),
            source,
        })?;

        let slots_pin = pin_dir.join(MAP_EIP_SLOTS);
        let reused = slots_pin.exists();
        if reused {
            let pinned = MapInfo::from_pin(&slots_pin)
                .map_err(map_err(MAP_EIP_SLOTS, "read pinned map info"))?
                .max_entries();
            if pinned != config.capacity {
                return Err(DataplaneError::CapacityMismatch {
                    pin_dir,
                    pinned,
                    configured: config.capacity,
                });
            }
        }

        let buckets = config.capacity + config.group_capacity;
        let bucket_pin = pin_dir.join(MAP_BUCKET_CONFIG);
        if reused && bucket_pin.exists() {
            let pinned = MapInfo::from_pin(&bucket_pin)
                .map_err(map_err(MAP_BUCKET_CONFIG, "read pinned map info"))?
                .max_entries();
            if pinned != buckets {
                return Err(DataplaneError::GroupCapacityMismatch {
                    pin_dir,
                    pinned: pinned.saturating_sub(config.capacity),
                    configured: config.group_capacity,
                });
            }
        }

        let pins: Vec<(&'static str, PathBuf)> = MAPS
            .into_iter()
            .map(|name| (name, pin_dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(MAP_EIP_SLOTS, config.capacity)
            .map_max_entries(MAP_EIP_COUNTERS, config.capacity)
            .map_max_entries(MAP_EIP_POLICY, config.capacity)
            .map_max_entries(MAP_EIP_DROPS, config.capacity)
            .map_max_entries(MAP_BUCKET_CONFIG, buckets)
            .map_max_entries(MAP_BUCKET_STATE, buckets);
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(EBPF_OBJECT)?;

        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let mut dataplane = Self {
            ebpf,
            config: config.clone(),
            pin_dir,
            slots: SlotTable::new(config.capacity),
            groups: GroupBuckets::new(config.capacity, config.group_capacity),
            written: StdHashMap::new(),
            links: Vec::new(),
            nr_cpus,
        };
        if reused {
            let existing = dataplane.read_slot_map()?;
            info!(pin_dir = %dataplane.pin_dir.display(), eips = existing.len(), "reusing pinned maps");
            dataplane.slots = SlotTable::from_existing(config.capacity, existing)?;
        } else {
            info!(pin_dir = %dataplane.pin_dir.display(), capacity = config.capacity, "created maps");
        }
        Ok(dataplane)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn slots(&self) -> &SlotTable {
        &self.slots
    }

    /// Attaches both programs to every configured interface. A link pinned by an earlier daemon
    /// is taken over and atomically switched to this daemon's program, so counting never stops.
    pub fn attach(&mut self) -> Result<(), DataplaneError> {
        let mode = resolve_mode(self.config.attach_mode);
        let keep = self.config.on_exit == OnExit::Keep;
        for iface in self.config.interfaces.clone() {
            if mode == AttachMode::Netlink {
                // EEXIST is fine: the qdisc may be there already.
                if let Err(e) = tc::qdisc_add_clsact(&iface) {
                    debug!(iface, error = %e, "clsact qdisc not added");
                }
            }
            for (program, attach_type, direction) in [
                (PROG_INGRESS, TcAttachType::Ingress, "ingress"),
                (PROG_EGRESS, TcAttachType::Egress, "egress"),
            ] {
                let pin = self.pin_dir.join(format!("link_{iface}_{direction}"));
                let link = self.attach_one(program, &iface, attach_type, mode, &pin, keep)?;
                info!(iface, direction, mode = ?mode, "attached");
                self.links.push(link);
            }
        }
        Ok(())
    }

    fn attach_one(
        &mut self,
        program: &'static str,
        iface: &str,
        attach_type: TcAttachType,
        mode: AttachMode,
        pin: &Path,
        keep: bool,
    ) -> Result<AttachedLink, DataplaneError> {
        let prog_err = |op: String| {
            move |source| DataplaneError::Program {
                program,
                op,
                source,
            }
        };
        let prog = self.loaded_program(program)?;
        let link_err = |op: &'static str| {
            let path = pin.to_owned();
            move |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Link {
                path,
                op,
                source: e,
            }
        };

        if mode == AttachMode::Netlink {
            let id = prog
                .attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(prog_err(format!("attach to {iface} via netlink")))?;
            let link = prog.take_link(id).map_err(prog_err("take link".into()))?;
            return Ok(AttachedLink::Netlink(link));
        }

        let id = match PinnedLink::from_pin(pin) {
            Ok(pinned) => {
                // The pin file stays; the kernel link object is updated in place.
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|e| link_err("adopt pinned link")(Box::new(e)))?;
                info!(pin = %pin.display(), "taking over pinned link");
                prog.attach_to_link(link)
                    .map_err(prog_err(format!("replace program in link on {iface}")))?
            }
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => prog
                .attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(prog_err(format!("attach to {iface} via TCX")))?,
            Err(e) => return Err(link_err("open pinned link")(Box::new(e))),
        };
        let link = prog.take_link(id).map_err(prog_err("take link".into()))?;
        let link = FdLink::try_from(link).map_err(|e| link_err("convert link")(Box::new(e)))?;
        let pinned_already = pin.exists();
        if keep && !pinned_already {
            let pinned = link.pin(pin).map_err(|e| link_err("pin")(Box::new(e)))?;
            return Ok(AttachedLink::Tcx {
                link: FdLink::from(pinned),
                pin: Some(pin.to_owned()),
            });
        }
        Ok(AttachedLink::Tcx {
            link,
            pin: pinned_already.then(|| pin.to_owned()),
        })
    }

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
            match self.groups.by_name.get(name) {
                Some((_, written)) if written == pair => {}
                Some(&(index, _)) => {
                    self.write_bucket(index, pair)?;
                    self.groups.by_name.insert(name.clone(), (index, *pair));
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
                    self.groups.by_name.insert(name.clone(), (index, *pair));
                    report.groups_added += 1;
                }
            }
        }

        let addrs: Vec<IpAddr> = desired.eips.iter().map(|(a, _)| *a).collect();
        let plan = self.slots.plan(&addrs);
        for addr in plan.remove {
            let (last, drops) = self.remove_eip(addr)?;
            report.removed.push((addr, last, drops));
        }
        let adding: std::collections::HashSet<IpAddr> = plan.add.iter().copied().collect();
        for (addr, eip_plan) in &desired.eips {
            if adding.contains(addr) {
                self.add_eip(*addr, eip_plan, desired.ecn)?;
                report.added += 1;
            } else if let Some(slot) = self.slots.slot(addr) {
                let wanted = self.kernel_policy(slot, eip_plan, desired.ecn);
                if self.written.get(addr) != Some(&wanted) {
                    self.write_policy(*addr, slot, wanted)?;
                    report.changed += 1;
                }
            }
        }

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
            if let Some((index, _)) = self.groups.by_name.remove(&name) {
                self.write_bucket(index, &BucketPairConfig::default())?;
                self.groups.free.push_back(index);
                report.groups_removed += 1;
            }
        }
        Ok(report)
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

    /// Writes an EIP's own bucket (if any) before the policy that points at it.
    fn write_policy(
        &mut self,
        addr: IpAddr,
        slot: u32,
        (policy, own): (EipPolicy, Option<BucketPairConfig>),
    ) -> Result<(), DataplaneError> {
        if let Some(pair) = &own {
            self.write_bucket(slot, pair)?;
        }
        let mut map = self.array_mut::<EipPolicy>(MAP_EIP_POLICY)?;
        map.set(slot, policy, 0)
            .map_err(map_err(MAP_EIP_POLICY, "write policy"))?;
        self.written.insert(addr, (policy, own));
        Ok(())
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
        let assignment = self.slots.assign(addr)?;
        let result = self.publish(addr, assignment.slot, assignment.needs_zeroing, plan, ecn);
        if result.is_err() {
            self.slots.release(&addr);
            self.written.remove(&addr);
        }
        result.map(|()| assignment.slot)
    }

    fn publish(
        &mut self,
        addr: IpAddr,
        slot: u32,
        zero: bool,
        plan: &EipPlan,
        ecn: bool,
    ) -> Result<(), DataplaneError> {
        if zero {
            let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); self.nr_cpus])
                .map_err(DataplaneError::Cpus)?;
            let mut counters = self.counters_map_mut()?;
            counters
                .set(slot, zeros, 0)
                .map_err(map_err(MAP_EIP_COUNTERS, "zero slot"))?;
            self.array_mut::<DropCounters>(MAP_EIP_DROPS)?
                .set(slot, DropCounters::default(), 0)
                .map_err(map_err(MAP_EIP_DROPS, "zero slot"))?;
            self.reset_bucket_state(slot)?;
        }
        let wanted = self.kernel_policy(slot, plan, ecn);
        self.write_policy(addr, slot, wanted)?;
        let mut slots = self.slot_map_mut()?;
        const BPF_NOEXIST: u64 = 1;
        slots
            .insert(key_of(addr), slot, BPF_NOEXIST)
            .map_err(map_err(MAP_EIP_SLOTS, "insert EIP"))
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
        self.written.remove(&addr);
        let last = read_slot(&self.counters_map()?, slot)?;
        let drops = self
            .array::<DropCounters>(MAP_EIP_DROPS)?
            .get(&slot, 0)
            .map_err(map_err(MAP_EIP_DROPS, "read slot"))?;
        info!(%addr, slot, inbound_bytes = last.inbound.bytes, outbound_bytes = last.outbound.bytes, "EIP removed");
        Ok((last, drops))
    }

    /// Current counters of every provisioned EIP, read in batches (one syscall per
    /// [`BATCH_SLOTS`] slots) where the kernel supports it.
    pub fn read_counters(&self) -> Result<Vec<(IpAddr, TrafficCounters)>, DataplaneError> {
        let Some(Map::PerCpuArray(data)) = self.ebpf.map(MAP_EIP_COUNTERS) else {
            unreachable!("EIP_COUNTERS is a per-CPU array");
        };
        match read_all_slots(data, self.config.capacity, self.nr_cpus) {
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

    /// `program`, loaded into the kernel (once) and ready to attach or run.
    fn loaded_program(
        &mut self,
        program: &'static str,
    ) -> Result<&mut SchedClassifier, DataplaneError> {
        let prog_err = |op: &str| {
            let op = op.to_owned();
            move |source| DataplaneError::Program {
                program,
                op,
                source,
            }
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .expect("program is in the object")
            .try_into()
            .map_err(prog_err("type"))?;
        if prog.fd().is_err() {
            prog.load().map_err(prog_err("load"))?;
        }
        Ok(prog)
    }

    /// Runs `program` on `frame` (an Ethernet frame) `repeat` times in the kernel with
    /// `BPF_PROG_TEST_RUN`, against the live maps; returns the program's return code and the
    /// kernel's average nanoseconds per run. For benchmarks and tests: nothing is sent.
    pub fn test_run(
        &mut self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, u32), DataplaneError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let fd = self
            .loaded_program(program)?
            .fd()
            .map_err(|source| DataplaneError::Program {
                program,
                op: "fd".into(),
                source,
            })?
            .as_fd()
            .as_raw_fd();
        /// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
        #[repr(C)]
        #[derive(Default)]
        struct TestRunAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            _pad: u32,
        }
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        let mut attr = TestRunAttr {
            prog_fd: fd as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: `attr` points at `frame`, which outlives the call; no output buffers are given.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if ret < 0 {
            return Err(DataplaneError::Program {
                program,
                op: "BPF_PROG_TEST_RUN".into(),
                source: aya::programs::ProgramError::IOError(io::Error::last_os_error()),
            });
        }
        Ok((attr.retval, attr.duration))
    }

    /// Time the kernel spent in each program and how often it ran, since it was loaded. The
    /// kernel counts these only while run-time statistics are on (`BPF_ENABLE_STATS`, see
    /// `aya::sys::enable_stats`, or the `kernel.bpf_stats_enabled` sysctl); otherwise they stay
    /// zero.
    pub fn program_run_stats(&mut self) -> Result<Vec<ProgramRunStats>, DataplaneError> {
        [PROG_INGRESS, PROG_EGRESS]
            .into_iter()
            .map(|program| {
                let info = self.loaded_program(program)?.info().map_err(|source| {
                    DataplaneError::Program {
                        program,
                        op: "read info".to_owned(),
                        source,
                    }
                })?;
                Ok(ProgramRunStats {
                    program,
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }

    /// Detaches every program this process attached (and unpins their links), keeping the maps
    /// and what they hold; [`Dataplane::attach`] puts the programs back. Packets in between are
    /// not counted, so the daemon never calls this while it runs: it is for benchmarks that
    /// need a "no program" baseline beside the same provisioned maps.
    pub fn detach(&mut self) {
        for link in self.links.drain(..) {
            if let AttachedLink::Tcx { pin: Some(pin), .. } = &link {
                remove_pin(pin);
            }
            drop(link);
        }
        info!("programs detached");
    }

    /// Stops the data plane as configured: `detach` removes links and pins, `keep` leaves both.
    pub fn shutdown(mut self) -> Result<(), DataplaneError> {
        match self.config.on_exit {
            OnExit::Keep => {
                info!(pin_dir = %self.pin_dir.display(), "leaving programs attached and maps pinned");
                Ok(())
            }
            OnExit::Detach => {
                self.detach();
                for name in MAPS {
                    remove_pin(&self.pin_dir.join(name));
                }
                if let Err(e) = fs::remove_dir(&self.pin_dir) {
                    warn!(pin_dir = %self.pin_dir.display(), error = %e, "pin directory not removed");
                }
                info!("pins removed");
                Ok(())
            }
        }
    }

    fn read_slot_map(&self) -> Result<Vec<(IpAddr, u32)>, DataplaneError> {
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

    fn counters_map_mut(
        &mut self,
    ) -> Result<PerCpuArray<&mut MapData, TrafficCounters>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_EIP_COUNTERS)
            .expect("map is in the object");
        PerCpuArray::try_from(map).map_err(map_err(MAP_EIP_COUNTERS, "open"))
    }
}

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

fn read_slot_entries<T: std::borrow::Borrow<MapData>>(
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

/// Slots read per `BPF_MAP_LOOKUP_BATCH` call.
pub const BATCH_SLOTS: u32 = 65_536;

/// `union bpf_attr` as used by the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every slot of a per-CPU counter array, summed over CPUs, with `BPF_MAP_LOOKUP_BATCH`
/// (kernel >= 5.6): 1,000,000 slots in ~16 syscalls instead of 1,000,000. aya 0.14 has no
/// wrapper for batch operations, hence the raw syscall. Large maps are read in one slice per
/// core at once: the copy out of the kernel is most of a round's read.
fn read_all_slots(
    map: &MapData,
    capacity: u32,
    nr_cpus: usize,
) -> io::Result<Vec<TrafficCounters>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = vec![TrafficCounters::default(); capacity as usize];
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
                scope.spawn(move || read_slot_range(fd, first, part, nr_cpus))
            })
            .collect();
        readers
            .into_iter()
            .try_for_each(|r| r.join().expect("reader thread panicked"))
    })?;
    Ok(out)
}

/// Reads slots `first..first + out.len()` into `out`, summed over CPUs.
fn read_slot_range(
    fd: std::os::fd::RawFd,
    first: u32,
    out: &mut [TrafficCounters],
    nr_cpus: usize,
) -> io::Result<()> {
    const VALUE: usize = std::mem::size_of::<TrafficCounters>(); // a multiple of 8: no padding
    let mut keys = vec![0u32; BATCH_SLOTS as usize];
    let mut values = vec![0u8; BATCH_SLOTS as usize * nr_cpus * VALUE];
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
            let base = i * nr_cpus * VALUE;
            let sum = (0..nr_cpus).fold(TrafficCounters::default(), |acc, cpu| {
                // SAFETY: in bounds (i < count <= BATCH_SLOTS); TrafficCounters is plain u64s.
                let v: TrafficCounters = unsafe {
                    std::ptr::read_unaligned(values.as_ptr().add(base + cpu * VALUE).cast())
                };
                acc.plus(v)
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

/// Sums one slot's per-CPU copies.
fn read_slot<T: std::borrow::Borrow<MapData>>(
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

fn remove_pin(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        warn!(pin = %path.display(), error = %e, "pin not removed");
    }
}

fn resolve_mode(mode: AttachMode) -> AttachMode {
    match mode {
        AttachMode::Auto => {
            let tcx = KernelVersion::current()
                .map(|v| v >= KernelVersion::new(6, 6, 0))
                .unwrap_or(false);
            if tcx {
                AttachMode::Tcx
            } else {
                AttachMode::Netlink
            }
        }
        other => other,
    }
}

/// Where systemd (and most distributions) mount bpffs.
const SYSTEM_BPFFS: &str = "/sys/fs/bpf";

/// The pin directory's nearest existing ancestor must be on bpffs, or pinning fails obscurely.
/// If the root is under `/sys/fs/bpf` and nothing is mounted there yet, mount it (as bpftool
/// and bpfman do): a host without systemd's mount must still work.
fn ensure_bpffs(root: &Path) -> Result<(), DataplaneError> {
    let not_bpffs = || DataplaneError::NotBpffs {
        path: root.to_owned(),
    };
    let is_bpffs = |path: &Path| {
        let mut probe = path;
        while !probe.exists() {
            probe = probe.parent().unwrap_or(Path::new("/"));
        }
        nix::sys::statfs::statfs(probe)
            .map(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    if is_bpffs(root) {
        return Ok(());
    }
    let system = Path::new(SYSTEM_BPFFS);
    if root.starts_with(system) && system.is_dir() && !is_bpffs(system) {
        use nix::mount::{MsFlags, mount};
        mount(
            Some("bpf"),
            system,
            Some("bpf"),
            MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|_| not_bpffs())?;
        info!(path = SYSTEM_BPFFS, "mounted bpffs");
    }
    if is_bpffs(root) {
        Ok(())
    } else {
        Err(not_bpffs())
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
