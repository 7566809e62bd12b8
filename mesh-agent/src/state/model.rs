//! The agent's compact view of the cluster, built from Kubernetes objects
//! (local YAML now, API-server watches later) and queried by every stage.
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use super::keys::{
    DATAPLANE_LABEL, DISABLED, ENABLED, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL,
    WAYPOINT_POD_LABEL,
};
use crate::policy::{
    MESH_ROOTS, Policy,
    api::Mode,
    peer_auth::{self, ModeSource, PeerAuth},
};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    pub pods: Vec<PodInfo>,
    pub services: Vec<ServiceInfo>,
    /// AuthorizationPolicies by namespace, compiled at load.
    pub policies: BTreeMap<String, Vec<Policy>>,
    pub peer_auth: Vec<PeerAuth>,
    /// Gateway API routes, as written; the waypoint compiles the ones
    /// attached to what it serves.
    pub http_routes: Vec<super::gateway::HttpRoute>,
    pub grpc_routes: Vec<super::gateway::GrpcRoute>,
    /// TrafficPolicies (rate limits, faults), as written; the waypoint
    /// compiles them and reports their problems.
    pub traffic_policies: Vec<super::traffic::TrafficPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// `spec.serviceAccountName` (Kubernetes' default: `default`).
    pub service_account: String,
    /// `status.podIPs`, else `status.podIP`.
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    /// Its `Ready` condition is `True` (local YAML without conditions:
    /// ready). Only ready pods are a Service's endpoints, as kube-proxy
    /// has it: a pod still starting, or failing its readiness probe, gets
    /// no Service traffic.
    pub ready: bool,
}

impl PodInfo {
    /// `namespace/name`, as the agent names pods everywhere.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The SPIFFE ID its namespace and service account give it.
    pub fn identity(
        &self,
        trust_domain: &str,
    ) -> Result<crate::identity::SpiffeId, crate::identity::IdentityError> {
        crate::identity::SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// Empty for headless services.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub selector: Labels,
    pub labels: Labels,
}

impl ServiceInfo {
    /// Whether its selector picks `pod` (a selector-less Service picks none).
    pub fn selects(&self, pod: &PodInfo) -> bool {
        !self.selector.is_empty()
            && pod.namespace == self.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// A waypoint, named as the `nodemesh.io/use-waypoint` label names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WaypointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: u16,
}

impl Snapshot {
    /// Sorts every list by namespace and name: two sources holding the
    /// same objects make equal snapshots, whatever order they read them in.
    pub fn normalize(&mut self) {
        fn by<T>(list: &mut [T], key: impl Fn(&T) -> (&str, &str)) {
            list.sort_by(|a, b| key(a).cmp(&key(b)));
        }
        fn route(m: &super::gateway::RouteMeta) -> (&str, &str) {
            (m.namespace.as_deref().unwrap_or(""), &m.name)
        }
        by(&mut self.pods, |p| (&p.namespace, &p.name));
        by(&mut self.services, |s| (&s.namespace, &s.name));
        for list in self.policies.values_mut() {
            by(list, |p| (&p.namespace, &p.name));
        }
        by(&mut self.peer_auth, |p| (&p.namespace, &p.name));
        by(&mut self.http_routes, |r| route(&r.metadata));
        by(&mut self.grpc_routes, |r| route(&r.metadata));
        by(&mut self.traffic_policies, |p| {
            (
                p.metadata.namespace.as_deref().unwrap_or(""),
                &p.metadata.name,
            )
        });
    }

    /// A pod is in the mesh when its namespace is labelled
    /// `nodemesh.io/dataplane=enabled` and the pod itself does not opt out
    /// with `nodemesh.io/dataplane=disabled`. Undeclared namespace: not.
    ///
    /// A waypoint's pods are never enrolled: they terminate HBONE themselves.
    pub fn enrolled(&self, pod: &PodInfo) -> bool {
        if pod.labels.contains_key(WAYPOINT_POD_LABEL) {
            return false;
        }
        let pod_off = pod.labels.get(DATAPLANE_LABEL).map(String::as_str) == Some(DISABLED);
        self.namespace_enrolled(&pod.namespace) && !pod_off
    }

    /// Whether namespace `name` is labelled `nodemesh.io/dataplane=enabled`.
    pub fn namespace_enrolled(&self, name: &str) -> bool {
        self.namespaces
            .get(name)
            .is_some_and(|ns| ns.labels.get(DATAPLANE_LABEL).map(String::as_str) == Some(ENABLED))
    }

    /// Enrolled pods scheduled on `node`.
    pub fn enrolled_pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods
            .iter()
            .filter(move |p| p.node == node && self.enrolled(p))
    }

    /// The AuthorizationPolicies that select `pod`: only its namespace's and
    /// the root namespaces' (mesh-wide, as Istio's root namespace) are
    /// looked at, so the cost is bounded by those namespaces' policy counts.
    pub fn policies_for(&self, pod: &PodInfo) -> Vec<&Policy> {
        let roots = MESH_ROOTS.iter().filter(|root| **root != pod.namespace);
        std::iter::once(pod.namespace.as_str())
            .chain(roots.copied())
            .filter_map(|namespace| self.policies.get(namespace))
            .flatten()
            .filter(|p| p.selects(pod))
            .collect()
    }

    /// STRICT or PERMISSIVE for a pod, and which object decided it.
    pub fn peer_auth_mode(&self, pod: &PodInfo) -> (Mode, ModeSource) {
        peer_auth::mode_for(&self.peer_auth, pod)
    }

    /// Whether Service `service` (`namespace/name`) selects pod `pod`
    /// (`namespace/name`) with a port whose target is `port`.
    pub fn service_selects(&self, service: &str, pod: &str, port: u16) -> bool {
        let Some((namespace, name)) = service.split_once('/') else {
            return false;
        };
        let Some(pod) = self.pod(pod) else {
            return false;
        };
        self.services.iter().any(|svc| {
            svc.namespace == namespace
                && svc.name == name
                && svc.ports.iter().any(|p| p.target_port == port)
                && svc.selects(pod)
        })
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodInfo> {
        let (namespace, name) = key.split_once('/')?;
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        let ip = ip.to_canonical();
        self.pods.iter().find(|p| p.ips.contains(&ip))
    }

    /// The ready pods a service's selector picks (none for a selector-less
    /// one).
    pub fn endpoints<'a>(&'a self, svc: &'a ServiceInfo) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods.iter().filter(move |p| p.ready && svc.selects(p))
    }

    /// The waypoint `svc`'s traffic must go through: its own
    /// `nodemesh.io/use-waypoint` label, else its namespace's; `none` on the
    /// Service opts it out of a namespace's waypoint.
    pub fn waypoint_for(&self, svc: &ServiceInfo) -> Option<WaypointRef> {
        let namespace_labels = self.namespaces.get(&svc.namespace).map(|n| &n.labels);
        let labels = if svc.labels.contains_key(USE_WAYPOINT_LABEL) {
            &svc.labels
        } else {
            namespace_labels?
        };
        let name = labels.get(USE_WAYPOINT_LABEL)?;
        if name == "none" || name.is_empty() {
            return None;
        }
        let namespace = labels
            .get(USE_WAYPOINT_NAMESPACE_LABEL)
            .unwrap_or(&svc.namespace);
        Some(WaypointRef {
            namespace: namespace.clone(),
            name: name.clone(),
        })
    }

    /// The pods that serve waypoint `w`.
    pub fn waypoint_pods<'a>(
        &'a self,
        w: &'a WaypointRef,
    ) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods.iter().filter(move |p| {
            p.namespace == w.namespace
                && p.labels.get(WAYPOINT_POD_LABEL).map(String::as_str) == Some(w.name.as_str())
        })
    }

    /// The Services whose traffic goes through waypoint `w`.
    pub fn services_using<'a>(
        &'a self,
        w: &'a WaypointRef,
    ) -> impl Iterator<Item = &'a ServiceInfo> + 'a {
        self.services
            .iter()
            .filter(move |s| self.waypoint_for(s).as_ref() == Some(w))
    }

    pub fn service_by_ip(&self, ip: IpAddr) -> Option<&ServiceInfo> {
        let ip = ip.to_canonical();
        self.services.iter().find(|s| s.cluster_ips.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pod(namespace: &str, pod_labels: Labels) -> PodInfo {
        PodInfo {
            namespace: namespace.into(),
            name: "p".into(),
            node: "n1".into(),
            service_account: "default".into(),
            ips: vec!["10.1.0.11".parse().unwrap()],
            labels: pod_labels,
            netns: "/run/netns/p".into(),
            cgroup: "/sys/fs/cgroup/p".into(),
            ready: true,
        }
    }

    #[test]
    fn a_service_claim_holds_only_for_its_own_endpoints_and_ports() {
        let mut snapshot = Snapshot::default();
        snapshot.pods.push(pod("shop", labels(&[("app", "cart")])));
        snapshot.services.push(ServiceInfo {
            namespace: "shop".into(),
            name: "cart".into(),
            cluster_ips: vec!["10.96.0.20".parse().unwrap()],
            ports: vec![ServicePort {
                name: None,
                port: 80,
                target_port: 8080,
            }],
            selector: labels(&[("app", "cart")]),
            labels: Labels::new(),
        });
        assert!(snapshot.service_selects("shop/cart", "shop/p", 8080));
        assert!(
            !snapshot.service_selects("shop/cart", "shop/p", 9090),
            "not its port"
        );
        assert!(
            !snapshot.service_selects("shop/cart", "shop/other", 8080),
            "not its pod"
        );
        assert!(
            !snapshot.service_selects("shop/made-up", "shop/p", 8080),
            "no such Service"
        );
        assert!(
            !snapshot.service_selects("cart", "shop/p", 8080),
            "not namespace/name"
        );
    }

    #[test]
    fn enrolment_table() {
        let mut snapshot = Snapshot::default();
        for (name, l) in [
            ("on", labels(&[(DATAPLANE_LABEL, ENABLED)])),
            ("off", labels(&[(DATAPLANE_LABEL, DISABLED)])),
            ("unlabelled", Labels::new()),
            ("other-value", labels(&[(DATAPLANE_LABEL, "yes")])),
        ] {
            snapshot.namespaces.insert(
                name.into(),
                NamespaceInfo {
                    name: name.into(),
                    labels: l,
                },
            );
        }
        let opt_out = labels(&[(DATAPLANE_LABEL, DISABLED)]);
        let cases = [
            (pod("on", Labels::new()), true),
            (pod("on", opt_out.clone()), false),
            (pod("on", labels(&[(DATAPLANE_LABEL, ENABLED)])), true),
            (pod("off", Labels::new()), false),
            (pod("unlabelled", Labels::new()), false),
            (pod("other-value", Labels::new()), false),
            (pod("undeclared", Labels::new()), false),
        ];
        for (p, want) in cases {
            assert_eq!(
                snapshot.enrolled(&p),
                want,
                "{}/{:?}",
                p.namespace,
                p.labels
            );
        }
        snapshot.pods = vec![pod("on", Labels::new()), pod("on", opt_out)];
        assert_eq!(snapshot.enrolled_pods_on("n1").count(), 1);
        assert_eq!(snapshot.enrolled_pods_on("n2").count(), 0);
        let v4_mapped: IpAddr = "::ffff:10.1.0.11".parse().unwrap();
        assert!(snapshot.pod_by_ip(v4_mapped).is_some());
    }
}
