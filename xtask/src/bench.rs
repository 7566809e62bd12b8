//! `cargo xtask bench`: builds release binaries and runs the benchmark
//! (`tests/src/bin/nodemesh-bench.rs`) with them. See BENCHMARKS.md.
//!
//! The agent measured is the one the image ships: the same static release
//! build ([`stable_only::release`]), which `cargo xtask test` has just made
//! for its image stage, so only the benchmark's own tools compile here.
use anyhow::bail;

use crate::{run, setup, stable_only, test::stage};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Arguments for the benchmark: `--quick`, `--scenario NAME`,
    /// `--json FILE`, `--reps N`, `--list`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the benchmark needs root: it builds a cluster of network namespaces and loads eBPF \
             programs. Run: sudo -E cargo xtask bench"
        );
    }
    stage("setup", || setup::run().map(|_| ()))?;
    quick_or_full(&args.args)
}

/// Builds release binaries and runs the benchmark with `args`.
pub fn quick_or_full(args: &[String]) -> anyhow::Result<()> {
    let root = run::workspace_root();
    let release = stage("build (release, static)", || {
        stable_only::release(&root, "mesh-agent")?;
        stable_only::release(&root, "nodemesh-tests")
    })?;
    stage("benchmark", || {
        run::status(
            std::process::Command::new(release.join("nodemesh-bench"))
                .env("NODEMESH_BIN_DIR", &release)
                .args(args),
        )
    })
}
