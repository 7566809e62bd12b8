//! Builds `mesh-ebpf` for the BPF target and leaves the object in `OUT_DIR`,
//! where `capture::object` embeds it: one agent binary always carries the
//! kernel programs it was built with.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

#[path = "ebpf_toolchain.rs"]
#[allow(
    dead_code,
    reason = "shared with xtask, which uses the setup and lint parts"
)]
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
        // Versions and profiles of what the programs are built with.
        "Cargo.toml",
        "Cargo.lock",
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
    build_programs(root, &toolchain)
        .with_context(|| format!("building mesh-ebpf with toolchain `{}`", toolchain.name))
}

/// Builds the programs into their own target directory under `OUT_DIR` (a
/// nested cargo on the outer one's target directory would wait on its lock)
/// and copies the object to `OUT_DIR/mesh-programs`.
fn build_programs(root: &Path, toolchain: &ebpf_toolchain::EbpfToolchain) -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let target_dir = out_dir.join("mesh-ebpf");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    // aya-ebpf reads the architecture it runs on from this cfg; `--btf`
    // makes bpf-linker emit the BTF the loader needs, from debug info. Set
    // as CARGO_ENCODED_RUSTFLAGS, which outranks every other source of
    // rustflags, so the outer build's (the image's `+crt-static`, given to
    // us in this very variable) never reach the BPF target.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");
    let mut cargo = toolchain.cargo("build");
    cargo
        .current_dir(root)
        .args(["--bins", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // Its progress goes to our stderr: stdout is for cargo directives.
        .stdout(std::io::stderr());
    let status = cargo
        .status()
        .with_context(|| format!("running {cargo:?}"))?;
    if !status.success() {
        bail!("{cargo:?} failed: {status}");
    }
    let built = target_dir
        .join(ebpf_toolchain::TARGET)
        .join("release/mesh-programs");
    std::fs::copy(&built, out_dir.join("mesh-programs"))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}
