//! Who can read or change what, tried as a local user without privileges (`nobody`): the pinned
//! maps and links, the state directory, and the files the daemon trusts. And the clear errors
//! when the kernel side cannot be set up (no bpf filesystem).

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::Command,
};

use eip_meter_tests::{outcome, require_root, unique_tag};
use metering_daemon::{
    config::{DataplaneConfig, OnExit},
    dataplane::{Dataplane, DataplaneError},
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

/// Runs `program args` as `nobody` with no supplementary group; (succeeded, output).
fn as_nobody(program: &str, args: &[&str]) -> (bool, String) {
    outcome(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
            .args(args),
    )
}

#[test]
fn an_unprivileged_user_can_neither_read_nor_change_the_pinned_maps() {
    require_root();
    let mut config = DataplaneConfig::with_interfaces(Vec::new());
    config.bpffs_root = "/sys/fs/bpf/eip-meter-test".into();
    config.instance = unique_tag("sec");
    config.on_exit = OnExit::Detach;
    let dp = Dataplane::load(&config).unwrap();
    let pin_dir = dp.pin_dir().to_owned();

    let meta = std::fs::metadata(&pin_dir).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o700, 0), "pin dir");
    let mut pins = 0;
    for entry in std::fs::read_dir(&pin_dir).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{}: mode {mode:o}", entry.path().display());
        pins += 1;
    }
    assert!(pins >= 5, "{pins} pins");

    let counters = pin_dir.join("EIP_COUNTERS");
    let counters = counters.to_str().unwrap();
    // Neither through the file system nor through bpf(2).
    let (listed, out) = as_nobody("ls", &[pin_dir.to_str().unwrap()]);
    assert!(!listed, "nobody listed the pins: {out}");
    let (read, out) = as_nobody("bpftool", &["map", "dump", "pinned", counters]);
    assert!(!read, "nobody read the counters: {out}");
    let (wrote, out) = as_nobody(
        "bpftool",
        &[
            "map", "update", "pinned", counters, "key", "0", "0", "0", "0", "value", "0",
        ],
    );
    assert!(!wrote, "nobody wrote the counters: {out}");
    // Even with the directory opened to everyone, the pins themselves stay closed: bpf(2)
    // refuses an unprivileged caller (kernel.unprivileged_bpf_disabled) and the pin is 0600.
    std::fs::set_permissions(&pin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (read, out) = as_nobody("bpftool", &["map", "dump", "pinned", counters]);
    assert!(
        !read,
        "nobody read the counters through an open directory: {out}"
    );
    dp.shutdown().unwrap();
}

#[test]
fn a_missing_bpf_filesystem_is_a_clear_error() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut config = DataplaneConfig::with_interfaces(Vec::new());
    config.bpffs_root = dir.path().join("bpf");
    config.instance = unique_tag("nobpffs");
    let err = Dataplane::load(&config).err().expect("no bpffs there");
    assert!(matches!(err, DataplaneError::NotBpffs { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("is not on a bpf filesystem") && message.contains("mount -t bpf"),
        "{message}"
    );
}

/// A config file everyone may write is refused (anyone could lift a cap); a group-writable
/// one is used with a warning; a password file everyone may read is refused.
#[test]
fn files_others_may_change_or_read_are_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("eip-meter.toml");
    std::fs::write(&config, "[dataplane]\ninterfaces = [\"lo\"]\n").unwrap();
    let validate = || {
        outcome(
            Command::new(binary())
                .args(["validate", "--config"])
                .arg(&config),
        )
    };
    let chmod = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(&config, 0o644);
    let (ok, out) = validate();
    assert!(ok, "{out}");
    chmod(&config, 0o666);
    let (ok, out) = validate();
    assert!(!ok && out.contains("writable by every local user"), "{out}");
    chmod(&config, 0o664);
    let (ok, out) = validate();
    assert!(ok && out.contains("writable by its group"), "{out}");

    chmod(&config, 0o600);
    let password = dir.path().join("store-password");
    std::fs::write(&password, "secret\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "[dataplane]\ninterfaces = [\"lo\"]\n\n[billing_store]\nurl = \"postgres://router@127.0.0.1:1/billing\"\npassword_file = \"{}\"\n",
            password.display()
        ),
    )
    .unwrap();
    chmod(&password, 0o644);
    let (ok, out) = validate();
    assert!(
        !ok && out.contains("holds a secret and every local user may read"),
        "{out}"
    );
    assert!(
        !out.contains("secret\n"),
        "the password itself was printed: {out}"
    );
}
