//! Policy decisions as a table, and policy objects through local mode.
use std::{net::IpAddr, path::Path};

use super::{
    Decision, Policy,
    api::{AuthorizationPolicy, Mode},
    eval::{Connection, DryRun, Reason, Would},
    evaluate,
};
use crate::{identity::SpiffeId, state::load_dir};

fn policy(yaml: &str) -> Policy {
    let api: AuthorizationPolicy = serde_yaml_ng::from_str(yaml).expect("test policy parses");
    Policy::compile(api).expect("test policy compiles")
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

const ONLY_FRONTEND: &str = "
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: only-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: payments}}
  action: ALLOW
  rules:
  - from: {identities: [spiffe://cluster.local/ns/shop/sa/frontend]}
    to: {ports: [8080]}
  - from: {namespaces: [ops], ipBlocks: [10.9.0.0/16]}
";

const DENY_LEGACY: &str = "
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: shop}
spec:
  action: DENY
  rules:
  - from: {identities: ['spiffe://cluster.local/ns/legacy/*', '*/sa/intruder']}
  - from: {ipBlocks: [10.66.0.13]}
";

#[test]
fn decisions_follow_deny_then_allow_semantics() {
    let allow = policy(ONLY_FRONTEND);
    let deny = policy(DENY_LEGACY);
    let frontend = id("spiffe://cluster.local/ns/shop/sa/frontend");
    let ops = id("spiffe://cluster.local/ns/ops/sa/debugger");
    let legacy = id("spiffe://cluster.local/ns/legacy/sa/client");
    let intruder = id("spiffe://cluster.local/ns/shop/sa/intruder");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let both = [&allow, &deny];
    let deny_only = [&deny];
    let conn = |source, source_ip: &str, port| Connection {
        source,
        source_ip: ip(source_ip),
        destination_ip: "10.2.0.12".parse().unwrap(),
        port,
        request: None,
    };
    let allowed_by = |policy: &str, rule| Reason::AllowedBy {
        policy: policy.into(),
        rule,
    };
    let denied_by = |policy: &str, rule| Reason::DeniedBy {
        policy: policy.into(),
        rule,
    };
    let no_allow = Reason::NoAllowRuleMatched {
        policies: vec!["shop/only-frontend".into()],
    };
    let table: Vec<(&str, &[&Policy], Connection<'_>, Decision, Reason)> = vec![
        (
            "no policy",
            &[],
            conn(None, "10.1.0.11", 80),
            Decision::Allow,
            Reason::NoAllowPolicy,
        ),
        (
            "exact identity and port",
            &both,
            conn(Some(&frontend), "10.1.0.11", 8080),
            Decision::Allow,
            allowed_by("shop/only-frontend", 0),
        ),
        (
            "right identity, wrong port",
            &both,
            conn(Some(&frontend), "10.1.0.11", 9090),
            Decision::Deny,
            no_allow.clone(),
        ),
        (
            "namespace AND ip block",
            &both,
            conn(Some(&ops), "10.9.3.4", 1234),
            Decision::Allow,
            allowed_by("shop/only-frontend", 1),
        ),
        (
            "namespace, ip outside block",
            &both,
            conn(Some(&ops), "10.8.3.4", 1234),
            Decision::Deny,
            no_allow.clone(),
        ),
        (
            "ip block as IPv4-mapped IPv6",
            &both,
            conn(Some(&ops), "::ffff:10.9.0.1", 1),
            Decision::Allow,
            allowed_by("shop/only-frontend", 1),
        ),
        (
            "plaintext never matches identity rules",
            &both,
            conn(None, "10.9.3.4", 8080),
            Decision::Deny,
            no_allow.clone(),
        ),
        (
            "DENY by identity prefix wins",
            &both,
            conn(Some(&legacy), "10.9.3.4", 8080),
            Decision::Deny,
            denied_by("shop/deny-legacy", 0),
        ),
        (
            "DENY by identity suffix",
            &both,
            conn(Some(&intruder), "10.1.0.11", 8080),
            Decision::Deny,
            denied_by("shop/deny-legacy", 0),
        ),
        (
            "DENY by single address, even for frontend",
            &both,
            conn(Some(&frontend), "10.66.0.13", 8080),
            Decision::Deny,
            denied_by("shop/deny-legacy", 1),
        ),
        (
            "only a DENY policy: the rest is allowed",
            &deny_only,
            conn(None, "10.1.0.11", 80),
            Decision::Allow,
            Reason::NoAllowPolicy,
        ),
    ];
    for (name, policies, c, decision, reason) in table {
        let v = evaluate(policies, &c);
        assert_eq!((v.decision, &v.reason), (decision, &reason), "{name}");
    }
}

#[test]
fn rules_and_empty_policies_behave_like_istio() {
    let deny_all = policy(
        "{apiVersion: nodemesh.io/v1alpha1, kind: AuthorizationPolicy, metadata: {name: lock, namespace: shop}, spec: {}}",
    );
    let allow_any = policy(
        "{apiVersion: nodemesh.io/v1alpha1, kind: AuthorizationPolicy, metadata: {name: open, namespace: shop}, spec: {rules: [{}]}}",
    );
    let c = Connection {
        source: None,
        source_ip: "10.1.0.11".parse().unwrap(),
        destination_ip: "10.2.0.12".parse().unwrap(),
        port: 80,
        request: None,
    };
    assert_eq!(
        evaluate(&[&deny_all], &c).decision,
        Decision::Deny,
        "ALLOW without rules denies all"
    );
    assert_eq!(
        evaluate(&[&allow_any], &c).decision,
        Decision::Allow,
        "an empty rule matches everything"
    );
    assert_eq!(
        evaluate(&[&deny_all], &c).to_string(),
        "denied: no rule of the ALLOW policies shop/lock matched"
    );
}

#[test]
fn dry_run_policies_are_reported_not_enforced() {
    let mut deny = policy(DENY_LEGACY);
    deny.dry_run = true;
    let legacy = id("spiffe://cluster.local/ns/legacy/sa/client");
    let c = Connection {
        source: Some(&legacy),
        source_ip: "10.3.0.1".parse().unwrap(),
        destination_ip: "10.2.0.12".parse().unwrap(),
        port: 80,
        request: None,
    };
    let v = evaluate(&[&deny], &c);
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(v.reason, Reason::NoAllowPolicy);
    assert_eq!(
        v.dry_run,
        vec![DryRun {
            policy: "shop/deny-legacy".into(),
            rule: Some(0),
            would: Would::Deny
        }]
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn policies_load_from_local_mode_with_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let netns = dir.path().join("netns");
    std::fs::write(&netns, "").unwrap();
    write(
        dir.path(),
        "policies.yaml",
        &format!(
            "{ONLY_FRONTEND}---{DENY_LEGACY}---
apiVersion: nodemesh.io/v1alpha1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mode: STRICT}}
---
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: broken, namespace: shop}}
spec:
  rules:
  - from: {{ipBlocks: [10.1.0.0/33], identities: [spiffe://cluster.local/ns/x]}}
    to: {{ports: [0]}}
---
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: typo, namespace: shop}}
spec:
  rules:
  - from: {{namespace: [shop]}}
---
apiVersion: v1
kind: PeerAuthentication
metadata: {{name: old-api, namespace: shop}}
spec: {{mode: STRICT}}
"
        ),
    );
    write(
        dir.path(),
        "pods.yaml",
        &format!(
            "
apiVersion: v1
kind: Pod
metadata:
  name: payments-1
  namespace: shop
  labels: {{app: payments}}
  annotations: {{nodemesh.io/netns: {netns}, nodemesh.io/cgroup: /sys/fs/cgroup/x}}
spec: {{nodeName: n1, containers: [{{name: app, image: app}}]}}
status: {{podIP: 10.1.0.20}}
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-1
  namespace: shop
  labels: {{app: cart}}
  annotations: {{nodemesh.io/netns: {netns}, nodemesh.io/cgroup: /sys/fs/cgroup/y}}
spec: {{nodeName: n1, containers: [{{name: app, image: app}}]}}
status: {{podIP: 10.1.0.21}}
",
            netns = netns.display()
        ),
    );
    let loaded = load_dir(dir.path());
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    let want = [
        "policies.yaml: AuthorizationPolicy shop/broken: field spec.rules[0].from.identities[0]: \"spiffe://cluster.local/ns/x\" is not a nodemesh SPIFFE ID",
        "policies.yaml: AuthorizationPolicy shop/broken: field spec.rules[0].from.ipBlocks[0]: \"10.1.0.0/33\" is not an address or CIDR block (e.g. 10.1.0.0/16)",
        "policies.yaml: AuthorizationPolicy shop/broken: field spec.rules[0].to.ports[0]: 0 is not a port (1-65535)",
        "policies.yaml: AuthorizationPolicy shop/typo: field spec.rules[0].from.namespace: unknown field `namespace`, expected one of `identities`, `namespaces`, `ipBlocks`",
        "policies.yaml: PeerAuthentication shop/old-api: field apiVersion: \"v1\" is not supported for PeerAuthentication: use `apiVersion: nodemesh.io/v1alpha1`",
    ];
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(want) {
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}…");
    }
    let s = &loaded.snapshot;
    let pod = |name: &str| s.pods.iter().find(|p| p.name == name).unwrap();
    let names =
        |name: &str| -> Vec<String> { s.policies_for(pod(name)).iter().map(|p| p.id()).collect() };
    assert_eq!(
        names("payments-1"),
        // By name: the model does not depend on the order objects arrived in.
        ["shop/deny-legacy", "shop/only-frontend"]
    );
    assert_eq!(
        names("cart-1"),
        ["shop/deny-legacy"],
        "the selector keeps only-frontend off cart"
    );
    assert_eq!(s.peer_auth_mode(pod("cart-1")).0, Mode::Strict);
}

const WAYPOINT_RULES: &str = "
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: http, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: cart}]
  action: DENY
  rules:
  - to: {methods: [delete], paths: ['/admin*', '*.bak'], hosts: ['cart.shop']}
  - when: [{key: 'request.headers[x-debug]', values: [on], notValues: [on-but-allowed]}]
";

#[test]
fn http_rules_match_requests_and_never_bare_connections() {
    let p = policy(WAYPOINT_RULES);
    assert_eq!(p.targets, [super::compile::Target::Service("cart".into())]);
    let source = id("spiffe://cluster.local/ns/shop/sa/frontend");
    let judge = |method: &str, host: &str, path: &str, header: Option<&str>| {
        let mut headers = http::HeaderMap::new();
        if let Some(v) = header {
            headers.insert("x-debug", v.parse().unwrap());
        }
        let request = super::Request {
            method,
            host,
            path,
            headers: &headers,
        };
        let c = Connection {
            source: Some(&source),
            source_ip: "10.1.0.11".parse().unwrap(),
            destination_ip: "10.2.0.12".parse().unwrap(),
            port: 80,
            request: Some(&request),
        };
        match evaluate(&[&p], &c).reason {
            Reason::DeniedBy { rule, .. } => Some(rule),
            _ => None,
        }
    };
    assert_eq!(judge("DELETE", "cart.shop", "/admin/x", None), Some(0));
    assert_eq!(judge("DELETE", "cart.shop", "/db.bak", None), Some(0));
    assert_eq!(judge("GET", "cart.shop", "/admin/x", None), None);
    assert_eq!(judge("DELETE", "other.shop", "/admin/x", None), None);
    assert_eq!(judge("GET", "cart.shop", "/", Some("on")), Some(1));
    assert_eq!(judge("GET", "cart.shop", "/", Some("off")), None);
    assert_eq!(judge("GET", "cart.shop", "/", None), None);
    // A node agent judging a connection has no request: HTTP rules do not
    // match it (the waypoint judges them), and the policy selects no pod.
    let bare = Connection {
        source: Some(&source),
        source_ip: "10.1.0.11".parse().unwrap(),
        destination_ip: "10.2.0.12".parse().unwrap(),
        port: 80,
        request: None,
    };
    assert!(p.rules.iter().all(|r| !r.matches(&bare)));
}

#[test]
fn http_fields_are_checked_and_need_a_waypoint() {
    let errors = |yaml: &str| {
        let api: AuthorizationPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        Policy::compile(api).unwrap_err()
    };
    let head = "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n";
    let on_pods = errors(&format!(
        "{head}  selector: {{matchLabels: {{app: cart}}}}\n  rules:\n  - to: {{paths: [/x]}}\n"
    ));
    assert_eq!(on_pods[0].0, "spec.rules[0]");
    assert!(
        on_pods[0].1.contains("only a waypoint can judge them"),
        "{on_pods:?}"
    );
    let bad = errors(&format!(
        "{head}  targetRefs: [{{kind: Deployment, name: x}}]\n  rules:\n  - to: {{methods: [FETCH], paths: [x]}}\n    when: [{{key: source.ip, values: [a]}}]\n"
    ));
    let fields: Vec<&str> = bad.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].to.methods[0]",
            "spec.rules[0].to.paths[0]",
            "spec.rules[0].when[0].key",
            "spec.targetRefs[0]"
        ],
        "{bad:?}"
    );
    let both = errors(&format!(
        "{head}  selector: {{}}\n  targetRefs: [{{kind: Service, name: cart}}]\n"
    ));
    assert_eq!(both[0].0, "spec.selector");
}

#[test]
fn a_root_namespace_policy_applies_to_every_namespace() {
    let pod = |namespace: &str, app: &str| crate::state::PodInfo {
        namespace: namespace.into(),
        name: "p".into(),
        node: "n1".into(),
        service_account: "default".into(),
        ips: vec![IpAddr::from([10, 1, 0, 11])],
        labels: [("app".to_owned(), app.to_owned())].into(),
        netns: "/run/netns/p".into(),
        cgroup: "/sys/fs/cgroup/p".into(),
        ready: true,
    };
    let in_namespace = |namespace: &str| {
        policy(&format!(
            "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: deny-all-db, namespace: {namespace}}}\n\
             spec: {{selector: {{matchLabels: {{app: db}}}}, action: DENY, rules: [{{}}]}}"
        ))
    };
    for root in super::MESH_ROOTS {
        let mesh_wide = in_namespace(root);
        assert!(mesh_wide.selects(&pod("shop", "db")), "{root}");
        assert!(mesh_wide.selects(&pod(root, "db")), "{root}");
        assert!(!mesh_wide.selects(&pod("shop", "web")), "{root}");
    }
    let local = in_namespace("ops");
    assert!(local.selects(&pod("ops", "db")));
    assert!(!local.selects(&pod("shop", "db")));

    let mut snapshot = crate::state::Snapshot::default();
    snapshot
        .policies
        .insert("istio-system".into(), vec![in_namespace("istio-system")]);
    snapshot
        .policies
        .insert("shop".into(), vec![in_namespace("shop")]);
    let names: Vec<String> = snapshot
        .policies_for(&pod("shop", "db"))
        .iter()
        .map(|p| p.id())
        .collect();
    assert_eq!(names, ["shop/deny-all-db", "istio-system/deny-all-db"]);
}
