//! Peer authentication and L4 authorization through real agents: every
//! verdict is observed by a real client (its bytes got through or it was
//! reset) and in the destination agent's flow records.
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use nodemesh_tests::{ClusterSpec, Host, mesh::MeshConfig};

use crate::support::{
    MIB, Meshed, Source, connect, connect_paused, eventually, finished, serve, trial,
};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "policy::strict_refuses_plaintext_and_permissive_accepts_it",
            strict_and_permissive,
        ),
        trial(
            "policy::allow_and_deny_by_identity_namespace_ip_block_and_port",
            allow_and_deny,
        ),
        trial(
            "policy::on_the_api_server_the_same_verdicts_and_the_last_good_model_outlives_it",
            on_the_api_server,
        ),
        trial(
            "policy::a_policy_change_cuts_established_connections_it_denies",
            change_cuts_established,
        ),
        trial(
            "policy::istio_shaped_policies_decide_as_native_ones_do",
            istio_shaped,
        ),
        trial(
            "policy::why_resolves_a_service_to_its_endpoints_as_the_connection_does",
            why_for_a_service,
        ),
        trial(
            "policy::why_from_an_unenrolled_pod_matches_what_its_connect_does",
            why_from_unenrolled,
        ),
        trial(
            "policy::both_ends_record_the_rule_that_denied",
            both_ends_name_the_rule,
        ),
    ]
}

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
/// Service `shop/payments`: port 80 to b's 8080.
const PAYMENTS_VIP: &str = "10.96.0.20:80";
/// Denies frontend (a) on 8080, which the Service sends to.
const DENY_FRONTEND: &str = "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
     metadata:\n  name: deny-frontend\n  namespace: shop\n\
     spec:\n  action: DENY\n  rules:\n  - from:\n      identities: [\"*/sa/frontend\"]\n\
     \x20   to:\n      ports: [8080]\n";
const DENY_FRONTEND_RULE: &str = "denied by shop/deny-frontend rule 0 (DENY)";

/// n1: `a` (shop, sa frontend), `c` (enrolled namespace `other`, sa client),
/// `l` (unenrolled namespace `legacy`); n2: `b` (shop, sa payments), whose
/// app listens on 8080 and 9090, behind Service `shop/payments`
/// ([`PAYMENTS_VIP`] → 8080).
struct Shop {
    meshed: Meshed,
    _servers: Vec<nodemesh_tests::PodChild>,
}

impl Shop {
    fn start() -> anyhow::Result<Self> {
        Self::start_on(Source::Dir)
    }

    /// The shop, its agents and CA reading the model from `source`.
    fn start_on(source: Source) -> anyhow::Result<Self> {
        let cluster = ClusterSpec::cross_node_pair()
            .pod("c", "n1")
            .pod("l", "n1")
            .build()?;
        let config = MeshConfig::new()
            .namespace("shop", true)
            .namespace("other", true)
            .namespace("legacy", false)
            .pod(cluster.pod("a"), "shop")
            .pod(cluster.pod("b"), "shop")
            .pod(cluster.pod("c"), "other")
            .pod(cluster.pod("l"), "legacy")
            .service_account("a", "frontend")
            .service_account("b", "payments")
            .service_account("c", "client")
            .pod_label("b", "app", "payments")
            .service(
                "shop",
                "payments",
                PAYMENTS_VIP.parse::<SocketAddr>()?.ip(),
                (80, 8080),
                "payments",
            );
        let meshed = Meshed::start_on(source, cluster, config, 3600)?;
        let b = meshed.cluster.pod("b").clone();
        let servers = ["0.0.0.0:8080", "0.0.0.0:9090"]
            .iter()
            .map(|listen| serve(&meshed.cluster, &b, listen, 1024, 1))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            meshed,
            _servers: servers,
        })
    }

    fn pod(&self, name: &str) -> &Host {
        self.meshed.cluster.pod(name)
    }

    fn b(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::from(self.pod("b").ipv4), port)
    }

    /// Whether a fresh connection from `from` to b:`port` gets its reply.
    fn reaches(&self, from: &str, port: u16) -> anyhow::Result<bool> {
        let result = connect(&self.meshed.cluster, self.pod(from), self.b(port), 1024, 2);
        Ok(result.is_ok_and(|e| e.received == 1024))
    }

    /// Replaces the cluster's policies (one YAML file) and waits until a
    /// probe connection shows the new ones are in force.
    fn policies(&self, yaml: &str, probe: (&str, u16, bool)) -> anyhow::Result<()> {
        self.meshed.write_config("policies.yaml", yaml)?;
        let (from, port, allowed) = probe;
        eventually(
            &format!("{from} → b:{port} allowed={allowed} under the new policies"),
            || Ok(self.reaches(from, port)? == allowed),
        )
    }

    /// Checks one pair against the expected verdict, and that b's agent
    /// recorded the connection's last flow with that decision, naming `rule`.
    fn expect(&self, from: &str, port: u16, allowed: bool, rule: &str) -> anyhow::Result<()> {
        let src = self.pod(from).ipv4.to_string();
        let dst = self.b(port).to_string();
        let recorded = || {
            let mut flows = self.meshed.agent("n2").flows();
            flows.retain(|f| f.orig_dst == dst && f.src.starts_with(&src) && f.decision.is_some());
            flows
        };
        let before = recorded().len();
        ensure!(
            self.reaches(from, port)? == allowed,
            "{from} → b:{port}: expected allowed={allowed}"
        );
        self.why_agrees(from, port, allowed)?;
        // The agent records a flow when it ends, a moment after the client.
        eventually(&format!("a flow record for {from} → b:{port}"), || {
            Ok(recorded().len() > before)
        })?;
        let flow = recorded().pop().context("checked above")?;
        let want = if allowed { "allow" } else { "deny" };
        ensure!(
            flow.decision.as_deref() == Some(want)
                && flow.verdict.as_deref().is_some_and(|v| v.contains(rule)),
            "{from} → b:{port}: expected {want} by {rule:?}, recorded {flow:?}; config errors: {}",
            self.meshed.agent("n2").status()?["config_errors"]
        );
        Ok(())
    }
}

impl Shop {
    /// `meshctl why` on both agents predicts what the connection just did.
    fn why_agrees(&self, from: &str, port: u16, allowed: bool) -> anyhow::Result<()> {
        let target = self.b(port).to_string();
        for node in ["n1", "n2"] {
            // Each agent re-reads the config on its own clock: the one that
            // decided may have seen an edit a moment before the other.
            let mut answer = serde_json::Value::Null;
            let agreed = eventually(&format!("meshctl why on {node} agrees"), || {
                answer = self.why(node, from, &target)?;
                Ok((answer["decision"] == "allow") == allowed)
            });
            ensure!(
                agreed.is_ok(),
                "meshctl why on {node} predicts {} for {from} → b:{port}, but the connection was \
                 {}: {answer:#}",
                answer["decision"],
                if allowed { "allowed" } else { "refused" }
            );
        }
        Ok(())
    }

    /// Makes namespace `shop` STRICT and waits until plaintext is refused.
    fn strict(&self) -> anyhow::Result<()> {
        self.meshed.write_config(
            "peer-auth.yaml",
            "apiVersion: nodemesh.io/v1alpha1\nkind: PeerAuthentication\n\
             metadata:\n  name: strict\n  namespace: shop\nspec:\n  mode: STRICT\n",
        )?;
        eventually("STRICT refuses plaintext", || Ok(!self.reaches("l", 8080)?))
    }

    /// `meshctl why FROM TO -o json` on `node`.
    fn why(&self, node: &str, from: &str, to: &str) -> anyhow::Result<serde_json::Value> {
        let out = self
            .meshed
            .agent(node)
            .meshctl(&["why", from, to, "-o", "json"])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The newest flow record on `node` of a connection from `from` to `to`
    /// that `wanted` accepts (waiting for it).
    fn last_flow(
        &self,
        node: &str,
        from: &str,
        to: &str,
        wanted: impl Fn(&nodemesh_tests::mesh::FlowLog) -> bool,
    ) -> anyhow::Result<nodemesh_tests::mesh::FlowLog> {
        let src = self.pod(from).ipv4.to_string();
        let mut found = None;
        eventually(&format!("{node}'s flow record of {from} → {to}"), || {
            found = self
                .meshed
                .agent(node)
                .flows()
                .into_iter()
                .rev()
                .find(|f| f.src.starts_with(&src) && f.orig_dst == to && wanted(f));
            Ok(found.is_some())
        })?;
        found.context("found above")
    }
}

fn strict_and_permissive() -> anyhow::Result<()> {
    let shop = Shop::start()?;
    let n2 = shop.meshed.agent("n2");
    ensure!(
        shop.reaches("l", 8080)?,
        "PERMISSIVE (the default) refused plaintext"
    );
    shop.why_agrees("l", 8080, true)?;
    let plain = n2.wait_flow("the plaintext arrival", |f| {
        f.direction == "inbound" && f.path == "passthrough"
    })?;
    ensure!(
        plain.state == "closed" && plain.peer_identity.is_none() && plain.sent == 1024,
        "{plain:?}"
    );

    shop.strict()?;
    shop.why_agrees("l", 8080, false)?;
    let refused = n2.wait_flow("a STRICT refusal", |f| f.state == "refused")?;
    ensure!(
        refused.path == "passthrough"
            && refused
                .error
                .as_deref()
                .is_some_and(|e| e.contains("STRICT (PeerAuthentication shop/strict)")),
        "{refused:?}"
    );
    ensure!(
        shop.reaches("a", 8080)?,
        "STRICT refused tunnelled traffic from an enrolled pod"
    );
    shop.why_agrees("a", 8080, true)?;
    Ok(())
}

fn allow_and_deny() -> anyhow::Result<()> {
    allow_and_deny_in(&Shop::start()?)
}

/// Kubernetes mode: the same verdicts with every agent and the CA watching
/// an API server that serves the same objects (each policy edit reaches
/// them as a watch event). Node agents watch only their own node's pods
/// there and learn the other nodes' from the CA's workload directory, so
/// every cross-node verdict below also proves the directory delivered the
/// destination's identity. Then the API server goes away, and the agents
/// say so but keep enforcing the last policies with every pod enrolled.
fn on_the_api_server() -> anyhow::Result<()> {
    let mut shop = Shop::start_on(Source::ApiServer)?;
    let n2 = shop.meshed.agent("n2");
    let status = n2.meshctl(&["status"])?;
    ensure!(
        status.contains("model: Kubernetes API server, every watch synced"),
        "{status}"
    );
    let api = shop
        .meshed
        .api_server
        .as_mut()
        .context("started on the API server")?;
    let mut pod_selectors = std::collections::BTreeSet::new();
    while let Ok(line) = api.process.next_line(std::time::Duration::from_millis(200)) {
        let event: serde_json::Value = serde_json::from_str(&line)?;
        if event["path"] == "/api/v1/pods" {
            pod_selectors.insert(event["fieldSelector"].as_str().map(str::to_owned));
        }
    }
    ensure!(
        pod_selectors
            == [
                None,
                Some("spec.nodeName=n1".to_owned()),
                Some("spec.nodeName=n2".to_owned())
            ]
            .into(),
        "the CA lists every pod, each node agent only its node's: {pod_selectors:?}"
    );
    allow_and_deny_in(&shop)?;

    let enrolled = |agent: &nodemesh_tests::mesh::Agent| -> anyhow::Result<usize> {
        Ok(agent.status()?["pods"].as_array().map_or(0, Vec::len))
    };
    let before = [
        enrolled(shop.meshed.agent("n1"))?,
        enrolled(shop.meshed.agent("n2"))?,
    ];
    shop.meshed
        .api_server
        .as_mut()
        .context("started on the API server")?
        .stop();
    for node in ["n1", "n2"] {
        shop.meshed
            .agent(node)
            .wait_status("the lost API server", |s| {
                s["api_server"]["connected"] == false
                    && s["api_server"]["serving_last_good"] == true
            })?;
    }
    let status = shop.meshed.agent("n2").meshctl(&["status"])?;
    ensure!(
        status.contains("model: Kubernetes API server DISCONNECTED, serving the last good model"),
        "{status}"
    );
    let after = [
        enrolled(shop.meshed.agent("n1"))?,
        enrolled(shop.meshed.agent("n2"))?,
    ];
    ensure!(
        before == after,
        "pods enrolled before {before:?}, after {after:?}"
    );
    // The last policies allow_and_deny_in left in force still decide.
    last_policies_decide(&shop)
}

/// What the last policies of [`allow_and_deny_in`] decide for a: DENY by IP
/// block on 9090 wins over an ALLOW for everyone.
fn last_policies_decide(shop: &Shop) -> anyhow::Result<()> {
    shop.expect(
        "a",
        9090,
        false,
        "denied by shop/not-a-on-9090 rule 0 (DENY)",
    )?;
    shop.expect("a", 8080, true, "allowed by shop/anyone rule 0")
}

fn allow_and_deny_in(shop: &Shop) -> anyhow::Result<()> {
    let a_ip = shop.pod("a").ipv4;

    // By exact identity: only frontend may call payments.
    shop.policies(
        &format!(
            "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata:\n  name: frontend-only\n  namespace: shop\n\
             spec:\n  selector:\n    matchLabels:\n      app: payments\n  action: ALLOW\n\
             \x20 rules:\n  - from:\n      identities: [\"{FRONTEND}\"]\n"
        ),
        ("c", 8080, false),
    )?;
    shop.expect("a", 8080, true, "shop/frontend-only rule 0")?;
    shop.expect(
        "c",
        8080,
        false,
        "no rule of the ALLOW policies shop/frontend-only",
    )?;
    shop.expect(
        "l",
        8080,
        false,
        "no rule of the ALLOW policies shop/frontend-only",
    )?;

    // By namespace and port (and a suffix identity match for a second rule).
    shop.policies(
        "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata:\n  name: other-on-9090\n  namespace: shop\n\
         spec:\n  action: ALLOW\n  rules:\n\
         \x20 - from:\n      namespaces: [other]\n    to:\n      ports: [9090]\n\
         \x20 - from:\n      identities: [\"*/sa/frontend\"]\n    to:\n      ports: [8080]\n",
        ("c", 9090, true),
    )?;
    shop.expect("c", 9090, true, "shop/other-on-9090 rule 0")?;
    shop.expect(
        "c",
        8080,
        false,
        "no rule of the ALLOW policies shop/other-on-9090",
    )?;
    shop.expect("a", 8080, true, "shop/other-on-9090 rule 1")?;
    shop.expect(
        "a",
        9090,
        false,
        "no rule of the ALLOW policies shop/other-on-9090",
    )?;

    // DENY by IP block wins over an ALLOW that matches everyone; a dry-run
    // DENY is recorded but not enforced.
    shop.policies(
        &format!(
            "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata:\n  name: anyone\n  namespace: shop\n\
             spec:\n  action: ALLOW\n  rules:\n  - {{}}\n\
             ---\napiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata:\n  name: not-a-on-9090\n  namespace: shop\n\
             spec:\n  action: DENY\n  rules:\n  - from:\n      ipBlocks: [\"{a_ip}/32\"]\n\
             \x20   to:\n      ports: [9090]\n\
             ---\napiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata:\n  name: trial-deny-other\n  namespace: shop\n\
             spec:\n  action: DENY\n  dryRun: true\n  rules:\n  - from:\n      namespaces: [other]\n"
        ),
        ("c", 8080, true),
    )?;
    last_policies_decide(shop)?;
    shop.expect("c", 9090, true, "allowed by shop/anyone rule 0")?;
    let dry = shop
        .meshed
        .agent("n2")
        .flows()
        .into_iter()
        .rev()
        .find(|f| f.src.starts_with(&shop.pod("c").ipv4.to_string()) && f.decision.is_some())
        .context("c's flow")?;
    ensure!(
        dry.dry_run
            .as_deref()
            .is_some_and(|d| d.contains("shop/trial-deny-other") && d.contains("deny")),
        "the dry-run DENY is not recorded: {dry:?}"
    );

    // The source agent reports the denial too, as the destination decided it.
    let c_out = shop
        .meshed
        .agent("n1")
        .wait_flow("a's denied outbound flow", |f| {
            f.direction == "outbound" && f.state == "denied"
        })?;
    ensure!(
        c_out.error.as_deref().is_some_and(|e| e.contains("401")),
        "{c_out:?}"
    );
    Ok(())
}

fn change_cuts_established() -> anyhow::Result<()> {
    let shop = Shop::start()?;
    let cluster = &shop.meshed.cluster;
    let mut client = connect_paused(cluster, shop.pod("a"), shop.b(8080), 4 * MIB, MIB, 15_000)?;
    let mut other = connect_paused(cluster, shop.pod("c"), shop.b(9090), 2 * MIB, MIB, 3000)?;
    let started = std::time::Instant::now();
    shop.meshed.write_config(
        "policies.yaml",
        &format!(
            "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata:\n  name: no-frontend\n  namespace: shop\n\
             spec:\n  action: DENY\n  rules:\n  - from:\n      identities: [\"{FRONTEND}\"]\n"
        ),
    )?;
    let flow = shop
        .meshed
        .agent("n2")
        .wait_flow("the revoked flow", |f| f.end.as_deref() == Some("revoked"))?;
    let took = started.elapsed();
    ensure!(
        took < std::time::Duration::from_secs(10),
        "the denied connection was cut only after {took:?}"
    );
    ensure!(
        flow.error
            .as_deref()
            .is_some_and(|e| e.contains("denied by shop/no-frontend rule 0"))
            && flow.sent == MIB
            && flow.peer_identity.as_deref() == Some(FRONTEND),
        "{flow:?}"
    );
    let cut = finished(&mut client)?;
    ensure!(
        cut.is_err(),
        "the client did not see its connection cut: {cut:?}"
    );
    let kept = finished(&mut other)?.context("a connection the policy still allows was cut")?;
    ensure!(kept.sent == 2 * MIB && kept.received == 1024, "{kept:?}");
    Ok(())
}

/// Istio's documentation examples, L4 subset, in `security.istio.io` form:
/// the same outcomes as the native policies above.
const ISTIO_ALLOW: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: istio-allow
  namespace: shop
spec:
  selector:
    matchLabels:
      app: payments
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/frontend"]
    to:
    - operation:
        ports: ["8080"]
  - from:
    - source:
        namespaces: ["other"]
    to:
    - operation:
        ports: ["9090"]
"#;

const ISTIO_DENY: &str = r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: istio-deny
  namespace: shop
spec:
  action: DENY
  rules:
  - from:
    - source:
        notPrincipals: ["cluster.local/ns/shop/sa/frontend"]
    to:
    - operation:
        ports: ["9090"]
"#;

const ISTIO_STRICT: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: shop
spec:
  mtls:
    mode: STRICT
"#;

const ISTIO_PERMISSIVE_PAYMENTS: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: payments
  namespace: shop
spec:
  selector:
    matchLabels:
      app: payments
  mtls:
    mode: PERMISSIVE
"#;

fn istio_shaped() -> anyhow::Result<()> {
    let shop = Shop::start()?;

    // Allow only frontend to 8080 and namespace `other` to 9090.
    shop.policies(ISTIO_ALLOW, ("c", 8080, false))?;
    shop.expect("a", 8080, true, "allowed by shop/istio-allow rule 0")?;
    shop.expect("c", 9090, true, "allowed by shop/istio-allow rule 1")?;
    let none = "no rule of the ALLOW policies shop/istio-allow";
    shop.expect("c", 8080, false, none)?;
    shop.expect("a", 9090, false, none)?;
    shop.expect("l", 8080, false, none)?;

    // Deny 9090 to everyone but frontend; plaintext has no principal, so
    // notPrincipals takes it too.
    shop.policies(ISTIO_DENY, ("c", 9090, false))?;
    let denied = "denied by shop/istio-deny rule 0 (DENY)";
    shop.expect("c", 9090, false, denied)?;
    shop.expect("l", 9090, false, denied)?;
    shop.expect("a", 9090, true, "no ALLOW policy")?;
    shop.expect("c", 8080, true, "no ALLOW policy")?;

    // STRICT for the namespace refuses plaintext; a PERMISSIVE override
    // for payments wins over it (workload before namespace).
    shop.meshed.write_config("policies.yaml", "")?;
    shop.meshed.write_config("peer-auth.yaml", ISTIO_STRICT)?;
    eventually("STRICT refuses plaintext", || Ok(!shop.reaches("l", 8080)?))?;
    shop.why_agrees("l", 8080, false)?;
    let refused = shop
        .meshed
        .agent("n2")
        .wait_flow("a STRICT refusal", |f| f.state == "refused")?;
    ensure!(
        refused
            .error
            .as_deref()
            .is_some_and(|e| e.contains("STRICT (PeerAuthentication shop/default)")),
        "{refused:?}"
    );
    ensure!(
        shop.reaches("a", 8080)?,
        "STRICT refused tunnelled traffic from an enrolled pod"
    );
    shop.meshed.write_config(
        "peer-auth.yaml",
        &format!("{ISTIO_STRICT}---\n{ISTIO_PERMISSIVE_PAYMENTS}"),
    )?;
    eventually("the PERMISSIVE workload override accepts plaintext", || {
        shop.reaches("l", 8080)
    })?;
    shop.why_agrees("l", 8080, true)?;
    Ok(())
}

/// A Service address is judged where the data path sends it: `why` names
/// the Service, its endpoint, and the rule there, as the real connection
/// and both agents' records do.
fn why_for_a_service() -> anyhow::Result<()> {
    let shop = Shop::start()?;
    let vip: SocketAddr = PAYMENTS_VIP.parse()?;
    shop.policies(DENY_FRONTEND, ("a", 8080, false))?;
    let cluster = &shop.meshed.cluster;
    let denied = connect(cluster, shop.pod("a"), vip, 1024, 3);
    ensure!(
        !denied.as_ref().is_ok_and(|e| e.received == 1024),
        "a → {vip} got through despite the DENY: {denied:?}"
    );
    let allowed = connect(cluster, shop.pod("c"), vip, 1024, 4)?;
    ensure!(allowed.received == 1024, "c → {vip}: {allowed:?}");

    let b = shop.b(8080).to_string();
    for node in ["n1", "n2"] {
        let answer = shop.why(node, "shop/a", PAYMENTS_VIP)?;
        let endpoints = answer["endpoints"].as_array().cloned().unwrap_or_default();
        ensure!(
            answer["decision"] == "deny"
                && answer["service"] == "shop/payments"
                && answer["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(DENY_FRONTEND_RULE) && r.contains(&b))
                && endpoints.len() == 1
                && endpoints[0]["destination"]["pod"] == "shop/b"
                && endpoints[0]["port"] == 8080
                && endpoints[0]["decision"] == "deny",
            "meshctl why on {node} for a → {vip} (denied by the real connection): {answer:#}"
        );
        let answer = shop.why(node, "other/c", PAYMENTS_VIP)?;
        ensure!(
            answer["decision"] == "allow"
                && answer["endpoints"][0]["destination"]["pod"] == "shop/b",
            "meshctl why on {node} for c → {vip} (allowed by the real connection): {answer:#}"
        );
    }
    let table = shop
        .meshed
        .agent("n1")
        .meshctl(&["why", "shop/a", PAYMENTS_VIP])?;
    ensure!(
        table.contains("Service shop/payments") && table.contains("endpoint     shop/b"),
        "the table names the Service and its endpoint:\n{table}"
    );

    let source = shop.last_flow("n1", "a", PAYMENTS_VIP, |f| {
        f.direction == "outbound" && f.decision.is_some()
    })?;
    let destination = shop.last_flow("n2", "a", &b, |f| f.decision.is_some())?;
    for (side, flow) in [("source", &source), ("destination", &destination)] {
        ensure!(
            flow.state == "denied"
                && flow
                    .verdict
                    .as_deref()
                    .is_some_and(|v| v.contains(DENY_FRONTEND_RULE)),
            "the {side}'s record of a → {vip} does not name the rule `why` gave: {flow:?}"
        );
    }
    Ok(())
}

/// An unenrolled pod is not captured: a cluster IP is then nobody's
/// address, and a pod address gets plain TCP, judged by the destination.
fn why_from_unenrolled() -> anyhow::Result<()> {
    let shop = Shop::start()?;
    let cluster = &shop.meshed.cluster;
    let vip: SocketAddr = PAYMENTS_VIP.parse()?;
    let real = connect(cluster, shop.pod("l"), vip, 1024, 5);
    ensure!(real.is_err(), "l → {vip} without capture: {real:?}");
    for node in ["n1", "n2"] {
        let answer = shop.why(node, "legacy/l", PAYMENTS_VIP)?;
        ensure!(
            answer["decision"] == "unreachable"
                && answer["captured"] == false
                && answer["source"]["identity"].is_null()
                && answer["service"] == "shop/payments"
                && answer["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("not captured")),
            "meshctl why on {node} for l → {vip} (the connect failed: {real:?}): {answer:#}"
        );
    }

    shop.strict()?;
    let b = shop.b(8080).to_string();
    let answer = shop.why("n2", "legacy/l", &b)?;
    ensure!(
        answer["decision"] == "refused"
            && answer["path"] == "passthrough"
            && answer["reason"]
                .as_str()
                .is_some_and(|r| r.contains("without mTLS") && r.contains("STRICT")),
        "meshctl why for l → b under STRICT: {answer:#}"
    );
    Ok(())
}

/// A DENY at the destination is named by both ends: the destination tells
/// the source the rule on the refused CONNECT.
fn both_ends_name_the_rule() -> anyhow::Result<()> {
    let shop = Shop::start()?;
    shop.policies(DENY_FRONTEND, ("a", 8080, false))?;
    let b = shop.b(8080).to_string();
    // The source records the refused connection a moment after the client
    // saw it refused, and earlier probes (allowed, before the policy took)
    // are recorded too: wait for the one that carries a decision.
    let source = shop.last_flow("n1", "a", &b, |f| {
        f.direction == "outbound" && f.decision.is_some()
    })?;
    let destination = shop.last_flow("n2", "a", &b, |f| f.decision.is_some())?;
    ensure!(
        source.state == "denied"
            && source.verdict.is_some()
            && source.verdict == destination.verdict
            && source.decision.as_deref() == Some("deny"),
        "the ends disagree on why:\n source {source:?}\n destination {destination:?}"
    );
    ensure!(
        destination.verdict.as_deref() == Some(DENY_FRONTEND_RULE),
        "{destination:?}"
    );
    for node in ["n1", "n2"] {
        let table = shop
            .meshed
            .agent(node)
            .meshctl(&["flows", "--verdict", "denied"])?;
        ensure!(
            table.contains("denied (shop/deny-frontend#0)"),
            "meshctl flows on {node}:\n{table}"
        );
    }
    Ok(())
}
