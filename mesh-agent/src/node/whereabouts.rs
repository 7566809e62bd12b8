//! Where this node's pods are: the network namespace (and cgroup) of each,
//! which the API server does not know.
//!
//! Local YAML names them in annotations. On Kubernetes the node learns them
//! itself: from the CNI plugin as each sandbox is set up (with the addresses
//! the CNI result gave, before the kubelet writes them to the pod), and, for
//! pods that were running before the agent, from a scan of pinned network
//! namespaces and `/proc` ([`super::discover`]). [`placements`] joins the model with what the node
//! found into the set enrolment works from.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use super::enrol::PodPlacement;
use crate::state::Snapshot;

/// One pod's place on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub netns: PathBuf,
    /// Unknown when the CNI reported the sandbox before any process ran in it.
    pub cgroup: Option<PathBuf>,
    /// What the CNI result or the namespace's interfaces hold; used until the
    /// model has the pod's addresses.
    pub ips: Vec<IpAddr>,
    /// The sandbox's container ID when the CNI plugin reported the pod (a
    /// DEL for an older sandbox of the same pod must not forget the newer
    /// one); `None` when the scan found it.
    pub sandbox: Option<String>,
}

/// The pods this node has located, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Whereabouts {
    pods: BTreeMap<String, Located>,
}

impl Whereabouts {
    /// Records where `pod` is; a CNI report replaces what a scan found.
    pub fn found(&mut self, pod: &str, located: Located) {
        let keep_cni = located.sandbox.is_none()
            && self
                .pods
                .get(pod)
                .is_some_and(|old| old.sandbox.is_some() && old.netns.exists());
        if !keep_cni {
            self.pods.insert(pod.to_owned(), located);
        }
    }

    /// Forgets `pod` because its sandbox `sandbox` was torn down: only if
    /// that is the sandbox recorded. A pod the scan found has no sandbox ID
    /// to compare, so a DEL (perhaps of an older sandbox) never forgets it;
    /// it goes when its namespace does ([`Whereabouts::prune`]). Returns
    /// whether anything was forgotten.
    pub fn gone(&mut self, pod: &str, sandbox: &str) -> bool {
        let matches = self
            .pods
            .get(pod)
            .is_some_and(|l| l.sandbox.as_deref() == Some(sandbox));
        if matches {
            self.pods.remove(pod);
        }
        matches
    }

    pub fn get(&self, pod: &str) -> Option<&Located> {
        self.pods.get(pod)
    }

    /// Drops pods whose network namespace is gone (a DEL the agent missed).
    pub fn prune(&mut self) {
        self.pods.retain(|_, l| l.netns.exists());
    }
}

/// What enrolment should do on this node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pods to enrol, with everything enrolment needs.
    pub placements: Vec<PodPlacement>,
    /// Enrolled pods of this node whose network namespace is not known yet
    /// (`namespace/name`): the CNI plugin or a `/proc` scan will find them.
    pub unlocated: Vec<String>,
}

/// The enrolled pods of `node`, placed by the model's annotations where it
/// has them and by what the node found otherwise.
pub fn placements(snapshot: &Snapshot, node: &str, found: &Whereabouts) -> Plan {
    let mut plan = Plan::default();
    for pod in snapshot.enrolled_pods_on(node) {
        let key = pod.key();
        let located = found.get(&key);
        let declared = |p: &Path| (!p.as_os_str().is_empty()).then(|| p.to_owned());
        let netns = declared(&pod.netns).or_else(|| located.map(|l| l.netns.clone()));
        let Some(netns) = netns else {
            plan.unlocated.push(key);
            continue;
        };
        let ips = match (pod.ips.is_empty(), located) {
            (true, Some(l)) => l.ips.clone(),
            _ => pod.ips.clone(),
        };
        plan.placements.push(PodPlacement {
            pod: key,
            netns,
            cgroup: declared(&pod.cgroup).or_else(|| located.and_then(|l| l.cgroup.clone())),
            ips,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NamespaceInfo, PodInfo};

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        for (name, on) in [("shop", true), ("legacy", false)] {
            let mut labels = BTreeMap::new();
            if on {
                labels.insert("nodemesh.io/dataplane".into(), "enabled".into());
            }
            s.namespaces.insert(
                name.into(),
                NamespaceInfo {
                    name: name.into(),
                    labels,
                },
            );
        }
        let pod = |ns: &str, name: &str, node: &str, ip: Option<&str>, netns: &str| PodInfo {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            service_account: "default".into(),
            ips: ip.map(|i| i.parse().unwrap()).into_iter().collect(),
            labels: BTreeMap::new(),
            netns: netns.into(),
            cgroup: PathBuf::new(),
            ready: true,
        };
        s.pods = vec![
            pod("shop", "annotated", "n1", Some("10.0.0.1"), "/run/netns/a"),
            pod("shop", "pending", "n1", None, ""),
            pod("shop", "running", "n1", Some("10.0.0.3"), ""),
            pod("shop", "elsewhere", "n2", Some("10.0.0.4"), ""),
            pod("legacy", "outside", "n1", Some("10.0.0.5"), ""),
        ];
        s
    }

    fn located(netns: &str, ip: &str, sandbox: Option<&str>) -> Located {
        Located {
            netns: netns.into(),
            cgroup: None,
            ips: vec![ip.parse().unwrap()],
            sandbox: sandbox.map(Into::into),
        }
    }

    #[test]
    fn the_model_places_annotated_pods_and_the_node_places_the_rest() {
        let s = snapshot();
        let mut found = Whereabouts::default();
        let plan = placements(&s, "n1", &found);
        let names: Vec<&str> = plan.placements.iter().map(|p| p.pod.as_str()).collect();
        assert_eq!(names, ["shop/annotated"]);
        assert_eq!(plan.unlocated, ["shop/pending", "shop/running"]);

        found.found(
            "shop/pending",
            located("/run/netns/cni-1", "10.0.0.2", Some("c1")),
        );
        found.found("shop/running", located("/proc/7/ns/net", "10.9.9.9", None));
        let plan = placements(&s, "n1", &found);
        assert!(plan.unlocated.is_empty(), "{plan:?}");
        let pending = &plan.placements[1];
        assert_eq!(pending.netns, Path::new("/run/netns/cni-1"));
        // No address in the model yet: the CNI result's.
        assert_eq!(pending.ips, ["10.0.0.2".parse::<IpAddr>().unwrap()]);
        // The model's addresses win once it has them.
        assert_eq!(
            plan.placements[2].ips,
            ["10.0.0.3".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_del_for_an_older_sandbox_keeps_the_newer_one() {
        let mut found = Whereabouts::default();
        found.found(
            "shop/p",
            located("/run/netns/cni-2", "10.0.0.2", Some("new")),
        );
        assert!(!found.gone("shop/p", "old"));
        assert!(found.get("shop/p").is_some());
        assert!(found.gone("shop/p", "new"));
        assert!(found.get("shop/p").is_none());
        found.found("shop/q", located("/run/netns/cni-3", "10.0.0.3", None));
        assert!(
            !found.gone("shop/q", "any"),
            "a scan-found pod outlives DELs"
        );
    }
}
