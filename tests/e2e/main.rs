//! nodemesh's end-to-end tests: real namespaces, real kernel programs, real
//! processes. Needs root; run through `cargo xtask test`.
//!
//! A custom main (libtest-mimic) so that, after every test has run, the suite
//! checks that nothing it created is left on the machine.
use std::process::ExitCode;

use libtest_mimic::Arguments;
use nodemesh_tests::{cluster::suite_prefix, leaks, require_root};

mod agent;
mod capture;
mod check;
mod demo;
mod flows;
mod harness;
mod hostile;
mod identity;
mod kubernetes;
mod network;
mod policy;
mod support;
mod tunnel;
mod waypoint;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    if let Err(e) = require_root() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let trials = [
        harness::trials(),
        network::trials(),
        capture::trials(),
        agent::trials(),
        identity::trials(),
        tunnel::trials(),
        hostile::trials(),
        policy::trials(),
        kubernetes::trials(),
        flows::trials(),
        waypoint::trials(),
        demo::trials(),
        check::trials(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let conclusion = libtest_mimic::run(&args, trials);

    match leaks::find(&suite_prefix()) {
        Ok(left) if left.is_empty() => conclusion.exit_code(),
        Ok(left) => {
            eprintln!("error: the suite left resources behind (a teardown has a hole): {left}");
            if let Err(e) = leaks::sweep(&left) {
                eprintln!("error: removing them failed too: {e:#}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: leak check failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
