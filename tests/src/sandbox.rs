//! Runs a command under the sandbox a systemd unit declares, without systemd.
//!
//! Tests cannot start systemd as PID 1 here, so this applies the unit's file-system and
//! privilege directives itself, with the same kernel mechanisms systemd uses, in the child
//! between fork and exec:
//!
//! | directive                    | how                                                          |
//! |------------------------------|--------------------------------------------------------------|
//! | `ProtectSystem=strict`       | private mount namespace, every mount read-only (`mount_setattr`, recursive), `/dev`, `/proc`, `/sys` writable again |
//! | `ProtectKernelTunables=yes`  | `/sys` and `/proc/sys` read-only again                        |
//! | `ReadWritePaths=`            | those mounts writable again                                   |
//! | `StateDirectory=`            | `/var/lib/<name>` bound to a private directory, writable      |
//! | `RuntimeDirectory=`          | `/run/<name>` bound to a private directory, writable          |
//! | `PrivateTmp=yes`             | fresh tmpfs on `/tmp` and `/var/tmp`                          |
//! | `ProtectHome=yes`            | empty read-only tmpfs on `/home`, `/root`, `/run/user`        |
//! | `CapabilityBoundingSet=`     | every other capability dropped from the bounding set          |
//! | `NoNewPrivileges=yes`        | `PR_SET_NO_NEW_PRIVS`                                         |
//! | `UMask=`                     | `umask`                                                       |
//! | `Environment=`               | the environment of the command                                |
//!
//! Directives it does not emulate (seccomp and cgroup based: `SystemCallArchitectures`,
//! `RestrictAddressFamilies`, `SocketBind*`, `MemoryDenyWriteExecute`, `Restrict*`,
//! `Protect{KernelModules,KernelLogs,ControlGroups,Clock,Hostname}`, `PrivateDevices`,
//! `LockPersonality`) are listed by [`NOT_EMULATED`]; `systemd-analyze verify` and `security`
//! check those. A directive in neither list fails the test, so a new one must be classified.

use std::{
    collections::HashMap,
    ffi::CString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

/// `[Service]` directives applied by [`Sandbox::apply`].
pub const EMULATED: &[&str] = &[
    "ProtectSystem",
    "ProtectKernelTunables",
    "ReadWritePaths",
    "StateDirectory",
    "StateDirectoryMode",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "PrivateTmp",
    "ProtectHome",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "NoNewPrivileges",
    "UMask",
    "Environment",
];

/// `[Service]` directives this emulation leaves to systemd (see the module docs).
pub const NOT_EMULATED: &[&str] = &[
    "Type",
    "ExecStartPre",
    "ExecStart",
    "ExecReload",
    "Restart",
    "RestartSec",
    "LimitMEMLOCK",
    "PrivateDevices",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "RestrictAddressFamilies",
    "SocketBindAllow",
    "SocketBindDeny",
];

/// A unit file's `[Service]` section: directive -> values in order.
pub struct Unit(HashMap<String, Vec<String>>);

impl Unit {
    pub fn parse(text: &str) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            if !in_service || line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                map.entry(k.trim().to_owned())
                    .or_default()
                    .push(v.trim().to_owned());
            }
        }
        Self(map)
    }

    pub fn values(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn one(&self, key: &str) -> Option<&str> {
        self.values(key).last().map(String::as_str)
    }

    /// Directives in the unit that neither list classifies.
    pub fn unclassified(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .0
            .keys()
            .map(String::as_str)
            .filter(|k| !EMULATED.contains(k) && !NOT_EMULATED.contains(k))
            .collect();
        keys.sort_unstable();
        keys
    }
}

/// Capability names the kernel knows, by number (`CAP_LAST_CAP` is 40 on 6.x).
const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What the child does before exec, prepared in the parent (the child only makes syscalls).
pub struct Sandbox {
    /// Bind `source` onto `target` (both must exist), in order.
    binds: Vec<(CString, CString)>,
    /// Mounts made writable again after the whole tree went read-only.
    writable: Vec<CString>,
    /// Mounts made read-only again (recursively) after that.
    read_only: Vec<CString>,
    /// Fresh tmpfs mounts (`PrivateTmp`), and read-only empty ones (`ProtectHome`).
    tmpfs: Vec<CString>,
    hidden: Vec<CString>,
    keep_caps: Vec<u64>,
    no_new_privs: bool,
    umask: Option<u32>,
    strict: bool,
}

impl Sandbox {
    /// The sandbox `unit` declares. `state_source` backs `StateDirectory=` (the unit's
    /// `/var/lib/<name>` is bound to it); `extra_binds` are `(source, target)` pairs bound
    /// first (the binary and config at the paths the unit names).
    pub fn for_unit(
        unit: &Unit,
        state_source: Option<&Path>,
        extra_binds: &[(PathBuf, PathBuf)],
    ) -> Result<Self> {
        let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).context("path");
        let mut binds = Vec::new();
        for (s, t) in extra_binds {
            binds.push((c(s)?, c(t)?));
        }
        let mut writable = Vec::new();
        if let Some(name) = unit.one("StateDirectory") {
            let source = state_source.context("the unit has a StateDirectory: give its source")?;
            let target = Path::new("/var/lib").join(name);
            ensure!(
                target.is_dir(),
                "{} must exist as a mount point",
                target.display()
            );
            binds.push((c(source)?, c(&target)?));
            writable.push(c(&target)?);
        }
        if let Some(name) = unit.one("RuntimeDirectory") {
            // A private directory beside the state's, as systemd creates one per start.
            let base = state_source
                .and_then(Path::parent)
                .context("the unit has a RuntimeDirectory: give a state source to put it beside")?;
            let source = base.join(format!("run-{name}"));
            std::fs::create_dir_all(&source)?;
            let target = Path::new("/run").join(name);
            ensure!(
                target.is_dir(),
                "{} must exist as a mount point",
                target.display()
            );
            binds.push((c(&source)?, c(&target)?));
            writable.push(c(&target)?);
        }
        let strict = match unit.one("ProtectSystem") {
            Some("strict") => true,
            None | Some("no") => false,
            Some(other) => bail!("ProtectSystem={other} is not emulated"),
        };
        let mut read_only = Vec::new();
        if strict {
            for api in ["/dev", "/proc", "/sys"] {
                writable.insert(0, CString::new(api)?);
            }
        }
        if unit.one("ProtectKernelTunables") == Some("yes") {
            read_only.push(CString::new("/sys")?);
            read_only.push(CString::new("/proc/sys")?);
        }
        for paths in unit.values("ReadWritePaths") {
            for p in paths.split_whitespace() {
                writable.push(CString::new(p)?);
            }
        }
        let tmpfs = if unit.one("PrivateTmp") == Some("yes") {
            vec![CString::new("/tmp")?, CString::new("/var/tmp")?]
        } else {
            Vec::new()
        };
        let hidden = if unit.one("ProtectHome") == Some("yes") {
            ["/home", "/root", "/run/user"]
                .iter()
                .filter(|p| Path::new(p).is_dir())
                .map(|p| CString::new(*p))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let keep_caps = match unit.one("CapabilityBoundingSet") {
            Some(list) => list
                .split_whitespace()
                .map(|name| {
                    CAPABILITIES
                        .iter()
                        .position(|c| c == &name)
                        .map(|i| i as u64)
                        .with_context(|| format!("unknown capability {name}"))
                })
                .collect::<Result<_>>()?,
            None => (0..CAPABILITIES.len() as u64).collect(),
        };
        let umask = unit
            .one("UMask")
            .map(|m| u32::from_str_radix(m, 8))
            .transpose()?;
        Ok(Self {
            binds,
            writable,
            read_only,
            tmpfs,
            hidden,
            keep_caps,
            no_new_privs: unit.one("NoNewPrivileges") == Some("yes"),
            umask,
            strict,
        })
    }

    /// Makes `cmd` apply the sandbox in its child, after any earlier `pre_exec` (such as
    /// entering a network namespace).
    pub fn apply(self, cmd: &mut Command) {
        // SAFETY: the closure makes only syscalls with data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || self.enter());
        }
    }

    fn enter(&self) -> std::io::Result<()> {
        use std::io::Error;
        let check = |ret: libc::c_int| {
            if ret < 0 {
                Err(Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: plain syscalls on NUL-terminated strings that outlive them.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            let root = c"/";
            check(libc::mount(
                none,
                root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (source, target) in &self.binds {
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            let tmpfs = c"tmpfs";
            for t in &self.tmpfs {
                check(libc::mount(
                    tmpfs.as_ptr(),
                    t.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ))?;
            }
            for h in &self.hidden {
                check(libc::mount(
                    tmpfs.as_ptr(),
                    h.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
            if self.strict {
                set_read_only(root, true)?;
                for t in &self.tmpfs {
                    set_read_only_one(t, false)?;
                }
            }
            for w in &self.writable {
                set_read_only(w, false)?;
            }
            for r in &self.read_only {
                set_read_only(r, true)?;
            }
            // ReadWritePaths below a tree made read-only again win (as with systemd).
            for w in &self.writable {
                let below = self.read_only.iter().any(|r| {
                    w.as_bytes().starts_with(r.as_bytes()) && w.as_bytes() != r.as_bytes()
                });
                if below {
                    set_read_only(w, false)?;
                }
            }
            for cap in 0..CAPABILITIES.len() as u64 {
                if !self.keep_caps.contains(&cap) {
                    check(libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0))?;
                }
            }
            if self.no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            if let Some(m) = self.umask {
                libc::umask(m as libc::mode_t);
            }
        }
        Ok(())
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

fn mount_setattr(
    path: &std::ffi::CStr,
    read_only: bool,
    flags: libc::c_uint,
) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if read_only { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` and `path` outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets or clears read-only on `path` and every mount below it. A path that is not a mount
/// is bound onto itself first (as systemd does), since mount flags belong to mounts.
fn set_read_only(path: &std::ffi::CStr, read_only: bool) -> std::io::Result<()> {
    if path.to_bytes() != b"/" {
        // SAFETY: NUL-terminated path, no data argument.
        let ret = unsafe {
            libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    mount_setattr(path, read_only, AT_RECURSIVE)
}

fn set_read_only_one(path: &std::ffi::CStr, read_only: bool) -> std::io::Result<()> {
    mount_setattr(path, read_only, 0)
}
