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
    EipKey, MAP_EIP_COUNTERS, MAP_EIP_SLOTS, MAP_NON_EIP_COUNTERS, PROG_EGRESS, PROG_INGRESS,
    TrafficCounters,
};
use tracing::{debug, info, warn};

use crate::{
    config::{AttachMode, DataplaneConfig, OnExit},
    slots::{SlotError, SlotTable},
};

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
    links: Vec<AttachedLink>,
    nr_cpus: usize,
}

/// What [`Dataplane::apply_inventory`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub removed: Vec<(IpAddr, TrafficCounters)>,
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

        let pins: Vec<(&'static str, PathBuf)> =
            [MAP_EIP_SLOTS, MAP_EIP_COUNTERS, MAP_NON_EIP_COUNTERS]
                .into_iter()
                .map(|name| (name, pin_dir.join(name)))
                .collect();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(MAP_EIP_SLOTS, config.capacity)
            .map_max_entries(MAP_EIP_COUNTERS, config.capacity);
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
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .expect("program is in the object")
            .try_into()
            .map_err(prog_err("type".into()))?;
        if prog.fd().is_err() {
            prog.load().map_err(prog_err("load".into()))?;
        }
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

    /// Makes the kernel's EIP set equal to `desired`: removes first (freeing slots), then adds.
    /// Every EIP that is in both is untouched, so its counting never pauses.
    pub fn apply_inventory(&mut self, desired: &[IpAddr]) -> Result<ApplyReport, DataplaneError> {
        let plan = self.slots.plan(desired);
        let mut report = ApplyReport::default();
        for addr in plan.remove {
            let last = self.remove_eip(addr)?;
            report.removed.push((addr, last));
        }
        for addr in plan.add {
            self.add_eip(addr)?;
            report.added += 1;
        }
        Ok(report)
    }

    /// Publishes `addr` to the kernel. Its slot is zeroed *before* the hash entry exists, so the
    /// first packet that finds the entry counts from zero and none is lost.
    pub fn add_eip(&mut self, addr: IpAddr) -> Result<u32, DataplaneError> {
        let assignment = self.slots.assign(addr)?;
        let result = self.publish(addr, assignment.slot, assignment.needs_zeroing);
        if result.is_err() {
            self.slots.release(&addr);
        }
        result.map(|()| assignment.slot)
    }

    fn publish(&mut self, addr: IpAddr, slot: u32, zero: bool) -> Result<(), DataplaneError> {
        if zero {
            let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); self.nr_cpus])
                .map_err(DataplaneError::Cpus)?;
            let mut counters = self.counters_map_mut()?;
            counters
                .set(slot, zeros, 0)
                .map_err(map_err(MAP_EIP_COUNTERS, "zero slot"))?;
        }
        let mut slots = self.slot_map_mut()?;
        const BPF_NOEXIST: u64 = 1;
        slots
            .insert(key_of(addr), slot, BPF_NOEXIST)
            .map_err(map_err(MAP_EIP_SLOTS, "insert EIP"))
    }

    /// Withdraws `addr` from the kernel and returns its final counters. The slot is freed to the
    /// back of the reuse queue, so stragglers that looked it up just before can still land.
    pub fn remove_eip(&mut self, addr: IpAddr) -> Result<TrafficCounters, DataplaneError> {
        let Some(slot) = self.slots.slot(&addr) else {
            return Ok(TrafficCounters::default());
        };
        self.slot_map_mut()?
            .remove(&key_of(addr))
            .map_err(map_err(MAP_EIP_SLOTS, "remove EIP"))?;
        self.slots.release(&addr);
        let last = read_slot(&self.counters_map()?, slot)?;
        info!(%addr, slot, inbound_bytes = last.inbound.bytes, outbound_bytes = last.outbound.bytes, "EIP removed");
        Ok(last)
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

    /// Stops the data plane as configured: `detach` removes links and pins, `keep` leaves both.
    pub fn shutdown(self) -> Result<(), DataplaneError> {
        match self.config.on_exit {
            OnExit::Keep => {
                info!(pin_dir = %self.pin_dir.display(), "leaving programs attached and maps pinned");
                Ok(())
            }
            OnExit::Detach => {
                for link in self.links {
                    if let AttachedLink::Tcx { pin: Some(pin), .. } = &link {
                        remove_pin(pin);
                    }
                    drop(link);
                }
                for name in [MAP_EIP_SLOTS, MAP_EIP_COUNTERS, MAP_NON_EIP_COUNTERS] {
                    remove_pin(&self.pin_dir.join(name));
                }
                if let Err(e) = fs::remove_dir(&self.pin_dir) {
                    warn!(pin_dir = %self.pin_dir.display(), error = %e, "pin directory not removed");
                }
                info!("programs detached, pins removed");
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
/// (kernel >= 5.6): 1,000,000 slots in ~120 syscalls instead of 1,000,000. aya 0.14 has no
/// wrapper for batch operations, hence the raw syscall.
fn read_all_slots(
    map: &MapData,
    capacity: u32,
    nr_cpus: usize,
) -> io::Result<Vec<TrafficCounters>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const VALUE: usize = std::mem::size_of::<TrafficCounters>(); // a multiple of 8: no padding
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = vec![TrafficCounters::default(); capacity as usize];
    let mut keys = vec![0u32; BATCH_SLOTS as usize];
    let mut values = vec![0u8; BATCH_SLOTS as usize * nr_cpus * VALUE];
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u32 as u64
            },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH_SLOTS,
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
        let done = if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err);
            }
            true
        } else {
            false
        };
        for (i, &slot) in keys.iter().take(attr.count as usize).enumerate() {
            let slot = slot as usize;
            let base = i * nr_cpus * VALUE;
            let sum = (0..nr_cpus).fold(TrafficCounters::default(), |acc, cpu| {
                // SAFETY: in bounds (i < count <= BATCH_SLOTS); TrafficCounters is plain u64s.
                let v: TrafficCounters = unsafe {
                    std::ptr::read_unaligned(values.as_ptr().add(base + cpu * VALUE).cast())
                };
                acc.plus(v)
            });
            if let Some(o) = out.get_mut(slot) {
                *o = sum;
            }
        }
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
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
