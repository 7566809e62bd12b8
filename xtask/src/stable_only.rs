//! Proves the build needs nothing from rustup but its stable toolchain:
//! builds the agent (and so the eBPF programs) under a rustup home that
//! shows only the stable toolchain and the eBPF compiler, linked to the real
//! ones. A nightly that happens to be installed cannot be borrowed there, as
//! the build once did without anyone noticing.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{ebpf_toolchain, run};

pub fn check(root: &Path) -> anyhow::Result<()> {
    let Some(ebpf) = ebpf_toolchain::find() else {
        bail!("no eBPF toolchain found after setup; run `cargo xtask setup` and read its output");
    };
    let stable = ebpf_toolchain::sysroot("stable")
        .context("rustup has no `stable` toolchain (rustup toolchain install stable)")?;
    let stable_name = stable
        .file_name()
        .context("the stable toolchain's sysroot has no name")?
        .to_string_lossy()
        .into_owned();
    let home = root.join("target/stable-only/rustup");
    let toolchains = home.join("toolchains");
    if home.exists() {
        std::fs::remove_dir_all(&home).with_context(|| format!("clearing {}", home.display()))?;
    }
    std::fs::create_dir_all(&toolchains)?;
    let link = |name: &str, to: &Path| {
        std::os::unix::fs::symlink(to, toolchains.join(name))
            .with_context(|| format!("linking toolchain {name} to {}", to.display()))
    };
    link(&stable_name, &stable)?;
    // Under the name rustup keeps it by: a channel (`nightly`) resolves to
    // its directory (`nightly-<host>`), a linked toolchain keeps its own
    // name (`bpf-deb`, whose sysroot is /usr); the build is told that name.
    let dir = ebpf
        .sysroot
        .file_name()
        .context("the eBPF toolchain's sysroot has no name")?
        .to_string_lossy()
        .into_owned();
    let ebpf_name = if dir.starts_with(&format!("{}-", ebpf.name)) {
        dir
    } else {
        ebpf.name.clone()
    };
    if ebpf_name != stable_name {
        link(&ebpf_name, &ebpf.sysroot)?;
    }
    std::fs::write(
        home.join("settings.toml"),
        format!("version = \"12\"\ndefault_toolchain = \"{stable_name}\"\n"),
    )?;
    println!(
        "stable-only: rustup home {} with toolchains {stable_name} and {ebpf_name}",
        home.display(),
    );
    // `cargo` from PATH: rustup's proxy, which resolves it in that home.
    run::status(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--package", "mesh-agent", "--bins"])
            .args(["--target-dir", "target/stable-only/build"])
            .env("RUSTUP_HOME", &home)
            .env("RUSTUP_TOOLCHAIN", &stable_name)
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .env(ebpf_toolchain::TOOLCHAIN_ENV, &ebpf_name),
    )
}
