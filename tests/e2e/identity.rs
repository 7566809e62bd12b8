//! The mesh CA as real processes: `mesh-agent ca init / issue-node / serve /
//! request`, with the cluster's own YAML as the CA's view of pods.
use std::{os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use mesh_agent::identity::verify::{PeerRole, TrustBundle};
use nodemesh_tests::mesh::{Agent, ApiServer, Pki, workspace_binary, write_atomically};

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
        trial(
            "identity::agents_bootstrap_with_tokens_on_kubernetes",
            agents_bootstrap_with_tokens_on_kubernetes,
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

const AGENT_ACCOUNT: &str = "system:serviceaccount:nodemesh-system:nodemesh-agent";
const NOT_READY: &str = "nodemesh.io/agent-not-ready";

/// Kubernetes mode end to end, through real processes: the API server
/// (`nodemesh-apiserver`) answers TokenReviews and holds Nodes tainted
/// not-ready; the CA serves with `--kubernetes`; agents come with nothing
/// but a token and the CA's root. A pod's token is refused with the reason;
/// the agents' tokens get their node credentials and then certificates for
/// their pods; each agent, once ready, lifts only its taint off its Node;
/// the CA marks an invalid nodemesh.io policy, and accepts it once fixed.
fn agents_bootstrap_with_tokens_on_kubernetes() -> anyhow::Result<()> {
    let (cluster, config_dir) = shop_pair()?;
    let gpu = r#"{"key":"example.com/gpu","value":"true","effect":"NoSchedule"}"#;
    let taint = format!(r#"{{"key":"{NOT_READY}","value":"true","effect":"NoExecute"}}"#);
    write_atomically(
        &config_dir.join("nodes.yaml"),
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{taints: [{gpu}, {taint}]}}\n\
             ---\napiVersion: v1\nkind: Node\nmetadata: {{name: n2}}\nspec: {{taints: [{taint}]}}\n"
        ),
    )?;
    let policy = |from: &str| {
        format!(
            "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: deny-legacy, namespace: shop}}\n\
             spec: {{action: DENY, rules: [{{from: {{{from}: [legacy]}}}}]}}\n"
        )
    };
    write_atomically(&config_dir.join("policies.yaml"), &policy("namespace"))?;
    let mut api = ApiServer::start_with_tokens(
        &cluster,
        &config_dir,
        &[
            format!("token-of-n1={AGENT_ACCOUNT}@n1"),
            format!("token-of-n2={AGENT_ACCOUNT}@n2"),
            "token-of-a-pod=system:serviceaccount:shop:default@n1".to_owned(),
        ],
    )?;
    let mut pki = Pki::init(&cluster, &[])?;
    pki.serve(&cluster, &config_dir, 3600)?;
    let token_file = |token: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = cluster.scratch_dir("tokens")?.join(token);
        std::fs::write(&path, format!("{token}\n"))?;
        Ok(path)
    };

    let impostor = Agent::spawn(
        &cluster,
        "n1",
        &config_dir,
        &pki.token_agent_args(&token_file("token-of-a-pod")?),
    )?;
    impostor
        .process
        .wait_stderr_line(WAIT, "the CA's refusal", |l| {
            l.contains("no node credentials yet")
                && l.contains("belongs to system:serviceaccount:shop:default")
        })?;
    ensure!(
        !impostor.process.stderr().contains("token-of-a-pod"),
        "the agent logged its token"
    );
    drop(impostor);
    let ca_log = pki.server().context("the CA runs")?.stderr();
    ensure!(
        ca_log.contains("node credentials refused") && !ca_log.contains("token-of-a-pod"),
        "the CA must log the refusal, never the token:\n{ca_log}"
    );

    let mut agents = Vec::new();
    for (node, pod) in [("n1", "shop/a"), ("n2", "shop/b")] {
        let token = token_file(&format!("token-of-{node}"))?;
        let agent = Agent::start_with(&cluster, node, &config_dir, &pki.token_agent_args(&token))?;
        agent.wait_status(&format!("a certificate for {pod}"), |s| {
            s["certs"].as_array().is_some_and(|certs| {
                certs.iter().any(|c| {
                    c["pod"] == pod && c["identity"] == "spiffe://cluster.local/ns/shop/sa/default"
                })
            })
        })?;
        agents.push(agent);
    }

    // What the API server was asked to write, as it reports it.
    let mut taints = std::collections::BTreeMap::new();
    let mut accepted = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    let mut fixed = false;
    while taints.len() < 2
        || accepted
            .last()
            .is_none_or(|a: &(String, String)| a.0 != "True")
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = api.process.next_line(left).with_context(|| {
            format!(
                "waiting for the taints and conditions: taints {taints:?}, conditions {accepted:?}"
            )
        })?;
        let event: serde_json::Value = serde_json::from_str(&line)?;
        if event["event"] != "patched" {
            continue;
        }
        let path = event["path"].as_str().unwrap_or_default();
        let object = &event["object"];
        if let Some(node) = path.strip_prefix("/api/v1/nodes/") {
            taints.insert(node.to_owned(), object["spec"]["taints"].clone());
        } else if path
            == "/apis/nodemesh.io/v1alpha1/namespaces/shop/authorizationpolicies/deny-legacy/status"
        {
            let condition = &object["status"]["conditions"][0];
            accepted.push((
                condition["status"].as_str().unwrap_or_default().to_owned(),
                condition["message"].as_str().unwrap_or_default().to_owned(),
            ));
            if !fixed {
                fixed = true;
                write_atomically(&config_dir.join("policies.yaml"), &policy("namespaces"))?;
            }
        }
    }
    ensure!(
        taints["n1"] == serde_json::from_str::<serde_json::Value>(&format!("[{gpu}]"))?
            && taints["n2"] == serde_json::json!([]),
        "only the not-ready taint lifted: {taints:?}"
    );
    ensure!(
        accepted.len() == 2
            && accepted[0].0 == "False"
            && accepted[0].1.contains("field spec.rules[0].from")
            && accepted[0].1.contains("`namespace`"),
        "the invalid policy marked, then accepted once fixed: {accepted:?}"
    );
    Ok(())
}
