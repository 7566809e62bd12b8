//! Istio-shaped objects: their translation, and Istio's semantics through
//! the one evaluator, as tables.
use super::{
    Decision, Policy,
    api::{AuthorizationPolicy as Native, Mode},
    compile::FieldError,
    eval::{Connection, DryRun, Reason, Would},
    evaluate,
    istio::{self, AuthorizationPolicy, PeerAuthentication},
    peer_auth::{ModeSource, PeerAuth, mode_for},
};
use crate::{identity::SpiffeId, state::PodInfo};

fn istio_policy(yaml: &str) -> Result<Policy, Vec<FieldError>> {
    let api: AuthorizationPolicy = serde_yaml_ng::from_str(yaml).expect("test policy parses");
    istio::authorization(api)
}

fn compiled(yaml: &str) -> Policy {
    istio_policy(yaml).expect("test policy compiles")
}

fn conn<'a>(source: Option<&'a SpiffeId>, ip: &str, port: u16) -> Connection<'a> {
    Connection {
        source,
        source_ip: ip.parse().unwrap(),
        destination_ip: "10.2.0.12".parse().unwrap(),
        port,
        request: None,
    }
}

/// Which rule of the single policy decided, as `Some(rule)` for a matching
/// rule and `None` for "no rule matched".
fn judge(p: &Policy, c: &Connection<'_>) -> (Decision, Option<usize>) {
    let v = evaluate(&[p], c);
    let rule = match v.reason {
        Reason::AllowedBy { rule, .. } | Reason::DeniedBy { rule, .. } => Some(rule),
        Reason::NoAllowPolicy | Reason::NoAllowRuleMatched { .. } => None,
    };
    (v.decision, rule)
}

const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                    metadata: {name: p, namespace: shop}\n";

/// Rule 0: (principal frontend OR namespace ops outside 10.9.9.0/24) AND
/// (port 8080 OR any port but 22..) AND source.ip in 10.0.0.0/8.
/// Rule 1: anyone but plaintext (notPrincipals ["*"]) on port 9000 when the
/// source namespace is not `legacy`.
const STRUCTURE: &str = "
spec:
  selector: {matchLabels: {app: payments}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/shop/sa/frontend]}
    - source: {namespaces: [ops], notIpBlocks: [10.9.9.0/24]}
    to:
    - operation: {ports: ['8080']}
    - operation: {notPorts: ['22', '8080', '9000']}
    when:
    - {key: source.ip, values: [10.0.0.0/8]}
  - from:
    - source: {notPrincipals: ['*']}
    to:
    - operation: {ports: ['9000']}
  - from:
    - source: {principals: ['*']}
    to:
    - operation: {ports: ['9000']}
    when:
    - {key: source.namespace, notValues: [legacy]}
    - {key: destination.port, values: ['9000']}
";

#[test]
fn from_to_when_and_not_fields_follow_istio() {
    let p = compiled(&format!("{HEAD}{STRUCTURE}"));
    let frontend = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap();
    let ops = SpiffeId::parse("spiffe://cluster.local/ns/ops/sa/debug").unwrap();
    let legacy = SpiffeId::parse("spiffe://cluster.local/ns/legacy/sa/old").unwrap();
    let allow = Decision::Allow;
    let deny = Decision::Deny;
    type Row<'a> = (&'a str, Connection<'a>, (Decision, Option<usize>));
    let table: Vec<Row<'_>> = vec![
        (
            "first from, first to",
            conn(Some(&frontend), "10.1.0.1", 8080),
            (allow, Some(0)),
        ),
        (
            "first from, second to",
            conn(Some(&frontend), "10.1.0.1", 443),
            (allow, Some(0)),
        ),
        (
            "notPorts excludes 22",
            conn(Some(&frontend), "10.1.0.1", 22),
            (deny, None),
        ),
        (
            "second from",
            conn(Some(&ops), "10.1.0.1", 8080),
            (allow, Some(0)),
        ),
        (
            "notIpBlocks excludes",
            conn(Some(&ops), "10.9.9.3", 8080),
            (deny, None),
        ),
        (
            "when source.ip ANDs",
            conn(Some(&frontend), "192.168.0.1", 8080),
            (deny, None),
        ),
        (
            "IPv4-mapped source",
            conn(Some(&frontend), "::ffff:10.1.0.1", 8080),
            (allow, Some(0)),
        ),
        (
            "notPrincipals * is plaintext",
            conn(None, "192.168.0.1", 9000),
            (allow, Some(1)),
        ),
        (
            "plaintext fails principals",
            conn(None, "10.1.0.1", 8080),
            (deny, None),
        ),
        (
            "every when must hold",
            conn(Some(&ops), "192.168.0.1", 9000),
            (allow, Some(2)),
        ),
        (
            "notValues excludes",
            conn(Some(&legacy), "192.168.0.1", 9000),
            (deny, None),
        ),
    ];
    for (name, c, want) in table {
        assert_eq!(judge(&p, &c), want, "{name}");
    }
}

#[test]
fn istio_and_native_shapes_decide_alike() {
    // Istio's documentation examples (L4 subset) beside the native policy
    // that says the same.
    let pairs = [
        (
            "spec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: \
             [cluster.local/ns/shop/sa/frontend]\n    to:\n    - operation:\n        ports: ['8080']\n",
            "spec:\n  action: ALLOW\n  rules:\n  - from: {identities: \
             [spiffe://cluster.local/ns/shop/sa/frontend]}\n    to: {ports: [8080]}\n",
        ),
        (
            "spec:\n  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [legacy]}\n    \
             - source: {ipBlocks: [10.66.0.0/16]}\n",
            "spec:\n  action: DENY\n  rules:\n  - from: {namespaces: [legacy]}\n  - from: \
             {ipBlocks: [10.66.0.0/16]}\n",
        ),
        ("spec: {}\n", "spec: {}\n"),
        ("spec: {rules: [{}]}\n", "spec: {rules: [{}]}\n"),
        ("spec: {action: DENY}\n", "spec: {action: DENY}\n"),
    ];
    let ids = [
        SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap(),
        SpiffeId::parse("spiffe://cluster.local/ns/legacy/sa/old").unwrap(),
    ];
    let conns = [
        conn(Some(&ids[0]), "10.1.0.1", 8080),
        conn(Some(&ids[0]), "10.66.0.1", 9090),
        conn(Some(&ids[1]), "10.1.0.1", 8080),
        conn(None, "10.1.0.1", 8080),
    ];
    for (istio_spec, native_spec) in pairs {
        let i = compiled(&format!("{HEAD}{istio_spec}"));
        let native: Native = serde_yaml_ng::from_str(&format!(
            "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: p, namespace: shop}}\n{native_spec}"
        ))
        .unwrap();
        let n = Policy::compile(native).unwrap();
        for c in &conns {
            // Rule numbers may differ: one Istio rule can OR sources that
            // take several native rules.
            assert_eq!(
                evaluate(&[&i], c).decision,
                evaluate(&[&n], c).decision,
                "{istio_spec} vs {native_spec} for {c:?}"
            );
        }
    }
}

#[test]
fn empty_rules_follow_istio() {
    let c = conn(None, "10.1.0.1", 80);
    let table = [
        ("spec: {}", Decision::Deny),
        ("spec: {action: ALLOW, rules: []}", Decision::Deny),
        ("spec: {rules: [{}]}", Decision::Allow),
        ("spec: {action: DENY}", Decision::Allow),
        ("spec: {action: DENY, rules: [{}]}", Decision::Deny),
    ];
    for (spec, want) in table {
        let p = compiled(&format!("{HEAD}{spec}"));
        assert_eq!(evaluate(&[&p], &c).decision, want, "{spec}");
    }
}

#[test]
fn audit_and_dry_run_record_without_deciding() {
    let audit = compiled(&format!(
        "{HEAD}spec:\n  action: AUDIT\n  rules:\n  - to: [{{operation: {{ports: ['80']}}}}]\n"
    ));
    assert!(audit.dry_run, "AUDIT never enforces");
    let matched = evaluate(&[&audit], &conn(None, "10.1.0.1", 80));
    assert_eq!(matched.decision, Decision::Allow);
    assert_eq!(
        matched.dry_run,
        vec![DryRun {
            policy: "shop/p".into(),
            rule: Some(0),
            would: Would::Audit
        }]
    );
    assert!(
        evaluate(&[&audit], &conn(None, "10.1.0.1", 81))
            .dry_run
            .is_empty()
    );
    let dry = compiled(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
         metadata: {name: p, namespace: shop, annotations: {istio.io/dry-run: 'true'}}\n\
         spec: {action: DENY, rules: [{}]}\n",
    );
    let v = evaluate(&[&dry], &conn(None, "10.1.0.1", 80));
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(v.dry_run[0].would, Would::Deny);
}

#[test]
fn what_cannot_be_honoured_is_refused_with_its_field() {
    let errors = |spec: &str| -> Vec<String> {
        istio_policy(&format!("{HEAD}{spec}"))
            .unwrap_err()
            .into_iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect()
    };
    let table: &[(&str, &[&str])] = &[
        (
            "spec:\n  selector: {matchLabels: {app: cart}}\n  rules:\n  - to:\n    - operation: \
             {ports: ['80'], methods: [GET], notPaths: [/admin]}\n    when:\n    - key: \
             request.headers[x-user]\n      values: [a]\n",
            &[
                "spec.rules[0].to[0].operation.methods: needs L7",
                "spec.rules[0].to[0].operation.notPaths: needs L7",
                "spec.rules[0].when[0].key: needs L7",
            ],
        ),
        (
            "spec: {action: CUSTOM, provider: {name: ext}}",
            &["spec.action: CUSTOM (an external authorizer) is not supported"],
        ),
        (
            "spec:\n  rules:\n  - to: [{operation: {ports: [http, '0']}}]\n    from: [{source: \
             {principals: [cluster.local/ns/x], requestPrincipals: ['*']}}]\n    when:\n    - \
             {key: destination.ip, values: [10.0.0.300]}\n    - {key: 'request.auth.claims[iss]', \
             values: [a]}\n    - {key: source.ip}\n",
            &[
                "spec.rules[0].from[0].source.requestPrincipals: JWT request principals",
                "spec.rules[0].from[0].source.principals[0]: \"spiffe://cluster.local/ns/x\" is \
                 not a nodemesh SPIFFE ID",
                "spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number",
                "spec.rules[0].to[0].operation.ports[1]: 0 is not a port (1-65535)",
                "spec.rules[0].when[0].values[0]: \"10.0.0.300\" is not an address or CIDR block",
                "spec.rules[0].when[1].key: \"request.auth.claims[iss]\" is not supported",
                "spec.rules[0].when[2]: give values or notValues",
            ],
        ),
    ];
    for (spec, want) in table {
        let got = errors(spec);
        assert_eq!(got.len(), want.len(), "{spec}: {got:#?}");
        for (g, w) in got.iter().zip(*want) {
            assert!(g.starts_with(w), "\n got: {g}\nwant: {w}…");
        }
    }
    // The same HTTP fields are fine on a waypoint policy.
    let waypoint = compiled(&format!(
        "{HEAD}spec:\n  targetRefs: [{{kind: Service, name: cart}}]\n  rules:\n  - to:\n    - \
         operation: {{methods: [GET], notPaths: [/admin*]}}\n"
    ));
    assert!(waypoint.rules[0].needs_request());
}

fn pod(namespace: &str, app: &str) -> PodInfo {
    PodInfo {
        namespace: namespace.into(),
        name: format!("{app}-1"),
        node: "n1".into(),
        service_account: "default".into(),
        ips: Vec::new(),
        labels: [("app".to_owned(), app.to_owned())].into(),
        netns: "/run/netns/x".into(),
        cgroup: "/sys/fs/cgroup/x".into(),
        ready: true,
    }
}

fn peer_auth(yaml: &str) -> Result<PeerAuth, Vec<FieldError>> {
    let api: PeerAuthentication = serde_yaml_ng::from_str(&format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n{yaml}"
    ))
    .unwrap();
    istio::peer_authentication(api)
}

#[test]
fn peer_authentication_precedence_is_workload_namespace_mesh() {
    let all: Vec<PeerAuth> = [
        "metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}",
        "metadata: {name: default, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE}}",
        "metadata: {name: finance, namespace: shop}\nspec: {selector: {matchLabels: {app: finance}}, mtls: {mode: STRICT}}",
        "metadata: {name: inherit, namespace: shop}\nspec: {selector: {matchLabels: {app: cart}}, mtls: {mode: UNSET}}",
        "metadata: {name: default, namespace: legacy}\nspec: {mtls: {mode: STRICT}}",
        "metadata: {name: open, namespace: legacy}\nspec: {selector: {matchLabels: {app: old}}, mtls: {mode: DISABLE}}",
        "metadata: {name: unset, namespace: lab}\nspec: {}",
    ]
    .iter()
    .map(|y| peer_auth(y).unwrap())
    .collect();
    let ns = |p: &str| ModeSource::Namespace(p.into());
    let table = [
        (pod("shop", "finance"), Mode::Strict, ns("shop/finance")),
        (pod("shop", "cart"), Mode::Permissive, ns("shop/default")),
        (pod("legacy", "old"), Mode::Permissive, ns("legacy/open")),
        (pod("legacy", "new"), Mode::Strict, ns("legacy/default")),
        (
            pod("lab", "x"),
            Mode::Strict,
            ModeSource::MeshWide("istio-system/default".into()),
        ),
    ];
    for (p, mode, source) in table {
        assert_eq!(
            mode_for(&all, &p),
            (mode, source),
            "{}/{}",
            p.namespace,
            p.name
        );
    }
    assert_eq!(
        mode_for(&[], &pod("shop", "cart")),
        (Mode::Permissive, ModeSource::Default)
    );
    // nodemesh's own root namespace is consulted before Istio's.
    let native = PeerAuth {
        namespace: "nodemesh-system".into(),
        name: "z".into(),
        selector: None,
        mode: Some(Mode::Permissive),
    };
    let both = [all[0].clone(), native];
    assert_eq!(
        mode_for(&both, &pod("lab", "x")),
        (
            Mode::Permissive,
            ModeSource::MeshWide("nodemesh-system/z".into())
        )
    );
}

#[test]
fn peer_authentication_refuses_what_it_cannot_honour() {
    let fields = |yaml: &str| -> Vec<String> {
        peer_auth(yaml)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    };
    assert_eq!(
        fields(
            "metadata: {name: p, namespace: shop}\nspec: {mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: DISABLE}}}"
        ),
        ["spec.portLevelMtls"]
    );
    assert_eq!(
        fields(
            "metadata: {name: p, namespace: istio-system}\nspec: {selector: {matchLabels: {app: x}}, mtls: {mode: STRICT}}"
        ),
        ["spec.selector"]
    );
}

#[test]
fn istio_objects_load_from_local_mode_with_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("istio.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: ok, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n---\n\
         apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
         metadata: {name: typo, namespace: shop}\n\
         spec: {rules: [{from: [{source: {principal: [a]}}]}]}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n---\n\
         apiVersion: security.istio.io/v2\nkind: PeerAuthentication\n\
         metadata: {name: future, namespace: shop}\nspec: {}\n",
    )
    .unwrap();
    let loaded = crate::state::load_dir(dir.path());
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    let want = [
        "istio.yaml: AuthorizationPolicy shop/typo: field spec.rules[0].from[0].source.principal: unknown field `principal`",
        "istio.yaml: PeerAuthentication shop/future: field apiVersion: \"security.istio.io/v2\" is not supported for PeerAuthentication: use `apiVersion: nodemesh.io/v1alpha1` or security.istio.io/v1 or security.istio.io/v1beta1",
    ];
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(want) {
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}…");
    }
    let s = &loaded.snapshot;
    assert_eq!(s.policies["shop"][0].id(), "shop/ok");
    assert_eq!(s.peer_auth_mode(&pod("shop", "cart")).0, Mode::Strict);
}

#[test]
fn destination_ip_conditions_match_the_address_connected_to() {
    let p = compiled(&format!(
        "{HEAD}spec:\n  action: DENY\n  rules:\n  - when:\n    - {{key: destination.ip, values: \
         [10.2.0.0/24], notValues: [10.2.0.12]}}\n"
    ));
    let at = |ip: &str| {
        let mut c = conn(None, "10.1.0.1", 8080);
        c.destination_ip = ip.parse().unwrap();
        p.rules[0].matches(&c)
    };
    assert!(at("10.2.0.11"), "inside the block");
    assert!(!at("10.2.0.12"), "excluded by notValues");
    assert!(!at("10.3.0.1"), "outside the block");
    assert!(
        at("::ffff:10.2.0.11"),
        "an IPv4-mapped address is the IPv4 one"
    );
}
