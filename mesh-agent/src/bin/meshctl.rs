//! `meshctl`: the nodemesh command-line interface.
use clap::{Parser, Subcommand};

/// Inspect and operate a nodemesh data plane.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print meshctl's version.
    Version,
}

fn main() {
    match Cli::parse().command {
        Command::Version => println!("meshctl {}", env!("CARGO_PKG_VERSION")),
    }
}
