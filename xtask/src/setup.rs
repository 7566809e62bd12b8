//! `cargo xtask setup`: every prerequisite, each checked before it is
//! installed, so a second run installs nothing and says so.
//!
//! What and why (see shared/TOOLCHAIN.md for the eBPF toolchain recipe):
//! - `iproute2`: the test harness and demo build clusters from namespaces;
//! - `tcpdump`: the tunnel tests record the node-to-node link to prove no
//!   application byte crosses it in the clear;
//! - `curl`: the demo's pods make real HTTP requests;
//! - `nginx`: the benchmark's waypoint scenarios measure the waypoint
//!   against it, a plain reverse proxy on the same path;
//! - `umoci`: `cargo xtask image` writes the OCI image with it, daemonless
//!   (no container engine exists on CI machines);
//! - `llvm-22-dev`: bpf-linker links against the LLVM that emits the bitcode;
//! - `rustc-web`, `rust-web-src`, `rust-web-clippy`: a rustc with its library
//!   sources on disk for `-Z build-std=core` (skipped when a rustup nightly
//!   with `rust-src` exists), and clippy for linting the eBPF crate;
//! - `python3-venv`: Debian's Python makes the venv kubernetes-validate
//!   lives in;
//! - `kubernetes-validate` (PyPI, pinned; its Kubernetes schemas ship in the
//!   package, so it validates offline), in a venv under target/: the
//!   manifests' test checks deploy/ with it;
//! - `bpf-linker`, built against LLVM 22;
//! - the rustup toolchain `bpf-deb` pointing at Debian's rustc;
//! - bpffs mounted at /sys/fs/bpf, where the agent pins its programs.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{ebpf_toolchain, run};

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// 1.37 bundles the schemas of Kubernetes 1.25 to 1.37.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// Debian's Python, the one `python3-venv` completes.
const PYTHON: &str = "/usr/bin/python3";

/// One prerequisite: how to tell it is there, and how to get it.
struct Need {
    what: String,
    /// The command a user would run by hand (for the "cannot install" message).
    manual: String,
    present: bool,
    install: Box<dyn Fn() -> anyhow::Result<()>>,
}

/// Installs what is missing; returns how many things it installed.
pub fn run() -> anyhow::Result<usize> {
    let needs = needs();
    let missing: Vec<&Need> = needs.iter().filter(|n| !n.present).collect();
    if missing.is_empty() {
        println!(
            "setup: all {} prerequisites present; nothing to install",
            needs.len()
        );
        return Ok(0);
    }
    if let Some(reason) = cannot_provision() {
        let list: Vec<String> = missing
            .iter()
            .map(|n| format!("  - {}: {}", n.what, n.manual))
            .collect();
        bail!(
            "setup cannot install prerequisites here ({reason}). Install these, then re-run:\n{}",
            list.join("\n")
        );
    }
    for need in &missing {
        println!("setup: installing {}", need.what);
        (need.install)().with_context(|| format!("installing {}", need.what))?;
    }
    println!("setup: installed {} prerequisite(s)", missing.len());
    Ok(missing.len())
}

/// Why this machine cannot be provisioned automatically, if it cannot.
fn cannot_provision() -> Option<String> {
    if !Path::new("/etc/debian_version").exists() {
        return Some("not a Debian/Ubuntu system".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root; try `sudo -E cargo xtask setup`".into());
    }
    None
}

fn needs() -> Vec<Need> {
    let nightly = ebpf_toolchain::has_library_sources("nightly");
    // containernetworking-plugins: the real bridge and host-local plugins the
    // CNI end-to-end test chains nodemesh-cni after.
    let mut packages = vec![
        "iproute2",
        "tcpdump",
        "curl",
        "nginx",
        "llvm-22-dev",
        "containernetworking-plugins",
        "python3-venv",
        "umoci",
    ];
    if !nightly {
        packages.extend(["rustc-web", "rust-web-src", "rust-web-clippy"]);
    }
    let mut needs: Vec<Need> = packages.into_iter().map(apt_package).collect();
    needs.push(Need {
        what: format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"),
        manual: format!(
            "PATH={LLVM_BIN}:$PATH cargo install bpf-linker --version {BPF_LINKER_VERSION} \
             --no-default-features --features llvm-22"
        ),
        present: run::succeeds(Command::new("bpf-linker").arg("--version")),
        install: Box::new(install_bpf_linker),
    });
    if !nightly {
        let tc = ebpf_toolchain::DEBIAN_TOOLCHAIN;
        needs.push(Need {
            what: format!("rustup toolchain `{tc}` (Debian's rustc, for the eBPF build)"),
            manual: format!("rustup toolchain link {tc} /usr"),
            present: ebpf_toolchain::has_library_sources(tc),
            install: Box::new(move || {
                run::status(Command::new("rustup").args(["toolchain", "link", tc, "/usr"]))
            }),
        });
    }
    needs.push(Need {
        what: format!("kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (PyPI, in a venv)"),
        manual: format!(
            "{PYTHON} -m venv {venv} && {venv}/bin/pip install kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}",
            venv = kubernetes_validate_venv().display()
        ),
        present: Command::new(kubernetes_validate())
            .arg("--version")
            .output()
            .is_ok_and(|out| {
                out.status.success()
                    && String::from_utf8_lossy(&out.stdout).trim() == KUBERNETES_VALIDATE_VERSION
            }),
        install: Box::new(install_kubernetes_validate),
    });
    needs.push(Need {
        what: "bpffs mounted at /sys/fs/bpf".into(),
        manual: "mount -t bpf bpf /sys/fs/bpf".into(),
        present: bpffs_mounted(),
        install: Box::new(|| {
            run::status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        }),
    });
    needs
}

fn apt_package(name: &'static str) -> Need {
    Need {
        what: format!("apt package {name}"),
        manual: format!("apt-get install -y {name}"),
        present: dpkg_installed(name),
        install: Box::new(move || {
            // Refresh the index once per setup run, only when something is missing.
            static UPDATED: std::sync::Once = std::sync::Once::new();
            let mut update = Ok(());
            UPDATED.call_once(|| update = run::status(Command::new("apt-get").arg("update")));
            update?;
            run::status(
                Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends", name])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        }),
    }
}

fn dpkg_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.ends_with(b"install ok installed"))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let path = std::env::var("PATH").unwrap_or_default();
    run::status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            // Without LLVM 22's llvm-config first on PATH the build looks in
            // /usr and fails with `unable to find library -lLLVM`.
            .env("PATH", format!("{LLVM_BIN}:{path}")),
    )
}

fn kubernetes_validate_venv() -> PathBuf {
    run::workspace_root().join("target/kubernetes-validate")
}

/// The `kubernetes-validate` that setup installs.
pub fn kubernetes_validate() -> PathBuf {
    kubernetes_validate_venv().join("bin/kubernetes-validate")
}

fn install_kubernetes_validate() -> anyhow::Result<()> {
    let venv = kubernetes_validate_venv();
    run::status(Command::new(PYTHON).arg("-m").arg("venv").arg(&venv))?;
    run::status(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!(
                "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
            )),
    )
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|table| {
        table.lines().any(|line| {
            let mut fields = line.split_whitespace();
            fields.nth(4) == Some("/sys/fs/bpf")
                && line
                    .split_once(" - ")
                    .is_some_and(|(_, right)| right.starts_with("bpf "))
        })
    })
}
