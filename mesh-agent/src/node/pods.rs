//! This node's pods: the model's wishes joined with where the node found
//! each pod ([`Whereabouts`]), turned into enrolment. One owner, driven by
//! two inputs: a new model, and the CNI plugin's reports.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{
    cni::server::Event,
    discover::Scan,
    enrol::{EnrolError, Enrolment},
    whereabouts::{Whereabouts, placements},
};
use crate::state::Snapshot;

/// A `/proc` scan enters every candidate namespace: at most this often.
const SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// Where to look for pods that were running before the agent.
pub struct ProcScan {
    pub proc_root: PathBuf,
    pub cgroup_mount: PathBuf,
    pub pods_cgroup: PathBuf,
}

pub struct NodePods {
    node: String,
    enrolment: Enrolment,
    found: Whereabouts,
    scan: ProcScan,
    last_scan: Option<Instant>,
    /// Enrolled pods of this node not located yet (`namespace/name`).
    unlocated: Vec<String>,
}

impl NodePods {
    pub fn new(node: &str, enrolment: Enrolment, scan: ProcScan) -> Self {
        Self {
            node: node.to_owned(),
            enrolment,
            found: Whereabouts::default(),
            scan,
            last_scan: None,
            unlocated: Vec::new(),
        }
    }

    pub fn enrolment(&self) -> &Enrolment {
        &self.enrolment
    }

    /// Enrolled pods of this node whose network namespace is not known yet:
    /// running uncaptured until the CNI plugin or a `/proc` scan finds them.
    pub fn unlocated(&self) -> &[String] {
        &self.unlocated
    }

    /// Brings enrolment in line with `snapshot`; returns what failed.
    pub async fn reconcile(&mut self, snapshot: &Snapshot) -> Vec<EnrolError> {
        self.found.prune();
        let mut plan = placements(snapshot, &self.node, &self.found);
        if !plan.unlocated.is_empty() && self.scan_due() {
            self.scan_for(snapshot, &plan.unlocated).await;
            plan = placements(snapshot, &self.node, &self.found);
        }
        if plan.unlocated != self.unlocated && !plan.unlocated.is_empty() {
            tracing::warn!(
                pods = ?plan.unlocated,
                "pods of enrolled namespaces with no known network namespace yet: their traffic \
                 is not captured until the CNI plugin reports them or a /proc scan finds them"
            );
        }
        self.unlocated = plan.unlocated;
        self.enrolment.reconcile(&plan.placements).await
    }

    /// Acts on a CNI report, answering it once enrolment is done.
    pub async fn handle(&mut self, event: Event, snapshot: &Snapshot) -> Vec<EnrolError> {
        match event {
            Event::Located {
                pod,
                located,
                reply,
            } => {
                self.found.found(&pod, located);
                let errors = self.reconcile(snapshot).await;
                let answer = if self.enrolment.is_enrolled(&pod) {
                    Ok(())
                } else {
                    Err(errors
                        .iter()
                        .find(|e| e.pod() == pod)
                        .map_or_else(|| "see the agent's log".to_owned(), ToString::to_string))
                };
                let _ = reply.send(answer);
                errors
            }
            Event::Gone {
                pod,
                sandbox,
                reply,
            } => {
                let errors = if self.found.gone(&pod, Some(&sandbox)) {
                    self.reconcile(snapshot).await
                } else {
                    Vec::new()
                };
                let _ = reply.send(());
                errors
            }
            Event::Enrolled { pod, reply } => {
                let _ = reply.send(self.enrolment.is_enrolled(&pod));
                Vec::new()
            }
        }
    }

    fn scan_due(&self) -> bool {
        self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_INTERVAL)
    }

    async fn scan_for(&mut self, snapshot: &Snapshot, unlocated: &[String]) {
        self.last_scan = Some(Instant::now());
        let wanted: BTreeMap<IpAddr, String> = unlocated
            .iter()
            .filter_map(|key| snapshot.pod(key))
            .flat_map(|pod| pod.ips.iter().map(move |ip| (*ip, pod.key())))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let (proc_root, mount, pods) = (
            self.scan.proc_root.clone(),
            self.scan.cgroup_mount.clone(),
            self.scan.pods_cgroup.clone(),
        );
        let scanned = tokio::task::spawn_blocking(move || {
            Scan {
                proc_root: &proc_root,
                cgroup_mount: &mount,
                pods_cgroup: &pods,
                wanted: &wanted,
            }
            .run()
        })
        .await;
        match scanned {
            Ok(Ok(found)) => {
                for (pod, located) in found {
                    tracing::info!(%pod, netns = %located.netns.display(), "found by the /proc scan");
                    self.found.found(&pod, located);
                }
            }
            Ok(Err(e)) => tracing::warn!("/proc scan: {e}"),
            Err(e) => tracing::warn!("/proc scan stopped: {e}"),
        }
    }
}
