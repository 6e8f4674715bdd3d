//! Builds the eBPF programs (`metering-ebpf`) for `bpfel-unknown-none` with the nightly
//! toolchain and bpf-linker, and leaves the object in `OUT_DIR` for `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("metering-daemon has no parent directory"))?
        .join("metering-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // The programs also depend on the shared map layouts.
    println!("cargo:rerun-if-changed={manifest_dir}/../metering-common/src");
    aya_build::build_ebpf(
        [Package {
            name: "metering-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install the nightly rust-src component and bpf-linker")
}
