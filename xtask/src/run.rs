//! Running external commands with their full command line in every error.
use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs `cmd`, inheriting stdio; fails unless it exits 0.
pub fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// True when `cmd` runs and exits 0 (its output is discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|out| out.status.success())
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

/// `cargo` (the one running xtask), in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds the agent, `meshctl` and the harness's programs (demo, bench,
/// traffic tool) in the dev profile.
pub fn build_bins() -> anyhow::Result<()> {
    status(cargo().args([
        "build",
        "--package",
        "mesh-agent",
        "--package",
        "nodemesh-tests",
        "--bins",
    ]))
}
