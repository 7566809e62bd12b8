//! `cargo xtask demo`: the main job in one command. Installs what is
//! missing, builds the agent, `meshctl` and the demo, then runs the demo (a
//! meshed two-node cluster on this machine; see `tests/src/bin/nodemesh-demo.rs`).
use anyhow::bail;

use crate::{run, setup, test::stage};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stop by itself after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    summary_json: Option<std::path::PathBuf>,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the demo needs root: it creates network namespaces and cgroups and loads eBPF \
             programs. Run: sudo -E cargo xtask demo"
        );
    }
    stage("setup", || setup::run().map(|_| ()))?;
    stage("build", run::build_bins)?;
    let mut demo =
        std::process::Command::new(run::workspace_root().join("target/debug/nodemesh-demo"));
    if let Some(d) = args.duration {
        demo.args(["--duration", &d.to_string()]);
    }
    if let Some(f) = &args.summary_json {
        demo.arg("--summary-json").arg(f);
    }
    run::status(&mut demo)
}
