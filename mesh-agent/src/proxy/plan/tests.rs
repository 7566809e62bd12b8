//! The outbound decision as a table: one config, one row per destination.
use super::*;
use crate::state::{NamespaceInfo, ServicePort, keys::WAYPOINT_POD_LABEL};

const TD: &str = "cluster.local";
const NODE: &str = "n1";

fn labels(pairs: &[(&str, &str)]) -> crate::state::model::Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod(namespace: &str, name: &str, node: &str, ip: &str, pod_labels: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        namespace: namespace.into(),
        name: name.into(),
        node: node.into(),
        service_account: name.into(),
        ips: vec![ip.parse().unwrap()],
        labels: labels(pod_labels),
        netns: "/run/netns/x".into(),
        cgroup: "/sys/fs/cgroup/x".into(),
        ready: true,
    }
}

fn service(name: &str, ip: &str, app: &str, svc_labels: &[(&str, &str)]) -> ServiceInfo {
    ServiceInfo {
        namespace: "shop".into(),
        name: name.into(),
        cluster_ips: vec![ip.parse().unwrap()],
        ports: vec![ServicePort {
            name: None,
            port: 80,
            target_port: 8080,
        }],
        selector: labels(&[("app", app)]),
        labels: labels(svc_labels),
    }
}

/// `shop` (enrolled): `a` on n1, `b1` on n1 and `b2` on n2 (app b), the
/// waypoint pod `wp`; `legacy` (not enrolled): `l`. Services: `b` (two
/// endpoints), `empty` (none), `cart` (through waypoint `wp`), `lonely`
/// (through waypoint `gone`, which has no pod), `legacy/old` (`l`, an
/// endpoint outside the mesh).
pub(crate) fn cluster() -> Snapshot {
    let mut s = Snapshot::default();
    for (ns, on) in [("shop", true), ("legacy", false)] {
        let ns_labels = if on {
            labels(&[("nodemesh.io/dataplane", "enabled")])
        } else {
            labels(&[])
        };
        s.namespaces.insert(
            ns.into(),
            NamespaceInfo {
                name: ns.into(),
                labels: ns_labels,
            },
        );
    }
    s.pods = vec![
        pod("shop", "a", "n1", "10.1.0.11", &[]),
        pod("shop", "b1", "n1", "10.1.0.12", &[("app", "b")]),
        pod("shop", "b2", "n2", "10.2.0.11", &[("app", "b")]),
        pod(
            "shop",
            "wp",
            "n2",
            "10.2.0.12",
            &[(WAYPOINT_POD_LABEL, "wp")],
        ),
        pod("legacy", "l", "n2", "10.2.0.13", &[("app", "old")]),
    ];
    s.services = vec![
        service("b", "10.96.0.20", "b", &[]),
        service("empty", "10.96.0.21", "nothing", &[]),
        service("cart", "10.96.0.22", "b", &[(USE_WAYPOINT_LABEL, "wp")]),
        service("lonely", "10.96.0.23", "b", &[(USE_WAYPOINT_LABEL, "gone")]),
        ServiceInfo {
            namespace: "legacy".into(),
            ..service("old", "10.96.0.24", "old", &[])
        },
    ];
    s
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "shop", sa).unwrap()
}

fn tunnel(ip: &str, sa: &str, path: Path) -> Carry {
    Carry::Hbone {
        hbone: SocketAddr::new(ip.parse().unwrap(), ports::HBONE),
        peer: id(sa),
        path,
    }
}

fn hop(pod: Option<&str>, target: &str, carry: Carry) -> Hop {
    Hop {
        pod: pod.map(str::to_owned),
        target: addr(target),
        carry,
    }
}

#[test]
fn each_destination_gets_its_plan() {
    let wp = WaypointRef {
        namespace: "shop".into(),
        name: "wp".into(),
    };
    let gone = WaypointRef {
        namespace: "shop".into(),
        name: "gone".into(),
    };
    struct Row {
        what: &'static str,
        to: &'static str,
        ca: bool,
        service: Option<&'static str>,
        waypoint: Option<WaypointRef>,
        hops: Result<Vec<Hop>, NoHop>,
    }
    let rows = [
        Row {
            what: "an enrolled pod on another node: tunnel",
            to: "10.2.0.11:8080",
            ca: true,
            service: None,
            waypoint: None,
            hops: Ok(vec![hop(
                Some("shop/b2"),
                "10.2.0.11:8080",
                tunnel("10.2.0.11", "b2", Path::Tunnel),
            )]),
        },
        Row {
            what: "an enrolled pod on this node: same node, still HBONE",
            to: "10.1.0.12:8080",
            ca: true,
            service: None,
            waypoint: None,
            hops: Ok(vec![hop(
                Some("shop/b1"),
                "10.1.0.12:8080",
                tunnel("10.1.0.12", "b1", Path::SameNode),
            )]),
        },
        Row {
            what: "an enrolled pod without a CA: plaintext",
            to: "10.2.0.11:8080",
            ca: false,
            service: None,
            waypoint: None,
            hops: Ok(vec![hop(
                Some("shop/b2"),
                "10.2.0.11:8080",
                Carry::Plaintext,
            )]),
        },
        Row {
            what: "an unenrolled pod: plaintext",
            to: "10.2.0.13:8080",
            ca: true,
            service: None,
            waypoint: None,
            hops: Ok(vec![hop(
                Some("legacy/l"),
                "10.2.0.13:8080",
                Carry::Plaintext,
            )]),
        },
        Row {
            what: "outside the cluster: plaintext",
            to: "192.0.2.1:443",
            ca: true,
            service: None,
            waypoint: None,
            hops: Ok(vec![hop(None, "192.0.2.1:443", Carry::Plaintext)]),
        },
        Row {
            what: "a Service: every endpoint, on the target port",
            to: "10.96.0.20:80",
            ca: true,
            service: Some("shop/b"),
            waypoint: None,
            hops: Ok(vec![
                hop(
                    Some("shop/b1"),
                    "10.1.0.12:8080",
                    tunnel("10.1.0.12", "b1", Path::SameNode),
                ),
                hop(
                    Some("shop/b2"),
                    "10.2.0.11:8080",
                    tunnel("10.2.0.11", "b2", Path::Tunnel),
                ),
            ]),
        },
        Row {
            what: "a Service of unenrolled pods: plaintext to each endpoint",
            to: "10.96.0.24:80",
            ca: true,
            service: Some("legacy/old"),
            waypoint: None,
            hops: Ok(vec![hop(
                Some("legacy/l"),
                "10.2.0.13:8080",
                Carry::Plaintext,
            )]),
        },
        Row {
            what: "a port the Service does not have",
            to: "10.96.0.20:81",
            ca: true,
            service: Some("shop/b"),
            waypoint: None,
            hops: Err(NoHop::NoPort {
                service: "shop/b".into(),
                port: 81,
            }),
        },
        Row {
            what: "a Service whose selector picks nobody",
            to: "10.96.0.21:80",
            ca: true,
            service: Some("shop/empty"),
            waypoint: None,
            hops: Err(NoHop::NoEndpoints {
                service: "shop/empty".into(),
            }),
        },
        Row {
            what: "a Service with a waypoint: its pod, the Service address as authority",
            to: "10.96.0.22:80",
            ca: true,
            service: Some("shop/cart"),
            waypoint: Some(wp.clone()),
            hops: Ok(vec![hop(
                Some("shop/wp"),
                "10.96.0.22:80",
                tunnel("10.2.0.12", "wp", Path::Waypoint),
            )]),
        },
        Row {
            what: "a waypoint without a CA is never bypassed",
            to: "10.96.0.22:80",
            ca: false,
            service: Some("shop/cart"),
            waypoint: Some(wp.clone()),
            hops: Err(NoHop::WaypointWithoutCa {
                waypoint: wp.clone(),
            }),
        },
        Row {
            what: "a waypoint without a pod is never bypassed",
            to: "10.96.0.23:80",
            ca: true,
            service: Some("shop/lonely"),
            waypoint: Some(gone.clone()),
            hops: Err(NoHop::WaypointHasNoPod {
                waypoint: gone.clone(),
                family: 4,
            }),
        },
    ];
    let snapshot = cluster();
    for row in rows {
        let got = plan(&snapshot, NODE, addr(row.to), row.ca.then_some(TD));
        let want = Plan {
            service: row.service.map(str::to_owned),
            waypoint: row.waypoint,
            hops: row.hops,
        };
        assert_eq!(got, want, "{}", row.what);
    }
}

#[test]
fn an_endpoint_without_an_address_of_the_family_uses_its_first() {
    let snapshot = cluster();
    let v6 = SocketAddr::new("fd00::20".parse().unwrap(), 80);
    let mut snapshot = snapshot;
    snapshot.services[0].cluster_ips.push(v6.ip());
    let got = plan(&snapshot, NODE, v6, Some(TD)).hops.unwrap();
    let targets: Vec<_> = got.iter().map(|h| h.target).collect();
    assert_eq!(targets, [addr("10.1.0.12:8080"), addr("10.2.0.11:8080")]);
}

/// As kube-proxy: a pod that is not ready (starting, or failing its
/// readiness probe) gets no Service traffic, and a waypoint's unready pod
/// none either; with no ready one left the connection fails, naming why.
#[test]
fn pods_that_are_not_ready_get_no_service_traffic() {
    let mut snapshot = cluster();
    let not_ready = |s: &mut Snapshot, name: &str| {
        s.pods.iter_mut().find(|p| p.name == name).unwrap().ready = false;
    };
    not_ready(&mut snapshot, "b1");
    let got = plan(&snapshot, NODE, addr("10.96.0.20:80"), Some(TD));
    let targets: Vec<_> = got.hops.unwrap().iter().map(|h| h.target).collect();
    assert_eq!(targets, [addr("10.2.0.11:8080")], "b1 is not ready");
    // Addressed directly, a pod is reached ready or not: readiness is about
    // Services.
    let direct = plan(&snapshot, NODE, addr("10.1.0.12:8080"), Some(TD));
    assert_eq!(direct.hops.unwrap()[0].pod.as_deref(), Some("shop/b1"));

    not_ready(&mut snapshot, "b2");
    let none = plan(&snapshot, NODE, addr("10.96.0.20:80"), Some(TD)).hops;
    assert!(
        matches!(&none, Err(NoHop::NoEndpoints { service }) if service == "shop/b"),
        "{none:?}"
    );
    not_ready(&mut snapshot, "wp");
    let err = plan(&snapshot, NODE, addr("10.96.0.22:80"), Some(TD))
        .hops
        .unwrap_err();
    assert!(err.to_string().contains("has no ready pod"), "{err}");
}

/// A Service without a selector (endpoints written by hand, e.g. a
/// database outside the cluster) is not the mesh's to balance: its address
/// is dialled as is, for kube-proxy to send on, rather than refused.
#[test]
fn a_service_without_a_selector_is_dialled_as_is() {
    let mut snapshot = cluster();
    snapshot.services.push(ServiceInfo {
        selector: Default::default(),
        ..service("external-db", "10.96.0.25", "unused", &[])
    });
    let got = plan(&snapshot, NODE, addr("10.96.0.25:80"), Some(TD));
    assert_eq!(got.service.as_deref(), Some("shop/external-db"));
    assert_eq!(
        got.hops.unwrap(),
        [hop(None, "10.96.0.25:80", Carry::Plaintext)]
    );
}
