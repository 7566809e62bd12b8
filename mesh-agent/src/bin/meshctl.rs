//! `meshctl`: the nodemesh command-line interface.
use std::{io::IsTerminal as _, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use mesh_agent::admin::status::Status;

/// Inspect and operate a nodemesh data plane.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the local agent's capture state: every enrolled pod, whether
    /// each capture hook is attached and has fired, and the capture counters.
    #[command(after_help = "Examples:\n  \
        meshctl status\n  \
        meshctl status --run-dir /tmp/demo/run-n1 -o json")]
    Status {
        /// The agent's run directory (its --run-dir).
        #[arg(long, default_value = "/run/nodemesh")]
        run_dir: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print meshctl's version.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Status { run_dir, output } => {
            let status = Status::read(&run_dir)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => print_status(&status),
            }
            let broken = status
                .pods
                .iter()
                .filter(|p| !p.problems.is_empty())
                .count();
            if broken > 0 {
                anyhow::bail!("{broken} enrolled pod(s) are not fully captured (see PROBLEMS)");
            }
        }
        Command::Version => println!("meshctl {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}

fn print_status(status: &Status) {
    let red = |text: &str| {
        if std::io::stdout().is_terminal() {
            format!("\x1b[31m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    println!(
        "node {}  agent {}  enrolled pods {}",
        status.node,
        status.version,
        status.pods.len()
    );
    println!();
    println!(
        "{:<28} {:>10} {:>10}  PROBLEMS",
        "POD", "OUTBOUND", "INBOUND"
    );
    for pod in &status.pods {
        let hook = |h: &mesh_agent::capture::enrol::HookStatus| {
            if h.attached {
                h.captured.to_string()
            } else {
                "DETACHED".to_owned()
            }
        };
        let problems = if pod.problems.is_empty() {
            "-".to_owned()
        } else {
            red(&pod.problems.join("; "))
        };
        println!(
            "{:<28} {:>10} {:>10}  {problems}",
            pod.pod,
            hook(&pod.outbound),
            hook(&pod.inbound)
        );
    }
    println!();
    println!("{:<10} {:<20} {:>10}", "HOOK", "COUNTER", "VALUE");
    for c in status.counters.iter().filter(|c| c.value > 0) {
        println!("{:<10} {:<20} {:>10}", c.hook, c.counter, c.value);
    }
    for error in &status.config_errors {
        println!("{}", red(&format!("config error: {error}")));
    }
}
