//! Quick figures for the tunnel: cross-node throughput (64 MiB each way on
//! one connection) and request/response latency (1 KiB echo, 1 and 32
//! persistent connections), direct (c → d, unenrolled) and through HBONE
//! (a → b, enrolled, with identities), interleaved over 3 rounds. Run as root
//! with release binaries:
//! `cargo build --release --bins && NODEMESH_BIN_DIR=target/release cargo run --release -p nodemesh-tests --example tunnel_figures`.
//! A figure for notes; `cargo xtask bench` is the full instrument.
use std::{net::SocketAddr, process::Command, time::Duration};

use nodemesh_tests::{
    ClusterSpec, Host,
    mesh::{Agent, MeshConfig, Pki, workspace_binary},
};

fn main() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair()
        .pod("c", "n1")
        .pod("d", "n2")
        .build()?;
    let config_dir = cluster.scratch_dir("config")?;
    MeshConfig::new()
        .namespace("shop", true)
        .namespace("legacy", false)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("b"), "shop")
        .pod(cluster.pod("c"), "legacy")
        .pod(cluster.pod("d"), "legacy")
        .write(&cluster, &config_dir)?;
    let mut pki = Pki::init(&cluster, &["n1", "n2"])?;
    pki.serve(&cluster, &config_dir, 3600)?;
    let _agents = ["n1", "n2"]
        .map(|node| Agent::start_with(&cluster, node, &config_dir, &pki.agent_args(node)));
    let traffic = workspace_binary("mesh-traffic")?;
    let mut servers = Vec::new();
    for server in ["b", "d"] {
        for args in [
            [
                "serve",
                "--listen",
                "0.0.0.0:7000",
                "--reply-bytes",
                "67108864",
            ]
            .as_slice(),
            ["echo", "--listen", "0.0.0.0:7001"].as_slice(),
        ] {
            let mut cmd = Command::new(&traffic);
            cmd.args(args);
            let mut child = cluster.spawn(cluster.pod(server), cmd)?;
            child.next_line(Duration::from_secs(5))?;
            servers.push(child);
        }
    }
    // Certificates arrive within a second of enrolment.
    std::thread::sleep(Duration::from_secs(2));
    let run = |from: &Host, to: &Host, args: &[&str]| -> anyhow::Result<String> {
        let mut cmd = Command::new(&traffic);
        cmd.args(args);
        let port = if args[0] == "connect" { 7000 } else { 7001 };
        cmd.arg("--to")
            .arg(SocketAddr::new(to.ipv4.into(), port).to_string());
        let started = std::time::Instant::now();
        let out = cluster.run(from, cmd, Duration::from_secs(300))?;
        Ok(if args[0] == "connect" {
            format!("{:.0} MiB/s", 128.0 / started.elapsed().as_secs_f64())
        } else {
            out.trim().to_owned()
        })
    };
    let pairs = [
        ("direct", cluster.pod("c"), cluster.pod("d")),
        ("mesh", cluster.pod("a"), cluster.pod("b")),
    ];
    for round in 0..3 {
        for (label, from, to) in pairs {
            println!(
                "round {round} {label:<6} bulk   {}",
                run(from, to, &["connect", "--send-bytes", "67108864"])?
            );
            println!(
                "round {round} {label:<6} rr x1  {}",
                run(from, to, &["rr", "--requests", "5000"])?
            );
            println!(
                "round {round} {label:<6} rr x32 {}",
                run(
                    from,
                    to,
                    &["rr", "--connections", "32", "--requests", "500"]
                )?
            );
        }
    }
    Ok(())
}
