//! Which Rust toolchain builds the eBPF object.
//!
//! Shared verbatim by `mesh-agent/build.rs` (which uses it) and `xtask setup`
//! (which installs what it looks for), so the two can never disagree. The eBPF
//! build needs `-Z build-std=core`, hence a toolchain whose `library/` sources
//! are on disk. A rustup nightly with `rust-src` is preferred when present;
//! otherwise Debian's `rustc-web` + `rust-web-src`, linked into rustup as
//! `bpf-deb` and driven with `RUSTC_BOOTSTRAP=1` (see shared/TOOLCHAIN.md).
use std::{path::Path, process::Command};

/// rustup name under which `xtask setup` links Debian's rustc.
pub const DEBIAN_TOOLCHAIN: &str = "bpf-deb";

/// Environment variable that forces a toolchain name.
pub const TOOLCHAIN_ENV: &str = "NODEMESH_EBPF_TOOLCHAIN";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfToolchain {
    /// Name to pass to `rustup run`.
    pub name: String,
    /// True when the toolchain is stable and needs `RUSTC_BOOTSTRAP=1`.
    pub needs_bootstrap: bool,
}

/// True when `rustup run NAME` works and that rustc has its library sources.
pub fn has_library_sources(name: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

/// The toolchain to use, or `None` when none is installed (run `cargo xtask setup`).
pub fn find() -> Option<EbpfToolchain> {
    if let Ok(name) = std::env::var(TOOLCHAIN_ENV) {
        let needs_bootstrap = !name.starts_with("nightly");
        return Some(EbpfToolchain {
            name,
            needs_bootstrap,
        });
    }
    if has_library_sources("nightly") {
        return Some(EbpfToolchain {
            name: "nightly".into(),
            needs_bootstrap: false,
        });
    }
    if has_library_sources(DEBIAN_TOOLCHAIN) {
        return Some(EbpfToolchain {
            name: DEBIAN_TOOLCHAIN.into(),
            needs_bootstrap: true,
        });
    }
    None
}
