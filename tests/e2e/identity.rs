//! The mesh CA as real processes: `mesh-agent ca init / issue-node / serve /
//! request`, with the cluster's own YAML as the CA's view of pods.
use std::{os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use mesh_agent::identity::verify::{PeerRole, TrustBundle};
use nodemesh_tests::mesh::{Agent, Pki, workspace_binary};

use crate::support::{WAIT, shop_pair, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "identity::ca_signs_only_for_pods_on_the_requesting_node",
            ca_signs_only_for_pods_on_the_requesting_node,
        ),
        trial(
            "identity::agents_obtain_and_renew_pod_certificates",
            agents_obtain_and_renew_pod_certificates,
        ),
    ]
}

/// Two nodes with pods a (n1) and b (n2) in enrolled namespace `shop`, and
/// a mesh CA with credentials for both nodes.
struct CaFixture {
    cluster: nodemesh_tests::Cluster,
    config_dir: std::path::PathBuf,
    pki: Pki,
}

impl CaFixture {
    fn new() -> anyhow::Result<Self> {
        let (cluster, config_dir) = shop_pair()?;
        let pki = Pki::init(&cluster, &["n1", "n2"])?;
        Ok(Self {
            cluster,
            config_dir,
            pki,
        })
    }
}

fn agents_obtain_and_renew_pod_certificates() -> anyhow::Result<()> {
    let mut fixture = CaFixture::new()?;
    let (cluster, config_dir) = (&fixture.cluster, &fixture.config_dir);
    // 6 s certificates make renewal (at half-life) observable.
    fixture.pki.serve(cluster, config_dir, 6)?;
    let pki = &fixture.pki;

    for (node, pod) in [("n1", "shop/a"), ("n2", "shop/b")] {
        let agent = Agent::start_with(cluster, node, config_dir, &pki.agent_args(node))?;
        let cert_of = |status: &serde_json::Value| {
            status["certs"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["pod"] == pod).cloned())
        };
        let first = agent.wait_status(&format!("a certificate for {pod}"), |s| {
            cert_of(s).is_some()
        })?;
        let first = cert_of(&first).context("cert")?;
        ensure!(
            first["identity"] == "spiffe://cluster.local/ns/shop/sa/default",
            "{pod} got {first}"
        );
        let renewed = agent.wait_status(&format!("{pod}'s certificate renewed"), |s| {
            cert_of(s).is_some_and(|c| c["issued"].as_u64() >= Some(2))
        })?;
        let renewed = cert_of(&renewed).context("cert")?;
        ensure!(
            renewed["serial"] != first["serial"]
                && renewed["not_after_unix"].as_u64() > first["not_after_unix"].as_u64(),
            "renewal did not produce a newer certificate: {first} then {renewed}"
        );
    }
    Ok(())
}

fn ca_signs_only_for_pods_on_the_requesting_node() -> anyhow::Result<()> {
    let fixture = CaFixture::new()?;
    let (cluster, config_dir) = (&fixture.cluster, &fixture.config_dir);
    let agent = &workspace_binary("mesh-agent")?;
    let path = |p: &str| fixture.pki.path(p);

    // The CA runs in node n1's namespace; requests come from there too.
    let n1 = cluster.node("n1");
    let mut serve = Command::new(agent);
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
        .arg(config_dir);
    let ca = cluster.spawn(n1, serve)?;
    ca.wait_stderr_line(Duration::from_secs(10), "the CA serving", |l| {
        l.contains("CA serving")
    })?;
    let request = |credentials: &str, pod: &str| -> anyhow::Result<(bool, String)> {
        let mut cmd = Command::new(agent);
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
    let key_mode = std::fs::metadata(fixture.pki.dir.join("out-n1/a.key"))?
        .permissions()
        .mode()
        & 0o777;
    ensure!(key_mode == 0o600, "pod key mode {key_mode:o}");
    let bundle = TrustBundle::from_pem(
        "cluster.local",
        &std::fs::read_to_string(fixture.pki.dir.join("n1/bundle.crt"))?,
    )?;
    let cert = TrustBundle::certs_from_pem(&std::fs::read_to_string(
        fixture.pki.dir.join("out-n1/a.crt"),
    )?)?;
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
