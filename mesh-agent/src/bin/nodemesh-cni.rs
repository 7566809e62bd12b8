//! `nodemesh-cni`: the chained CNI plugin that holds each new pod sandbox of
//! an enrolled namespace until the node agent has enrolled it. The container
//! runtime runs it; `mesh-agent cni install` puts it on the node. See
//! `mesh_agent::node::cni::plugin` for what it does.
use std::io::Read as _;

use mesh_agent::node::cni::{plugin, protocol};

fn main() -> std::process::ExitCode {
    let env = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = String::new();
    // VERSION may come with nothing on stdin; anything else the plugin
    // reports as an unreadable configuration.
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let outcome = plugin::run(
        &plugin::Invocation {
            env: &env,
            stdin: &stdin,
        },
        protocol::ask,
    );
    if let Some(line) = &outcome.log {
        eprintln!("{line}");
    }
    print!("{}", outcome.stdout);
    if outcome.success {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
