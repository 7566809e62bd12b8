//! Builds `mesh-ebpf` for the BPF target and leaves the object in `OUT_DIR`,
//! where `capture::object` embeds it: one agent binary always carries the
//! kernel programs it was built with.
use std::path::Path;

use anyhow::{Context as _, bail};

#[path = "ebpf_toolchain.rs"]
mod ebpf_toolchain;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir)
        .parent()
        .context("workspace root")?;
    // The eBPF crate is built by a nested cargo, so tell the outer one what it reads.
    for dir in [
        "mesh-common",
        "mesh-ebpf/src",
        "mesh-ebpf/Cargo.toml",
        "mesh-agent/ebpf_toolchain.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-env-changed={}",
        ebpf_toolchain::TOOLCHAIN_ENV
    );

    let Some(toolchain) = ebpf_toolchain::find() else {
        bail!(
            "no Rust toolchain with library sources is available to build the eBPF programs.\n\
             Run `cargo xtask setup` (installs Debian's rustc-web + rust-web-src and links them \
             as rustup toolchain `{}`), or install a nightly with `rustup toolchain install nightly \
             --component rust-src`, or name one with {}=<toolchain>.",
            ebpf_toolchain::DEBIAN_TOOLCHAIN,
            ebpf_toolchain::TOOLCHAIN_ENV
        );
    };
    if which("bpf-linker").is_none() {
        bail!("bpf-linker is not on PATH: run `cargo xtask setup`");
    }
    if toolchain.needs_bootstrap {
        // SAFETY: build scripts are single-threaded here; the variable is read
        // by the nested `cargo build -Z build-std` that aya-build spawns.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    let ebpf_dir = root.join("mesh-ebpf");
    let package = aya_build::Package {
        name: "mesh-ebpf",
        root_dir: ebpf_dir.to_str().context("non-UTF-8 workspace path")?,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain.name))
        .with_context(|| format!("building mesh-ebpf with toolchain `{}`", toolchain.name))
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}
