//! The shipped `deploy/` files work as they are: the Prometheus rules pass `promtool check`
//! and their unit tests, the example scrape config is valid, the systemd unit passes
//! `systemd-analyze verify` with a known exposure score, and the unit's `ExecStartPre` and
//! `ExecStart` run under the sandbox it declares.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use eip_meter_tests::{
    METRICS_ADDR, UdpSink, deploy_file, http, mixed_sizes, require_root, run_cmd,
    sandbox::{Sandbox, Unit},
    send_udp,
    topology::{Topology, TopologyOptions, UPLINK, eip_v4},
    unique_tag, wait_until,
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

/// The exposure score `systemd-analyze security` gives the shipped unit (README states it).
const EXPOSURE: &str = "3.9 OK";

use eip_meter_tests::outcome as output;

#[test]
fn promtool_accepts_the_rules_their_unit_tests_and_the_example_config() {
    let dir = deploy_file("prometheus");
    for args in [
        vec!["check", "rules", "eip-meter.rules.yml"],
        vec!["test", "rules", "eip-meter.rules.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let (ok, out) = output(Command::new("promtool").args(&args).current_dir(&dir));
        assert!(ok, "promtool {}: {out}", args.join(" "));
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

/// The shipped unit with its executable paths pointed at this build (verify checks that the
/// commands exist; nothing else is changed).
fn unit_for_this_build() -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(deploy_file("eip-meter.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eip-meter.service");
    std::fs::write(
        &path,
        text.replace("/usr/local/bin/eip-meter", &binary().display().to_string()),
    )
    .unwrap();
    (dir, path)
}

#[test]
fn systemd_analyze_verifies_the_unit_and_scores_its_exposure() {
    let (_dir, unit) = unit_for_this_build();
    let (ok, out) = output(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let (ok, out) = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&unit),
    );
    assert!(ok, "{out}");
    let score = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for eip-meter.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    println!("systemd-analyze security: {score}");
    assert!(
        score.starts_with(EXPOSURE),
        "exposure {score}, README says {EXPOSURE}"
    );
}

/// The billing job's exposure score (README states it).
const BILL_EXPOSURE: &str = "1.1 OK";

#[test]
fn systemd_analyze_verifies_the_billing_job_and_its_timer() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in ["eip-meter-bill.service", "eip-meter-bill.timer"] {
        let text = std::fs::read_to_string(deploy_file(name)).unwrap();
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            text.replace("/usr/local/bin/eip-meter", &binary().display().to_string()),
        )
        .unwrap();
        units.push(path);
    }
    let (ok, out) = output(Command::new("systemd-analyze").arg("verify").args(&units));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let (ok, out) = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&units[0]),
    );
    assert!(ok, "{out}");
    let score = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for eip-meter-bill.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    println!("systemd-analyze security (billing job): {score}");
    assert!(
        score.starts_with(BILL_EXPOSURE),
        "exposure {score}, README says {BILL_EXPOSURE}"
    );
    // Every command the timer runs is one `eip-meter bill` accepts (run against a real store
    // in billing_store.rs).
    let text = std::fs::read_to_string(deploy_file("eip-meter-bill.service")).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ExecStart=")).count(),
        3
    );
}

/// Creates `path` for the test if it is missing, and removes it again (only then) on drop.
struct MountPoint(PathBuf, bool);

impl MountPoint {
    fn ensure(path: &str) -> Self {
        let p = PathBuf::from(path);
        let created = !p.exists();
        std::fs::create_dir_all(&p).unwrap();
        Self(p, created)
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

/// The unit's own commands, run as it declares: `/usr/local/bin/eip-meter` with
/// `EIP_METER_CONFIG=/etc/eip-meter/eip-meter.toml`, its state in `/var/lib/eip-meter`, inside
/// the emulated sandbox (see `eip_meter_tests::sandbox`). Before `StateDirectory=` was added,
/// `ProtectSystem=strict` left the store read-only and the daemon could not start: the same
/// run without it must fail that way.
#[test]
fn the_unit_starts_under_the_sandbox_it_declares() {
    require_root();
    let unit_text = std::fs::read_to_string(deploy_file("eip-meter.service")).unwrap();
    let unit = Unit::parse(&unit_text);
    assert!(
        unit.unclassified().is_empty(),
        "directives the sandbox test does not classify: {:?}",
        unit.unclassified()
    );
    assert_eq!(unit.one("StateDirectory"), Some("eip-meter"));

    let eip = eip_v4(95);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })
    .unwrap();
    // What an operator installs: the binary, a config (the default state_dir), the state dir.
    let work = tempfile::tempdir().unwrap();
    let bin_dir = work.path().join("bin");
    let etc_dir = work.path().join("etc");
    let state_dir = work.path().join("state");
    for d in [&bin_dir, &etc_dir, &state_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(binary(), bin_dir.join("eip-meter")).unwrap();
    let instance = unique_tag("unit");
    std::fs::write(
        etc_dir.join("eip-meter.toml"),
        format!(
            "[dataplane]\ninterfaces = [\"{UPLINK}\"]\nbpffs_root = \"/sys/fs/bpf/eip-meter-test\"\ninstance = \"{instance}\"\n\n[sampler]\ninterval_seconds = 2\ntimezone = \"UTC\"\nhost = \"router-a\"\n\n[[eip]]\naddress = \"{eip}\"\n"
        ),
    )
    .unwrap();
    let _var_lib = MountPoint::ensure("/var/lib/eip-meter");
    let _run = MountPoint::ensure("/run/eip-meter");
    let _etc = MountPoint::ensure("/etc/eip-meter");
    let binds = [
        (bin_dir.clone(), PathBuf::from("/usr/local/bin")),
        (etc_dir.clone(), PathBuf::from("/etc/eip-meter")),
    ];
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/eip-meter-test/v2/{instance}"));
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _pins = Cleanup(pin_dir.clone());

    // `line` of the unit, run under the sandbox `unit_text` declares.
    let command_in = |unit_text: &str, line: &str| -> Command {
        let mut words = line.split_whitespace();
        let mut cmd = topo.router.command(words.next().unwrap()).unwrap();
        cmd.args(words).env_clear().env("PATH", "/usr/bin:/bin");
        for env in unit.values("Environment") {
            let (k, v) = env.split_once('=').unwrap();
            cmd.env(k, v);
        }
        Sandbox::for_unit(&Unit::parse(unit_text), Some(&state_dir), &binds)
            .unwrap()
            .apply(&mut cmd);
        cmd
    };
    let command = |line: &str, with_state: bool| -> Command {
        if with_state {
            command_in(&unit_text, line)
        } else {
            command_in(&unit_text.replace("StateDirectory=eip-meter\n", ""), line)
        }
    };

    // ExecStartPre: validate, as the unit runs it.
    let pre = unit.one("ExecStartPre").unwrap();
    let (ok, out) = output(&mut command(pre, true));
    assert!(ok, "{pre}: {out}");
    assert!(out.contains("OK"), "{out}");

    // Without StateDirectory= the store is read-only: the bug this unit had.
    let start = unit.one("ExecStart").unwrap();
    let (ok, out) = output(&mut command(start, false));
    assert!(!ok, "started without a writable state directory: {out}");
    assert!(
        out.contains("state directory /var/lib/eip-meter is not writable")
            && out.contains("Read-only file system"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&pin_dir);

    // With it, the daemon starts, meters, samples into /var/lib/eip-meter and serves /metrics.
    let log_path = work.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = command(start, true)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ready = wait_until(Duration::from_secs(30), "ready", || {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("exited with {status}: {}", read_log());
        }
        Ok(read_log().contains(r#""message":"ready""#))
    });
    if let Err(e) = ready {
        let _ = child.kill();
        panic!("{e}");
    }
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    let inet = Topology::internet_addr(eip, 0).ip();
    let sent = send_udp(&topo.internet, inet, sink.addr, mixed_sizes(100, false)).unwrap();
    let metered = wait_until(Duration::from_secs(10), "a round with the traffic", || {
        let body = http::get(&topo.router, METRICS_ADDR.parse()?, "/metrics")?.body;
        Ok(eip_meter_tests::exposition_value(
            &body,
            &format!("eip_meter_eip_bytes_total{{eip=\"{eip}\",direction=\"inbound\"}}"),
        ) == Some(sent as f64))
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().unwrap();
    metered.unwrap_or_else(|e| panic!("{e}\n{}", read_log()));
    assert!(status.success(), "clean exit on SIGTERM:\n{}", read_log());
    assert!(
        state_dir.join("samples.db").exists(),
        "the store was written under /var/lib/eip-meter"
    );
    let files = run_cmd("ls", &[state_dir.join("rounds").to_str().unwrap()]).unwrap();
    assert!(files.contains(".samples"), "{files}");

    // Least privilege: the unit keeps exactly the capabilities the daemon needs. Without any
    // one of them it cannot start, and says which operation was refused.
    let kept = unit.one("CapabilityBoundingSet").unwrap().to_owned();
    assert_eq!(kept, "CAP_BPF CAP_NET_ADMIN CAP_PERFMON");
    assert_eq!(unit.one("AmbientCapabilities"), Some(kept.as_str()));
    let spawn_with = |text: &str| {
        let log = std::fs::File::create(&log_path).unwrap();
        command_in(text, start)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    // Ready within 30 s (true), or exited with an error before that (false).
    let started = |child: &mut std::process::Child| loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                !status.success(),
                "exited cleanly at start:\n{}",
                read_log()
            );
            break false;
        }
        if read_log().contains(r#""message":"ready""#) {
            break true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for (cap, refused) in [
        (
            "CAP_BPF",
            "cannot load the eBPF object: map error: failed to create map",
        ),
        (
            "CAP_NET_ADMIN",
            "BPF_PROG_LOAD syscall returned Operation not permitted",
        ),
        (
            "CAP_PERFMON",
            "pointer arithmetic with it prohibited for !root",
        ),
    ] {
        let fewer: Vec<&str> = kept.split_whitespace().filter(|c| *c != cap).collect();
        let text = unit_text.replace(&kept, &fewer.join(" "));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let mut child = spawn_with(&text);
        let ran = started(&mut child);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!ran, "the daemon started without {cap}:\n{}", read_log());
        assert!(
            read_log().contains(refused),
            "without {cap}:\n{}",
            read_log()
        );
    }
    // With them, a restart with `on_exit = "keep"` takes the pinned links over.
    let _ = std::fs::remove_dir_all(&pin_dir);
    let config = std::fs::read_to_string(etc_dir.join("eip-meter.toml")).unwrap();
    std::fs::write(
        etc_dir.join("eip-meter.toml"),
        config.replace("[dataplane]\n", "[dataplane]\non_exit = \"keep\"\n"),
    )
    .unwrap();
    for round in ["first start", "restart"] {
        let mut child = spawn_with(&unit_text);
        assert!(started(&mut child), "{round}:\n{}", read_log());
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        assert!(child.wait().unwrap().success(), "{round}:\n{}", read_log());
    }
    assert!(
        read_log().contains(r#""took_over":true"#) && !read_log().contains("cannot verify"),
        "the restart took the pinned links over and verified them:\n{}",
        read_log()
    );
    let _ = std::fs::remove_dir_all(&pin_dir);
}
