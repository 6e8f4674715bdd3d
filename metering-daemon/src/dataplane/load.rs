//! Loading the eBPF object: the pinned maps (created, or reused with their capacity checked),
//! the bpffs mount, and shutting down as `on_exit` says.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{EbpfLoader, maps::MapInfo, programs::SchedClassifier};
use metering_common::{
    MAP_BUCKET_CONFIG, MAP_BUCKET_STATE, MAP_EIP_COUNTERS, MAP_EIP_DROPS, MAP_EIP_POLICY,
    MAP_EIP_SLOTS, MAP_NON_EIP_COUNTERS,
};
use tracing::{info, warn};

use super::{Dataplane, DataplaneError, links::Uplinks, map_err, maps::GroupBuckets};
use crate::{
    config::{DataplaneConfig, OnExit},
    slots::SlotTable,
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

impl Dataplane {
    /// Loads the object, creating or reusing the pinned maps, and rebuilds the slot table from
    /// whatever EIPs a previous daemon left in them. Programs are not attached yet.
    pub fn load(config: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let pin_dir = config.pin_dir();
        ensure_bpffs(&config.bpffs_root)?;
        // Owner only: the pins are the counters and caps themselves (each pin is 0600 too).
        {
            use std::os::unix::fs::DirBuilderExt as _;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&pin_dir)
                .map_err(|source| DataplaneError::PinDir {
                    path: pin_dir.clone(),
                    source,
                })?;
        }

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
            written: Default::default(),
            uplinks: Uplinks::new(config),
            reused,
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

    /// `program`, loaded into the kernel (once) and ready to attach or run.
    pub(super) fn loaded_program(
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
}

pub(super) fn remove_pin(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        warn!(pin = %path.display(), error = %e, "pin not removed");
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
