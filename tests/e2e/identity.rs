//! The mesh CA as real processes: `mesh-agent ca init / issue-node / serve /
//! request`, with the cluster's own YAML as the CA's view of pods.
use std::{os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use mesh_agent::identity::verify::{PeerRole, TrustBundle};
use nodemesh_tests::{
    ClusterSpec,
    mesh::{MeshConfig, workspace_binary},
};

use crate::support::{WAIT, trial};

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "identity::ca_signs_only_for_pods_on_the_requesting_node",
        ca_signs_only_for_pods_on_the_requesting_node,
    )]
}

fn ca_signs_only_for_pods_on_the_requesting_node() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair().build()?;
    let config_dir = cluster.scratch_dir("config")?;
    MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("b"), "shop")
        .write(&cluster, &config_dir)?;
    let pki = cluster.scratch_dir("pki")?;
    let agent = workspace_binary("mesh-agent")?;
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&agent).args(args).output()?;
        ensure!(
            out.status.success(),
            "mesh-agent {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let path = |p: &str| pki.join(p).display().to_string();
    cli(&["ca", "init", "--dir", &path("ca")])?;
    for node in ["n1", "n2"] {
        cli(&[
            "ca",
            "issue-node",
            "--dir",
            &path("ca"),
            "--node",
            node,
            "--out",
            &path(node),
        ])?;
    }

    // The CA runs in node n1's namespace; requests come from there too.
    let n1 = cluster.node("n1");
    let mut serve = Command::new(&agent);
    serve
        .args([
            "ca",
            "serve",
            "--dir",
            &path("ca"),
            "--listen",
            "127.0.0.1:15012",
        ])
        .arg("--config-dir")
        .arg(&config_dir);
    let ca = cluster.spawn(n1, serve)?;
    ca.wait_stderr_line(Duration::from_secs(10), "the CA serving", |l| {
        l.contains("CA serving")
    })?;
    let request = |credentials: &str, pod: &str| -> anyhow::Result<(bool, String)> {
        let mut cmd = Command::new(&agent);
        cmd.args(["ca", "request", "--ca", "127.0.0.1:15012"])
            .args(["--credentials", &path(credentials), "--pod", pod])
            .args(["--out", &path(&format!("out-{credentials}"))]);
        let mut child = cluster.spawn(n1, cmd)?;
        let (status, stdout) = child.wait_output(WAIT)?;
        Ok((status.success(), format!("{stdout}{}", child.stderr())))
    };

    let (ok, out) = request("n1", "shop/a")?;
    ensure!(
        ok && out.contains("spiffe://cluster.local/ns/shop/sa/default"),
        "n1 asking for its own pod a: {out}"
    );
    let key_mode = std::fs::metadata(pki.join("out-n1/a.key"))?
        .permissions()
        .mode()
        & 0o777;
    ensure!(key_mode == 0o600, "pod key mode {key_mode:o}");
    let bundle = TrustBundle::from_pem(
        "cluster.local",
        &std::fs::read_to_string(pki.join("n1/bundle.crt"))?,
    )?;
    let cert = TrustBundle::certs_from_pem(&std::fs::read_to_string(pki.join("out-n1/a.crt"))?)?;
    let id = bundle.verify(&cert, std::time::SystemTime::now(), PeerRole::Server)?;
    ensure!(
        id.to_string() == "spiffe://cluster.local/ns/shop/sa/default",
        "{id}"
    );

    let (ok, out) = request("n1", "shop/b")?;
    ensure!(
        !ok && out.contains("runs on node n2"),
        "n1 asking for n2's pod b was not refused: {out}"
    );
    ca.wait_stderr_line(Duration::from_secs(5), "a logged refusal", |l| {
        l.contains("WARN") && l.contains("refused") && l.contains("shop/b")
    })
    .context("the CA must log refusals")?;

    let (ok, out) = request("n2", "shop/b")?;
    ensure!(ok, "n2 asking for its own pod b: {out}");
    Ok(())
}
