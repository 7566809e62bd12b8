//! `why` on the plan tests' cluster: Services are resolved as the data path
//! resolves them, and every endpoint is judged.
use super::*;
use crate::{
    policy::{Policy, api::AuthorizationPolicy},
    proxy::plan::tests::cluster,
};

const TD: Option<&str> = Some("cluster.local");

/// The cluster with a DENY of port 8080 on the shop pods `selector` picks.
fn denying(selector: &str) -> Snapshot {
    let mut snapshot = cluster();
    snapshot.pods[2]
        .labels
        .insert("version".into(), "v2".into());
    let api: AuthorizationPolicy = serde_yaml_ng::from_str(&format!(
        "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: deny-8080, namespace: shop}}\n\
         spec: {{selector: {{matchLabels: {{{selector}}}}}, action: DENY, \
         rules: [{{to: {{ports: [8080]}}}}]}}"
    ))
    .unwrap();
    snapshot
        .policies
        .insert("shop".into(), vec![Policy::compile(api).unwrap()]);
    snapshot
}

#[test]
fn a_service_is_judged_at_each_of_its_endpoints() {
    let answer = why(&denying("app: b"), "shop/a", "10.96.0.20:80", TD).unwrap();
    assert_eq!(answer.service.as_deref(), Some("shop/b"));
    assert_eq!(answer.outcome.decision, "deny");
    let endpoints: Vec<_> = answer
        .endpoints
        .iter()
        .map(|e| {
            (
                e.destination.pod.as_deref().unwrap(),
                e.port,
                e.outcome.path.as_str(),
                e.outcome.decision.as_str(),
                e.outcome.reason.as_str(),
            )
        })
        .collect();
    let rule = "denied by shop/deny-8080 rule 0 (DENY)";
    assert_eq!(
        endpoints,
        [
            ("shop/b1", 8080, "same_node", "deny", rule),
            ("shop/b2", 8080, "tunnel", "deny", rule)
        ]
    );
    assert_eq!(answer.outcome.path, "depends");
    for named in ["shop/b1 (10.1.0.12:8080)", "shop/b2 (10.2.0.11:8080)", rule] {
        assert!(answer.outcome.reason.contains(named), "{answer:#?}");
    }
}

#[test]
fn endpoints_judged_differently_make_the_answer_depend_on_the_pick() {
    let answer = why(&denying("version: v2"), "shop/a", "10.96.0.20:80", TD).unwrap();
    assert_eq!(answer.outcome.decision, "depends");
    let decisions: Vec<_> = answer
        .endpoints
        .iter()
        .map(|e| e.outcome.decision.as_str())
        .collect();
    assert_eq!(decisions, ["allow", "deny"]);
}

#[test]
fn each_kind_of_destination_gets_its_truth() {
    let snapshot = denying("app: b");
    // (source, destination, decision, path, words the reason must hold)
    let rows = [
        (
            "legacy/l",
            "10.96.0.20:80",
            "unreachable",
            "passthrough",
            "not captured",
        ),
        (
            "legacy/l",
            "10.1.0.12:8080",
            "deny",
            "passthrough",
            "without mTLS; denied by shop/deny-8080 rule 0",
        ),
        (
            "shop/a",
            "10.96.0.22:80",
            "waypoint",
            "waypoint",
            "waypoint shop/wp (pod shop/wp, 10.2.0.12:15008)",
        ),
        (
            "shop/a",
            "10.96.0.21:80",
            "error",
            "passthrough",
            "service shop/empty has no endpoints",
        ),
        (
            "shop/a",
            "10.96.0.23:80",
            "error",
            "waypoint",
            "waypoint shop/gone",
        ),
        (
            "shop/a",
            "192.0.2.1:443",
            "allow",
            "passthrough",
            "not an enrolled pod",
        ),
        (
            "shop/a",
            "10.2.0.11:9090",
            "allow",
            "tunnel",
            "no ALLOW policy",
        ),
    ];
    for (from, to, decision, path, words) in rows {
        let answer = why(&snapshot, from, to, TD).unwrap();
        let o = &answer.outcome;
        assert!(
            o.decision == decision && o.path == path && o.reason.contains(words),
            "{from} → {to}: {answer:#?}"
        );
        assert_eq!(answer.captured, from.starts_with("shop/"), "{from} → {to}");
    }
}
