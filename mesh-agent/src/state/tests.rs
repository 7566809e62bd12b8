//! Parsing and reloading, tested on real files in a temporary directory.
use std::{net::IpAddr, time::Duration};

use super::*;

/// A directory with a real file to stand in for a pod's netns.
struct Dir {
    dir: tempfile::TempDir,
    netns: String,
}

impl Dir {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let netns = dir.path().join("netns-a");
        std::fs::write(&netns, "").unwrap();
        let netns = netns.display().to_string();
        Self { dir, netns }
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(
            self.dir.path().join(name),
            text.replace("NETNS", &self.netns),
        )
        .unwrap();
    }

    fn load(&self) -> Loaded {
        load_dir(self.dir.path())
    }
}

const NAMESPACES: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    nodemesh.io/dataplane: enabled
---
apiVersion: v1
kind: Namespace
metadata:
  name: legacy
";

/// Also the Kubernetes source's tests' view of a model's pods.
pub(super) fn pod_names(loaded: &Loaded) -> Vec<&str> {
    loaded
        .snapshot
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .collect()
}

fn pod(name: &str, extra_status: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  labels:
    app: {name}
  annotations:
    nodemesh.io/netns: NETNS
    nodemesh.io/cgroup: /sys/fs/cgroup/pods/{name}
spec:
  nodeName: n1
  serviceAccountName: {name}-sa
  containers: [{{name: app, image: app}}]
status:
{extra_status}"
    )
}

#[test]
fn good_objects_become_the_model() {
    let d = Dir::new();
    d.write("00-ns.yaml", NAMESPACES);
    d.write(
        "pods.yml",
        &pod(
            "a",
            "  podIP: 10.1.0.11\n  podIPs:\n  - ip: 10.1.0.11\n  - ip: fd00:10:1::b\n",
        ),
    );
    d.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: cart\n  namespace: shop\nspec:\n  \
         clusterIP: 10.96.0.10\n  selector:\n    app: cart\n  ports:\n  - name: http\n    port: 80\n    \
         targetPort: 8080\n  - port: 443\n",
    );
    d.write("notes.txt", "not yaml, not read");
    let loaded = d.load();
    assert_eq!(loaded.errors, vec![]);
    let s = &loaded.snapshot;
    assert_eq!(s.namespaces.len(), 2);
    let a = &s.pods[0];
    assert_eq!(
        (a.namespace.as_str(), a.name.as_str(), a.node.as_str()),
        ("shop", "a", "n1")
    );
    assert_eq!(a.service_account, "a-sa");
    let want: Vec<IpAddr> = vec![
        "10.1.0.11".parse().unwrap(),
        "fd00:10:1::b".parse().unwrap(),
    ];
    assert_eq!(a.ips, want);
    assert_eq!(a.cgroup.display().to_string(), "/sys/fs/cgroup/pods/a");
    assert!(s.enrolled(a));
    let svc = &s.services[0];
    assert_eq!(
        svc.cluster_ips,
        vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        svc.ports,
        vec![
            ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: 8080
            },
            ServicePort {
                name: None,
                port: 443,
                target_port: 443
            },
        ]
    );
    assert_eq!(
        s.service_by_ip("10.96.0.10".parse().unwrap())
            .map(|s| s.name.as_str()),
        Some("cart")
    );
}

#[test]
fn each_bad_object_is_reported_precisely_and_the_good_ones_still_load() {
    let d = Dir::new();
    d.write("00-ns.yaml", NAMESPACES);
    let mut pods = pod("good", "  podIP: 10.1.0.11\n");
    pods += &pod("bad-ip", "  podIPs:\n  - ip: 10.1.0.300\n");
    pods += &pod("no-ip", "  phase: Pending\n");
    pods += &pod("good", "  podIP: 10.1.0.12\n"); // duplicate
    pods += &pod("gone", "  podIP: 10.1.0.13\n").replace("NETNS", "/nonexistent/netns");
    pods += &pod("two-faults", "  podIP: nope\n").replace("  nodeName: n1\n", "");
    pods += "---\napiVersion: v1\nkind: Pod\nmetadata:\n  namespace: shop\n";
    pods += "---\napiVersion: v1\nkind: Gadget\nmetadata:\n  name: g\n";
    pods += "---\napiVersion: apps/v1\nkind: Pod\nmetadata:\n  name: wrong-api\n";
    pods += "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: typed\n  namespace: shop\nspec:\n  nodeName: [1, 2]\n";
    d.write("pods.yaml", &pods);
    d.write(
        "zz-broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n",
    );
    let loaded = d.load();
    let got: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    let want = [
        "pods.yaml: Pod shop/bad-ip: field status.podIPs[0].ip: \"10.1.0.300\" is not an IP address (expected e.g. 10.1.0.11 or fd00::b)",
        "pods.yaml: Pod shop/no-ip: field status.podIP: missing: a pod needs an address to be meshed",
        "pods.yaml: Pod shop/good: declared again (first in pods.yaml); this copy is ignored",
        "pods.yaml: Pod shop/gone: field metadata.annotations.nodemesh.io/netns: /nonexistent/netns does not exist: is the pod running, and the path right?",
        "pods.yaml: Pod shop/two-faults: field spec.nodeName: missing: the agent serves only pods placed on its node",
        "pods.yaml: Pod shop/two-faults: field status.podIP: \"nope\" is not an IP address (expected e.g. 10.1.0.11 or fd00::b)",
        "pods.yaml: Pod (document 7): field metadata.name: missing: every object needs a name",
        "pods.yaml: Gadget default/g: field kind: unknown kind \"Gadget\": local mode reads Namespace, Pod, Service, AuthorizationPolicy, PeerAuthentication, HTTPRoute, GRPCRoute, TrafficPolicy",
        "pods.yaml: Pod default/wrong-api: field apiVersion: \"apps/v1\" is not supported for Pod: use `apiVersion: v1`",
    ];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(
            got.get(i).map(String::as_str),
            Some(*w),
            "error {i}; all: {got:#?}"
        );
    }
    assert!(
        got[9].starts_with("pods.yaml: Pod shop/typed: field spec.nodeName: "),
        "{}",
        got[9]
    );
    assert!(
        got[10].starts_with("zz-broken.yaml: invalid YAML at line "),
        "{}",
        got[10]
    );
    assert_eq!(got.len(), 11, "{got:#?}");
    assert_eq!(
        pod_names(&loaded),
        ["good"],
        "only the valid pod loads, once"
    );
    assert_eq!(
        loaded.snapshot.pods[0].ips,
        vec!["10.1.0.11".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn service_port_errors_name_the_field() {
    let d = Dir::new();
    d.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  clusterIPs: [10.96.0.1, nope]\n",
    );
    d.write(
        "svc2.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: t\nspec:\n  ports:\n  - port: 80\n    targetPort: http\n",
    );
    d.write(
        "svc3.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: u\nspec:\n  ports:\n  - port: 70000\n",
    );
    let got: Vec<String> = d.load().errors.iter().map(ToString::to_string).collect();
    assert!(
        got[0]
            .contains("Service default/s: field spec.clusterIPs[1]: \"nope\" is not an IP address"),
        "{got:?}"
    );
    assert!(
        got[1].contains("field spec.ports[0].targetPort: named target port \"http\""),
        "{got:?}"
    );
    assert!(
        got[2].contains("field spec.ports[0].port: 70000 is not a port (1-65535)"),
        "{got:?}"
    );
}

#[test]
fn traffic_policies_load_as_written_and_unknown_fields_are_errors() {
    let d = Dir::new();
    d.write(
        "limits.yaml",
        "apiVersion: nodemesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: cart-limits, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: cart-split, sectionName: canary}
  rateLimit:
    route: {requestsPerUnit: 100, unit: Second, burst: 200}
    perSource: {requestsPerUnit: 10, unit: Minute}
  fault:
    delay: {fixed: 100ms, percent: 0.5}
    abort: {status: 503, percent: 5}
status: {ancestors: []}
---
apiVersion: nodemesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: typo, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: cart-split}
  rateLimit:
    persource: {requestsPerUnit: 1, unit: Second}
",
    );
    let loaded = d.load();
    let got: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with(
            "limits.yaml: TrafficPolicy shop/typo: field spec.rateLimit.persource: unknown field `persource`, expected `route` or `perSource`"
        ),
        "{}",
        got[0]
    );
    let policies = &loaded.snapshot.traffic_policies;
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].key(), "shop/cart-limits");
    let spec = &policies[0].spec;
    assert_eq!(spec.target_ref.section_name.as_deref(), Some("canary"));
    let fault = spec.fault.as_ref().unwrap();
    assert_eq!(fault.delay.as_ref().unwrap().percent.unwrap().0, 0.5);
    let per_source = spec
        .rate_limit
        .as_ref()
        .unwrap()
        .per_source
        .as_ref()
        .unwrap();
    assert_eq!((per_source.requests_per_unit, per_source.burst), (10, None));
}

/// The CA reports an invalid object in its `status.conditions` (the CRDs'
/// status subresource); the object, status and all, still loads as before.
#[test]
fn nodemesh_objects_with_a_status_load() {
    let d = Dir::new();
    d.write(
        "policies.yaml",
        "apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-ops, namespace: shop}
spec:
  action: DENY
  rules: [{from: {namespaces: [ops]}}]
status:
  conditions: [{type: Accepted, status: \"True\", reason: Valid, message: \"\", lastTransitionTime: \"2026-01-01T00:00:00Z\"}]
---
apiVersion: nodemesh.io/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mode: STRICT}
status: {conditions: []}
",
    );
    let loaded = d.load();
    assert_eq!(loaded.errors, []);
    assert_eq!(loaded.snapshot.policies["shop"][0].name, "deny-ops");
    assert_eq!(loaded.snapshot.peer_auth[0].name, "default");
}

#[test]
fn grpc_routes_load_as_written_and_http_only_fields_are_errors() {
    let d = Dir::new();
    d.write(
        "grpc.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec:
  parentRefs: [{group: \"\", kind: Service, name: greeter}]
  rules:
  - matches:
    - method: {service: pkg.Greeter, method: Hello}
      headers: [{name: x-v, value: \"2\"}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-a, value: b}]}
    backendRefs: [{name: greeter-v2, port: 80, weight: 3}]
status: {parents: []}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: typo, namespace: shop}
spec:
  rules:
  - matches: [{path: {value: /pkg.Greeter/Hello}}]
",
    );
    let loaded = d.load();
    let got: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with(
            "grpc.yaml: GRPCRoute shop/typo: field spec.rules[0].matches[0].path: unknown field `path`, expected `method` or `headers`"
        ),
        "{}",
        got[0]
    );
    let routes = &loaded.snapshot.grpc_routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].metadata.key(), "shop/greeter");
    let rule = &routes[0].spec.rules[0];
    let method = rule.matches[0].method.as_ref().unwrap();
    assert_eq!(
        (
            method.kind,
            method.service.as_deref(),
            method.method.as_deref()
        ),
        (
            gateway::ValueMatchType::Exact,
            Some("pkg.Greeter"),
            Some("Hello")
        )
    );
    assert_eq!(rule.backend_refs[0].weight, Some(3));
}

#[tokio::test]
async fn watcher_publishes_changes_and_only_changes() {
    let d = Dir::new();
    d.write("00-ns.yaml", NAMESPACES);
    let (mut rx, task) = watch(d.dir.path().to_owned(), Duration::from_millis(20));
    assert!(rx.borrow_and_update().snapshot.pods.is_empty());

    // Touching a file without changing its meaning publishes nothing.
    d.write("00-ns.yaml", &format!("{NAMESPACES}\n"));
    let quiet = tokio::time::timeout(Duration::from_millis(300), rx.changed()).await;
    assert!(quiet.is_err(), "published a reload that changed nothing");

    d.write("pods.yaml", &pod("a", "  podIP: 10.1.0.11\n"));
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a change is published within a few intervals")
        .unwrap();
    assert_eq!(rx.borrow_and_update().snapshot.pods.len(), 1);
    task.abort();
}

/// One of each kind, with one bad object: what both sources must agree on.
const EVERY_KIND: &str = "\
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop, labels: {nodemesh.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.20, selector: {app: a}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: shop}
spec:
  action: DENY
  rules: [{from: {namespaces: [legacy]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: shop}
spec:
  selector: {matchLabels: {app: a}}
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/b-sa]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart-split, namespace: shop}
spec:
  parentRefs: [{group: \"\", kind: Service, name: cart}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
---
apiVersion: nodemesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: limits, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: cart-split}
  rateLimit: {route: {requestsPerUnit: 100, unit: Second}}
---
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec: {action: MAYBE}
";

/// Each object of `text` as a watch would report it: (resource, object).
fn watched(text: &str, netns: &str) -> Vec<(String, serde_yaml_ng::Value)> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(&text.replace("NETNS", netns))
        .map(|doc| {
            let value = serde_yaml_ng::Value::deserialize(doc).unwrap();
            let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap().to_owned();
            (format!("{}.{}", field("kind"), field("apiVersion")), value)
        })
        .collect()
}

/// The model without where each error was read (a file, or the API server).
fn meaning(loaded: &Loaded) -> (Snapshot, Vec<String>) {
    let errors = loaded
        .errors
        .iter()
        .map(|e| format!("{:?} {:?} {}", e.object, e.field, e.message))
        .collect();
    (loaded.snapshot.clone(), errors)
}

#[test]
fn watched_objects_make_the_model_local_yaml_makes() {
    use index::{Change, Index};
    let d = Dir::new();
    // Running and ready, as the API server holds running pods.
    let ready = "  conditions:\n  - type: Ready\n    status: \"True\"\n";
    let pods = format!(
        "{}{}",
        pod("a", &format!("  podIP: 10.1.0.11\n{ready}")),
        pod("b", &format!("  podIP: 10.1.0.12\n{ready}"))
    );
    let all = format!("{NAMESPACES}---\n{EVERY_KIND}{pods}");
    d.write("all.yaml", &all);
    let local = d.load();
    assert_eq!(local.errors.len(), 1, "{:#?}", local.errors);
    assert_eq!(local.snapshot.pods.len(), 2);

    // The first list, objects in reverse order and across resources.
    let objects = watched(&all, &d.netns);
    let resources: std::collections::BTreeSet<&String> = objects.iter().map(|(r, _)| r).collect();
    let mut index = Index::default();
    for resource in &resources {
        index.expect(resource);
        index.change(resource, Change::Init);
    }
    assert!(!index.ready());
    for (resource, object) in objects.iter().rev() {
        index.change(resource, Change::InitApply(object.clone()));
    }
    for resource in &resources {
        index.change(resource, Change::InitDone);
    }
    assert!(index.ready(), "unsynced: {:?}", index.unsynced());
    let listed = index.load();
    assert_eq!(meaning(&listed), meaning(&local));
    assert!(
        listed.errors[0]
            .to_string()
            .starts_with("api-server: AuthorizationPolicy shop/broken: field spec.action:")
    );

    // Watch events: pod b deleted, the Service relabelled.
    let (pods_resource, pod_b) = objects
        .iter()
        .find(|(_, o)| o["metadata"]["name"] == "b")
        .unwrap();
    index.change(pods_resource, Change::Delete(pod_b.clone()));
    let edited = all.replace("nodemesh.io/use-waypoint: wp", "tier: web");
    let (svc_resource, svc) = watched(&edited, &d.netns)
        .into_iter()
        .find(|(r, _)| r.starts_with("Service."))
        .unwrap();
    index.change(&svc_resource, Change::Apply(svc));
    let without_b = edited.replacen(&pod("b", &format!("  podIP: 10.1.0.12\n{ready}")), "", 1);
    d.write("all.yaml", &without_b);
    assert_eq!(meaning(&index.load()), meaning(&d.load()));

    // Reconnected: a relist that no longer has the DENY policy. Until it
    // completes the last good objects serve; then the policy is pruned.
    let policies = "AuthorizationPolicy.nodemesh.io/v1alpha1";
    index.change(policies, Change::Init);
    let before = index.load();
    assert_eq!(before.snapshot.policies["shop"].len(), 2);
    for (resource, object) in watched(&without_b, &d.netns) {
        if resource == policies && object["metadata"]["name"] != "deny-legacy" {
            index.change(&resource, Change::InitApply(object));
        }
    }
    assert_eq!(index.load(), before, "a relist under way changes nothing");
    index.change(policies, Change::InitDone);
    let pruned = index.load();
    let names: Vec<&str> = pruned.snapshot.policies["shop"]
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["allow-a"]);
    // `broken` is still reported: it was relisted, and is still invalid.
    assert_eq!(pruned.errors.len(), 1);
}

#[test]
fn the_api_servers_ended_unplaced_and_host_network_pods_are_skipped_quietly_pending_ones_kept() {
    use index::{Change, Index};
    let pods = format!(
        "{}{}{}{}{}",
        pod("running", "  podIP: 10.1.0.11\n"),
        pod("done", "  phase: Succeeded\n  podIP: 10.1.0.11\n"),
        pod("pending", "  phase: Pending\n"),
        pod("unplaced", "  phase: Pending\n").replace("  nodeName: n1\n", ""),
        pod("on-host", "  podIP: 192.168.0.1\n")
            .replace("  nodeName: n1\n", "  nodeName: n1\n  hostNetwork: true\n"),
    );
    // Two AuthorizationPolicies of one name in two API groups are two objects.
    let policies = "\
apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: same, namespace: shop}
spec: {action: DENY, rules: [{from: {namespaces: [legacy]}}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: same, namespace: shop}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [legacy]}}]}]}
";
    let mut index = Index::default();
    for (resource, object) in watched(&format!("{pods}---\n{policies}"), "/nonexistent") {
        index.change(&resource, Change::Apply(object));
    }
    let loaded = index.load();
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    // A pending pod has no address yet, but the CNI plugin will ask to
    // enrol it: it must be known by then.
    assert_eq!(pod_names(&loaded), ["pending", "running"]);
    let pending = loaded.snapshot.pods.iter().find(|p| p.name == "pending");
    assert!(pending.is_some_and(|p| p.ips.is_empty()), "{pending:?}");
    assert_eq!(loaded.snapshot.policies["shop"].len(), 2);
}

/// Readiness: the API server's pods are ready when their Ready condition
/// says so (none yet: not ready); local YAML's pods when it does not say
/// otherwise.
#[test]
fn a_pod_is_ready_when_its_ready_condition_is_true_or_local_yaml_says_nothing() {
    use index::{Change, Index};
    let condition = |status: &str| {
        format!("  podIP: 10.1.0.11\n  conditions:\n  - type: Ready\n    status: \"{status}\"\n")
    };
    let pods = format!(
        "{}{}{}",
        pod("up", &condition("True")),
        pod("down", &condition("False")),
        pod("silent", "  podIP: 10.1.0.12\n"),
    );
    let ready = |loaded: &Loaded| -> Vec<(String, bool)> {
        loaded
            .snapshot
            .pods
            .iter()
            .map(|p| (p.name.clone(), p.ready))
            .collect()
    };
    let mut index = Index::default();
    for (resource, object) in watched(&pods, "/nonexistent") {
        index.change(&resource, Change::Apply(object));
    }
    let cluster = index.load();
    assert!(cluster.errors.is_empty(), "{:#?}", cluster.errors);
    assert_eq!(
        ready(&cluster),
        [
            ("down".into(), false),
            ("silent".into(), false),
            ("up".into(), true)
        ]
    );
    let d = Dir::new();
    d.write("00-ns.yaml", NAMESPACES);
    d.write("pods.yaml", &pods);
    let local = d.load();
    assert!(local.errors.is_empty(), "{:#?}", local.errors);
    assert_eq!(
        ready(&local),
        [
            ("down".into(), false),
            ("silent".into(), true),
            ("up".into(), true)
        ]
    );
}
