//! `cargo xtask`: set up a machine, run the demo, run every test.
//!
//! Deliberately light (anyhow + clap): it must compile before the eBPF toolchain exists, since
//! installing that toolchain is its first job.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod fuzz;

/// Developer and CI tasks for eip-meter.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what builds and tests need (idempotent, quick when nothing is missing): Debian
    /// packages, the nightly toolchain's rust-src, and bpf-linker built against the nightly's
    /// own LLVM.
    Setup,
    /// Set up, build, and run the daemon on a namespace topology with 3 EIPs and real traffic;
    /// print its counters next to what was sent, its samples, /metrics, the report, and write
    /// a chart to target/demo/chart.svg (and .png); then clean up. Needs root.
    Demo,
    /// Set up and run every test: unit, property and network-namespace integration tests,
    /// then a short pass of every fuzzer (`EIP_METER_FUZZ_SECONDS` each, default 10; not when a
    /// test filter is given). Needs root; the eBPF and namespace tests are never skipped.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up and run every fuzzer for `--seconds` each: the parsers (config, config editor,
    /// compute's CSVs, store record files, price and plans files) with cargo fuzz on the nightly
    /// toolchain over `fuzz/corpus`, and the packet path through BPF_PROG_TEST_RUN. A finding
    /// fails the run and is saved under target/fuzz/artifacts; figures in
    /// target/fuzz/report.json. Needs root (the packet fuzzer).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target: config, config_edit, compute_csv, store_records, prices, plans
        /// or packets.
        only: Option<String>,
    },
    /// Set up and run the fault-injection soak for `--minutes`: traffic to many EIPs through the
    /// namespace topology while the daemon is killed (-9, SIGTERM with keep), reloaded with
    /// valid and invalid configs, and its state disk fills and frees; then every steady EIP's
    /// samples are checked against the kernel's counters. Writes target/soak/report.json.
    /// Needs root; not part of `test`.
    Soak {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
    },
    /// Set up and run the benchmarks (release build), each beside its baseline in the same run;
    /// prints tables and writes target/bench/{sampler,dataplane,metrics,store,inventory}.json.
    /// Needs root.
    Bench {
        /// Run only this one: sampler, dataplane, metrics or store.
        only: Option<String>,
    },
}

/// Debian packages the tests and the demo use.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iperf3",
    "iputils-ping",
    "procps",
    "bpftool",
    // promtool and a real Prometheus for the metrics tests
    "prometheus",
    // systemd-analyze for the unit tests
    "systemd",
    // PostgreSQL 15: the billing store's tests start a private cluster with its initdb
    "postgresql",
    // a CA and a server certificate for the billing store's TLS test
    "openssl",
    // the admin API tests talk to the unix socket as an operator would
    "curl",
    // renders the demo's and the tests' charts
    "chromium",
    // steps the daemon's wall clock (LD_PRELOAD) in the clock-step test and the soak
    "libfaketime",
];

/// bpf-linker release known to work with the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Demo => {
            setup()?;
            demo()
        }
        Task::Test { args } => {
            setup()?;
            test(&args)
        }
        Task::Fuzz { seconds, only } => {
            setup()?;
            fuzz::fuzz(seconds, only.as_deref())
        }
        Task::Soak { minutes } => {
            setup()?;
            soak(minutes)
        }
        Task::Bench { only } => {
            setup()?;
            bench(only.as_deref())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn output(program: impl AsRef<OsStr>, args: &[&str]) -> Result<String> {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", program.to_string_lossy()))?;
    ensure!(
        out.status.success(),
        "{} {} failed: {}",
        program.to_string_lossy(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---- setup -----------------------------------------------------------------------------

fn setup() -> Result<()> {
    ensure_debian_packages()?;
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    Ok(())
}

fn ensure_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            output("dpkg-query", &["-W", "-f=${Status}", pkg])
                .map(|s| !s.contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {}", missing.join(" "));
    ensure!(
        is_root(),
        "Debian packages {} are missing and installing them needs root",
        missing.join(" ")
    );
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn is_root() -> bool {
    output("id", &["-u"])
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn ensure_nightly_rust_src() -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn cache_dir() -> PathBuf {
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache"))
        .join("eip-meter")
}

fn home() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into())
}

/// bpf-linker must link against the same LLVM the nightly rustc emits bitcode for. No prebuilt
/// binary can be fetched here, so build it against the `libLLVM` shipped inside the nightly
/// toolchain, with an rpath to it. A stamp records which nightly it was built for, so a new
/// nightly triggers a rebuild and an unchanged one costs two process spawns.
fn ensure_bpf_linker() -> Result<()> {
    let nightly = output("rustc", &["+nightly", "-vV"])?;
    let stamp_value = format!("bpf-linker {BPF_LINKER_VERSION}\n{nightly}");
    let stamp = cache_dir().join("bpf-linker.stamp");
    let linker_works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if linker_works && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&stamp_value) {
        return Ok(());
    }

    let llvm_major = nightly
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_owned();
    let sysroot = PathBuf::from(output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
    let lib = sysroot.join("lib");
    let so = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;

    // A prefix that looks like an LLVM install to llvm-sys: lib/libLLVM.so -> the nightly's.
    let prefix = cache_dir().join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", so.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&so), &link)?;
    }

    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} (about a minute)"
    );
    run(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
            ),
    )?;
    let version =
        output("bpf-linker", &["--version"]).context("bpf-linker installed but does not run")?;
    eprintln!("setup: {}", version.trim());
    std::fs::create_dir_all(cache_dir())?;
    std::fs::write(&stamp, stamp_value)?;
    Ok(())
}

// ---- test and demo -----------------------------------------------------------------------

fn test(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the test suite loads eBPF programs and creates network namespaces: run it as root");
    }
    run(cargo()
        .args(["test", "--no-fail-fast"])
        .arg("--")
        .args(args))?;
    if !args.is_empty() {
        return Ok(());
    }
    let seconds = match env::var("EIP_METER_FUZZ_SECONDS") {
        Ok(s) => s
            .parse()
            .with_context(|| format!("EIP_METER_FUZZ_SECONDS={s} is not a number of seconds"))?,
        Err(_) => 10,
    };
    fuzz::fuzz(seconds, None)
}

fn bench(only: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks create eBPF maps: run them as root");
    }
    let bench_dir = target_dir().join("bench");
    // The store benchmark runs `eip-meter bill` and `compute` as processes of their own (their
    // peak RSS is part of the figures).
    if only.is_none_or(|o| "store.json".starts_with(o) || "inventory.json".starts_with(o)) {
        run(cargo().args([
            "build",
            "--release",
            "--quiet",
            "--package",
            "metering-daemon",
            "--bin",
            "eip-meter",
        ]))?;
    }
    for (bin, out) in [
        ("eip-meter-bench", "sampler.json"),
        ("eip-meter-dataplane-bench", "dataplane.json"),
        ("eip-meter-packet-bench", "packet.json"),
        ("eip-meter-metrics-bench", "metrics.json"),
        ("eip-meter-store-bench", "store.json"),
        ("eip-meter-inventory-bench", "inventory.json"),
    ] {
        if only.is_some_and(|o| !out.starts_with(o)) {
            continue;
        }
        run(cargo()
            .args([
                "run",
                "--release",
                "--quiet",
                "--package",
                "eip-meter-tests",
                "--bin",
                bin,
                "--",
            ])
            .arg(bench_dir.join(out))
            .env(
                "EIP_METER_BIN",
                target_dir().join("release").join("eip-meter"),
            ))?;
    }
    Ok(())
}

fn soak(minutes: f64) -> Result<()> {
    if !is_root() {
        bail!("the soak loads eBPF programs and creates network namespaces: run it as root");
    }
    run(cargo().args([
        "build",
        "--package",
        "metering-daemon",
        "--bin",
        "eip-meter",
    ]))?;
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "eip-meter-tests",
            "--bin",
            "eip-meter-soak",
            "--",
            "--minutes",
        ])
        .arg(minutes.to_string())
        .arg("--out")
        .arg(target_dir().join("soak/report.json"))
        .arg(target_dir().join("debug/eip-meter")))
}

fn demo() -> Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs and creates network namespaces: run it as root");
    }
    run(cargo().args([
        "build",
        "--package",
        "metering-daemon",
        "--bin",
        "eip-meter",
    ]))?;
    let daemon = target_dir().join("debug").join("eip-meter");
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "eip-meter-tests",
            "--bin",
            "eip-meter-demo",
            "--",
        ])
        .arg(&daemon)
        .arg(target_dir().join("demo")))
}
