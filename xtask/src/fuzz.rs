//! `cargo xtask fuzz`: every input surface under a fuzzer for a fixed time each.
//!
//! * The parsers (config, config editor, compute's CSVs, the store's record files, price and
//!   plans files): cargo fuzz on the nightly toolchain (libFuzzer, coverage-guided), over
//!   the corpus kept in `fuzz/corpus/<target>` and the findings in `fuzz/regressions/<target>`
//!   (read only: new inputs go to `target/fuzz/corpus/<target>`).
//! * The packet path: `eip-meter-fuzz-packets`, frames through `BPF_PROG_TEST_RUN` (root).
//!
//! A crash or an input slower than the time limit fails the run and is saved under
//! `target/fuzz/artifacts/<target>/`; fixed, it goes to `fuzz/regressions/<target>/`, which
//! the stable test suite replays on every run. `target/fuzz/report.json` has the figures.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::json;

use crate::{cargo, output, run, target_dir, workspace_root};

/// The parser targets (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: &[&str] = &[
    "config",
    "config_edit",
    "compute_csv",
    "store_records",
    "prices",
    "plans",
];

const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = output("cargo", &["fuzz", "--version"]).unwrap_or_default();
    if installed.contains(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// `cargo +nightly fuzz <args>` over `fuzz/`, building under `target/fuzz/build`.
fn cargo_fuzz(sub: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        // No sanitizer: the fuzzed code is safe Rust (a panic is what a finding looks like),
        // and an AddressSanitizer build of the daemon takes several times longer.
        .args([
            "+nightly",
            "fuzz",
            sub,
            "--sanitizer",
            "none",
            "--fuzz-dir",
            "fuzz",
        ])
        .arg("--target-dir")
        .arg(target_dir().join("fuzz/build"))
        // The build script's nested eBPF build must not inherit the outer cargo's toolchain.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

/// What one target did: runs, seconds, corpus size at the end.
struct Outcome {
    target: String,
    runs: u64,
    seconds: f64,
    corpus: usize,
}

/// Runs the parser targets (all, or `only`) and the packet fuzzer for `seconds` each.
pub fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    ensure!(seconds > 0, "--seconds must be at least 1");
    let parsers: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_none_or(|o| o == *t))
        .collect();
    let packets = only.is_none_or(|o| o == "packets");
    if parsers.is_empty() && !packets {
        bail!(
            "no fuzz target `{}`; targets: {}, packets",
            only.unwrap_or_default(),
            TARGETS.join(", ")
        );
    }
    let work = target_dir().join("fuzz");
    let mut outcomes = Vec::new();
    if !parsers.is_empty() {
        ensure_cargo_fuzz()?;
        eprintln!("fuzz: building the parser targets (nightly, libFuzzer)");
        run(&mut cargo_fuzz("build"))?;
        for target in parsers {
            outcomes.push(fuzz_parser(&work, target, seconds)?);
        }
    }
    if packets {
        outcomes.push(fuzz_packets(&work, seconds)?);
    }
    let report: Vec<_> = outcomes
        .iter()
        .map(|o| {
            json!({
                "target": o.target,
                "runs": o.runs,
                "seconds": o.seconds,
                "runs_per_second": (o.runs as f64 / o.seconds).round(),
                "corpus": o.corpus,
            })
        })
        .collect();
    fs::create_dir_all(&work)?;
    let path = work.join("report.json");
    fs::write(
        &path,
        serde_json::to_string_pretty(&json!({ "targets": report }))?,
    )?;
    println!("| target | runs | seconds | corpus |");
    println!("|---|---|---|---|");
    for o in &outcomes {
        println!(
            "| {} | {} | {:.0} | {} |",
            o.target, o.runs, o.seconds, o.corpus
        );
    }
    eprintln!("fuzz: no finding; figures in {}", path.display());
    Ok(())
}

fn fuzz_parser(work: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let logs = work.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(dir)?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path)?;
    let mut cmd = cargo_fuzz("run");
    cmd.arg(target).arg(&corpus);
    for kept in ["corpus", "regressions"] {
        let dir = workspace_root().join("fuzz").join(kept).join(target);
        if dir.is_dir() {
            cmd.arg(dir);
        }
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // One input may take ten seconds at most: a parser that runs away is a finding.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=65536")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    eprintln!("fuzz: {target} for {seconds} s");
    let started = Instant::now();
    let status = cmd.status().context("cannot run cargo fuzz")?;
    let seconds = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
        bail!(
            "fuzz target {target} found a failure ({status}): the input is in {}, the whole log in {}",
            artifacts.display(),
            log_path.display()
        );
    }
    let runs = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no run count in {}", log_path.display()))?;
    Ok(Outcome {
        target: target.to_owned(),
        runs,
        seconds,
        corpus: fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
    })
}

fn fuzz_packets(work: &Path, seconds: u64) -> Result<Outcome> {
    eprintln!("fuzz: packets for {seconds} s (BPF_PROG_TEST_RUN)");
    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;
    let started = Instant::now();
    let out = cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "eip-meter-tests",
            "--bin",
            "eip-meter-fuzz-packets",
            "--",
            "--seconds",
        ])
        .arg(seconds.to_string())
        .stderr(Stdio::piped())
        .output()
        .context("cannot run eip-meter-fuzz-packets")?;
    let seconds = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    fs::write(logs.join("packets.log"), &text)?;
    eprint!("{text}");
    ensure!(
        out.status.success(),
        "the packet fuzzer found a failure (above)"
    );
    let frames = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("packets: ")?
                .split(" frames")
                .next()?
                .parse()
                .ok()
        })
        .context("the packet fuzzer printed no frame count")?;
    Ok(Outcome {
        target: "packets".into(),
        runs: frames,
        seconds,
        corpus: 0,
    })
}
