//! A cargo that sees nothing from rustup but its stable toolchain: a rustup
//! home showing only the stable toolchain and the eBPF compiler, linked to
//! the real ones. A nightly that happens to be installed cannot be borrowed
//! there, as the build once did without anyone noticing.
//!
//! [`release`] is the project's one release build, through that cargo: the
//! image's binaries (so the test stage that builds the image proves they need
//! nothing more) and the benchmark's, which measures what ships and reuses
//! what the image stage compiled.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{ebpf_toolchain, run};

/// Static linking for the target only: build scripts and proc macros, built
/// for the host, stay dynamic (cargo gives host units no target rustflags when
/// `--target` is passed), and the nested eBPF build sets its own flags.
pub const STATIC_RUSTFLAGS: &str = r#"["-C", "target-feature=+crt-static"]"#;

/// Builds `package`'s binaries in release, statically linked against glibc
/// (the only C library target installed), for the host target; returns the
/// directory they are in. One package at a time: cargo unifies features over
/// the packages of one build, so building the benchmark's with the agent would
/// rebuild the agent differently from the image's.
pub fn release(root: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let triple = host_triple()?;
    run::status(
        cargo(root, "build")?
            .args(["--locked", "--release", "--package", package, "--bins"])
            .args(["--target", &triple, "--config"])
            .arg(format!("target.{triple}.rustflags={STATIC_RUSTFLAGS}")),
    )?;
    Ok(root.join(TARGET_DIR).join(triple).join("release"))
}

/// The host's target triple; only glibc Linux targets are supported.
pub fn host_triple() -> anyhow::Result<String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let triple = text
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV names no host")?;
    ensure!(
        triple.ends_with("-linux-gnu"),
        "release binaries are built statically for the host target, a glibc Linux one; this \
         host is {triple}"
    );
    Ok(triple.to_owned())
}

/// Its own target directory, so its builds never mix with the usual ones.
const TARGET_DIR: &str = "target/stable-only/build";

/// `cargo <subcommand> --target-dir` [`TARGET_DIR`] in the workspace root,
/// under that rustup home; the caller adds the rest.
fn cargo(root: &Path, subcommand: &str) -> anyhow::Result<Command> {
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
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .args([subcommand, "--target-dir", TARGET_DIR])
        .env("RUSTUP_HOME", &home)
        .env("RUSTUP_TOOLCHAIN", &stable_name)
        .env_remove("CARGO")
        .env_remove("RUSTC")
        // The image's timestamp, not the compiler's: build scripts using cc
        // (ring's) rerun on it, which would rebuild half the tree each time
        // it changes.
        .env_remove("SOURCE_DATE_EPOCH")
        .env(ebpf_toolchain::TOOLCHAIN_ENV, &ebpf_name);
    Ok(cargo)
}
