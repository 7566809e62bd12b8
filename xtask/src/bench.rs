//! `cargo xtask bench`: builds release binaries and runs the benchmark
//! (`tests/src/bin/nodemesh-bench.rs`) with them. See BENCHMARKS.md.
//!
//! The agent measured is the one the image ships: the same static release
//! build ([`stable_only::release`]), which `cargo xtask test` has just made
//! for its image stage, so only the benchmark's own tools compile here.
//!
//! Unless told otherwise, a run leaves its report in a fixed place
//! ([`LATEST`], [`LATEST_QUICK`]: the JSON and its chart), and a full run
//! (not `--quick`) adds a line to [`HISTORY`], which is committed: quick
//! runs, CI's among them, leave the tree clean.
use std::path::Path;

use anyhow::bail;

use crate::{run, setup, stable_only, test::stage};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Arguments for the benchmark: `--quick`, `--scenario NAME`,
    /// `--json FILE` (default target/bench/latest.json, or latest-quick.json),
    /// `--history FILE` (default bench-history.jsonl on full runs),
    /// `--reps N`, `--list`.
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

/// A full run's report (and `latest.svg` beside it), from the workspace root.
const LATEST: &str = "target/bench/latest.json";
/// A quick run's, kept apart so it never hides the last full one.
const LATEST_QUICK: &str = "target/bench/latest-quick.json";
/// One line per full run, from the workspace root.
const HISTORY: &str = "bench-history.jsonl";

/// `args` with the default report and history files added, unless they name
/// their own or only list the scenarios.
fn with_defaults(root: &Path, args: &[String]) -> Vec<String> {
    let given = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let mut args = args.to_vec();
    if given("--list") {
        return args;
    }
    let quick = given("--quick");
    if !given("--json") {
        let json = root.join(if quick { LATEST_QUICK } else { LATEST });
        args.push("--json".into());
        args.push(json.display().to_string());
    }
    if !quick && !given("--history") {
        args.push("--history".into());
        args.push(root.join(HISTORY).display().to_string());
    }
    args
}

/// Builds release binaries and runs the benchmark with `args` (and the
/// default report files).
pub fn quick_or_full(args: &[String]) -> anyhow::Result<()> {
    let root = run::workspace_root();
    let args = with_defaults(&root, args);
    if let Some(reports) = root.join(LATEST).parent() {
        std::fs::create_dir_all(reports)?;
    }
    let release = stage("build (release, static)", || {
        stable_only::release(&root, "mesh-agent")?;
        stable_only::release(&root, "nodemesh-tests")
    })?;
    stage("benchmark", || {
        run::status(
            std::process::Command::new(release.join("nodemesh-bench"))
                .env("NODEMESH_BIN_DIR", &release)
                .args(&args),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(args: &[&str]) -> Vec<String> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        with_defaults(Path::new("/w"), &args)
    }

    #[test]
    fn full_runs_report_to_latest_and_add_to_the_history() {
        assert_eq!(
            defaults(&["--reps", "5"]),
            [
                "--reps",
                "5",
                "--json",
                "/w/target/bench/latest.json",
                "--history",
                "/w/bench-history.jsonl"
            ]
        );
    }

    #[test]
    fn quick_runs_keep_their_own_report_and_no_history() {
        assert_eq!(
            defaults(&["--quick"]),
            ["--quick", "--json", "/w/target/bench/latest-quick.json"]
        );
    }

    #[test]
    fn files_named_by_the_caller_win() {
        assert_eq!(
            defaults(&["--json=x.json", "--history", "h"]),
            ["--json=x.json", "--history", "h"]
        );
        assert_eq!(defaults(&["--list"]), ["--list"]);
    }
}
