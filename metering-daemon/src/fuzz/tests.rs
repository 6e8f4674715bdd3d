//! The fuzzers' corpus and every past finding, replayed through the same checks on each test
//! run (stable toolchain, no fuzzer): a finding, once fixed, stays fixed.

use std::path::{Path, PathBuf};

use crate::store::{RecordFile, read_back, read_back::seeds};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of one target's corpus and regressions.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for folder in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(folder).join(target);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(entries.map(|e| e.expect("a readable corpus entry").path()));
        }
    }
    files.sort();
    files
}

#[test]
fn every_corpus_file_and_finding_passes_its_check() {
    for (target, check) in super::TARGETS {
        let files = inputs(target);
        assert!(!files.is_empty(), "no corpus for fuzz target {target}");
        for file in files {
            let data = std::fs::read(&file).expect("a readable corpus file");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {} fails its check",
                file.display()
            );
        }
    }
}

/// The seed of each record file is what the store writes today; `EIP_METER_BLESS_SEEDS=1`
/// rewrites them after a format change.
#[test]
fn the_store_seeds_are_what_the_encoders_write() {
    let dir = fuzz_dir().join("corpus/store_records");
    for (kind, bytes) in seeds() {
        let index = RecordFile::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("listed");
        let read = read_back(kind, &bytes).expect("a seed reads back");
        assert!(read.records > 0, "{kind:?} seed is empty");
        let mut file = vec![index as u8];
        file.extend_from_slice(&bytes);
        let path = dir.join(format!("seed-{kind:?}").to_lowercase());
        if std::env::var_os("EIP_METER_BLESS_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).expect("corpus folder");
            std::fs::write(&path, &file).expect("seed written");
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (EIP_METER_BLESS_SEEDS=1 writes it)",
                path.display()
            )
        });
        assert!(
            on_disk == file,
            "{} is out of date (EIP_METER_BLESS_SEEDS=1 rewrites it)",
            path.display()
        );
    }
}

/// Where a check refuses input, it says where (the invariant the fuzzers hold it to).
#[test]
fn refusals_name_their_place() {
    let problems = crate::config::Config::parse("[dataplane\ninterfaces = 1", &super::AnyHost)
        .expect_err("not TOML");
    assert!(
        problems.iter().any(|p| p.location == Some((1, 11))),
        "{problems:?}"
    );
    let cut = read_back(RecordFile::Figures, &[1, 0, 0, 0, 0, 1, 0]).expect_err("cut short");
    assert!(cut.contains("at byte"), "{cut}");
    let checkpoint =
        read_back(RecordFile::Checkpoints, &[9, 0, 0, 0, 200, 0, 0, 0, 1]).expect_err("cut short");
    assert!(checkpoint.contains("EIP id 9"), "{checkpoint}");
}
