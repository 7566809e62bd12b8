//! `mesh-agent`: the per-node nodemesh agent.
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mesh_agent::capture::{Capture, cgroup};

/// The nodemesh node agent: captures enrolled pods' TCP with eBPF and carries
/// it over mutual TLS to the destination node's agent.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = "Examples:\n  mesh-agent check        # can this kernel run nodemesh?")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this machine can run the agent: loads every capture program
    /// through the kernel verifier (attaching nothing) and finds cgroup v2.
    Check,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Check => check(),
    }
}

fn check() -> anyhow::Result<()> {
    let kernel = nix::sys::utsname::uname().context("uname")?;
    println!("kernel        {}", kernel.release().to_string_lossy());
    let mount = cgroup::cgroup2_mount()?;
    println!("cgroup v2     {}", mount.display());
    let capture = Capture::load()?;
    let counters = capture.counters()?;
    println!(
        "eBPF          programs load and verify ({} counters readable)",
        counters.iter().count()
    );
    println!("ok: this machine can run mesh-agent");
    Ok(())
}
