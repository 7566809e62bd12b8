//! `cargo xtask bench`: builds release binaries and runs the benchmark
//! (`tests/src/bin/nodemesh-bench.rs`) with them. See BENCHMARKS.md.
use anyhow::bail;

use crate::{run, setup, test::stage};

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
    stage("build (release)", || run::build_bins(true))?;
    let release = run::workspace_root().join("target/release");
    stage("benchmark", || {
        run::status(
            std::process::Command::new(release.join("nodemesh-bench"))
                .env("NODEMESH_BIN_DIR", &release)
                .args(args),
        )
    })
}
