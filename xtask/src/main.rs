//! `cargo xtask …`: the project's own commands, so a fresh machine needs
//! nothing but cargo to build, test and run nodemesh.
use clap::{Parser, Subcommand};

mod bench;
mod demo;
#[path = "../../mesh-agent/ebpf_toolchain.rs"]
#[allow(
    dead_code,
    reason = "shared with the agent build script, which uses the build part"
)]
mod ebpf_toolchain;
mod image;
mod run;
mod setup;
mod stable_only;
mod test;

#[derive(Parser)]
#[command(
    about = "nodemesh developer commands",
    after_help = "Examples:\n  \
        cargo xtask setup     # install every prerequisite (idempotent)\n  \
        sudo -E cargo xtask demo   # a meshed two-node cluster on this machine, with live traffic\n  \
        sudo -E cargo xtask bench --quick --json bench.json   # mesh vs direct, side by side\n  \
        cargo xtask image     # the OCI image deploy/ runs, as target/image/nodemesh-<version>.oci.tar\n  \
        sudo -E cargo xtask test   # the whole test suite, as CI runs it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install every prerequisite (apt packages, bpf-linker, the eBPF Rust
    /// toolchain, bpffs). Checks before installing: a second run does nothing.
    Setup,
    /// Run everything CI runs: setup, rustfmt, clippy (host and eBPF),
    /// unit tests, and the end-to-end tests on real network namespaces (root).
    Test(test::TestArgs),
    /// Run the demo: a simulated two-node cluster on this machine (root),
    /// a mesh CA and agents, real apps and traffic, a summary from the
    /// agents' flow records, then commands to try; Ctrl-C removes it all.
    Demo(demo::DemoArgs),
    /// Benchmark the mesh against direct connections in the same run
    /// (release build, root): throughput, latency, churn, agent CPU and
    /// memory. `cargo xtask bench -- --quick` for a smoke run.
    Bench(bench::BenchArgs),
    /// Build the OCI image the Kubernetes manifests run, without a container
    /// engine: mesh-agent's binaries (release, statically linked, built with
    /// only rustup's stable toolchain) in /usr/local/bin, written by umoci as
    /// an image layout (target/image/oci) and an oci-archive tarball
    /// (target/image/nodemesh-<version>.oci.tar). Prints how to load it.
    Image(image::ImageArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run().map(|_| ()),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Image(args) => image::run(&args),
    }
}
