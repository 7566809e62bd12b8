//! Which Rust toolchain builds the eBPF object.
//!
//! Shared verbatim by `mesh-agent/build.rs` (which uses it) and `xtask setup`
//! (which installs what it looks for), so the two can never disagree. The eBPF
//! build needs `-Z build-std=core`, hence a toolchain whose `library/` sources
//! are on disk. A rustup nightly with `rust-src` is preferred when present;
//! otherwise Debian's `rustc-web` + `rust-web-src`, linked into rustup as
//! `bpf-deb`. Either way the stable cargo drives it (see [`EbpfToolchain`]),
//! so the build needs no cargo but rustup's stable one.
use std::{path::PathBuf, process::Command};

/// rustup name under which `xtask setup` links Debian's rustc.
pub const DEBIAN_TOOLCHAIN: &str = "bpf-deb";

/// Environment variable that forces a toolchain name.
pub const TOOLCHAIN_ENV: &str = "NODEMESH_EBPF_TOOLCHAIN";

/// The BPF target the programs are built for.
pub const TARGET: &str = "bpfel-unknown-none";

/// A toolchain's compiler, driven by the cargo that runs the outer build.
///
/// Only its `rustc` (and `clippy-driver`) are used: Debian's toolchain has no
/// cargo, and `rustup run <it> cargo` would silently borrow another
/// toolchain's (a nightly, when one happens to be installed) or fail. So the
/// stable cargo that runs the outer build drives the nested one, with
/// `RUSTC` naming this compiler and `RUSTC_BOOTSTRAP=1` for `-Z build-std`
/// (needed by the stable cargo even when the compiler is a nightly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfToolchain {
    /// rustup's name for it.
    pub name: String,
    /// Its sysroot (`rustc --print sysroot`): `bin/rustc` and the library
    /// sources under `lib/rustlib/src/rust/library`.
    pub sysroot: PathBuf,
}

impl EbpfToolchain {
    /// `cargo <subcommand>` for `mesh-ebpf` on the BPF target, run from the
    /// workspace root.
    pub fn cargo(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(outer_cargo());
        cmd.arg(subcommand);
        self.configure(&mut cmd);
        cmd
    }

    /// `cargo clippy` for `mesh-ebpf` with this toolchain's clippy (a
    /// clippy of another version cannot read these library sources).
    pub fn clippy(&self) -> Command {
        let mut cmd = Command::new(self.sysroot.join("bin/cargo-clippy"));
        // cargo-clippy runs the cargo named here, wrapping our rustc with
        // the clippy-driver beside it.
        cmd.arg("clippy").env("CARGO", outer_cargo());
        self.configure(&mut cmd);
        cmd
    }

    fn configure(&self, cmd: &mut Command) {
        cmd.args(["--package", "mesh-ebpf", "--release", "--target", TARGET])
            .args(["-Z", "build-std=core"])
            .env("RUSTC", self.sysroot.join("bin/rustc"))
            .env("RUSTC_BOOTSTRAP", "1")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
    }
}

/// The cargo running this process (build scripts and `cargo run` children
/// are told in `CARGO`), else the one on PATH.
fn outer_cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// The sysroot of rustup toolchain `name`, when rustup has it.
pub fn sysroot(name: &str) -> Option<PathBuf> {
    let out = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The sysroot of rustup toolchain `name` when it exists and has its
/// library sources.
fn sysroot_with_sources(name: &str) -> Option<PathBuf> {
    sysroot(name).filter(|sysroot| {
        sysroot
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .is_file()
    })
}

/// True when `rustup run NAME` works and that rustc has its library sources.
pub fn has_library_sources(name: &str) -> bool {
    sysroot_with_sources(name).is_some()
}

/// The toolchain to use, or `None` when none is installed (run `cargo xtask
/// setup`): the one named in [`TOOLCHAIN_ENV`], else a nightly with
/// `rust-src`, else Debian's.
pub fn find() -> Option<EbpfToolchain> {
    let named = std::env::var(TOOLCHAIN_ENV).ok();
    let candidates = match &named {
        Some(name) => vec![name.as_str()],
        None => vec!["nightly", DEBIAN_TOOLCHAIN],
    };
    candidates.into_iter().find_map(|name| {
        Some(EbpfToolchain {
            name: name.to_owned(),
            sysroot: sysroot_with_sources(name)?,
        })
    })
}
