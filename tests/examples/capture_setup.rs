//! Connection setup cost of capture: the same churn loop (connect, 100-byte
//! exchange, close; 2000 times) from pod a on node 1 to pod b on node 2,
//! direct and through both agents, interleaved. Run as root:
//! `cargo build --bins && cargo run -p nodemesh-tests --example capture_setup`.
//! A quick figure for notes; `cargo xtask bench` is the full instrument.
use std::{net::SocketAddr, process::Command, time::Duration};

use nodemesh_tests::{
    ClusterSpec,
    mesh::{Agent, MeshConfig, workspace_binary},
};

fn main() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair().build()?;
    let (a, b) = (cluster.pod("a"), cluster.pod("b"));
    let traffic = workspace_binary("mesh-traffic")?;
    let traffic = traffic.as_path();
    let mut serve = Command::new(traffic);
    serve.args(["serve", "--listen", "[::]:7000", "--reply-bytes", "100"]);
    let mut server = cluster.spawn(b, serve)?;
    server.next_line(Duration::from_secs(5))?;
    let config_dir = cluster.scratch_dir("config")?;
    let target = SocketAddr::new(b.ipv4.into(), 7000);
    let churn = |label: &str| -> anyhow::Result<()> {
        let mut cmd = Command::new(traffic);
        cmd.args(["churn", "--count", "2000", "--to", &target.to_string()]);
        let out = cluster.run(a, cmd, Duration::from_secs(120))?;
        println!("{label:<8} {}", out.trim());
        Ok(())
    };
    let mesh_on = |enabled: bool| {
        MeshConfig::new()
            .namespace("shop", enabled)
            .pod(a, "shop")
            .pod(b, "shop")
            .write(&cluster, &config_dir)
    };
    mesh_on(false)?;
    let agents = [
        Agent::start(&cluster, "n1", &config_dir)?,
        Agent::start(&cluster, "n2", &config_dir)?,
    ];
    for round in 0..3 {
        mesh_on(false)?;
        for agent in &agents {
            agent.wait_status("no pods", |s| {
                s["pods"].as_array().is_some_and(Vec::is_empty)
            })?;
        }
        churn(&format!("direct{round}"))?;
        mesh_on(true)?;
        for agent in &agents {
            agent.wait_status("one pod", |s| {
                s["pods"].as_array().is_some_and(|p| p.len() == 1)
            })?;
        }
        churn(&format!("mesh{round}"))?;
    }
    Ok(())
}
