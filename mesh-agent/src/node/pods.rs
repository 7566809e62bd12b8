//! This node's pods: the model's wishes joined with where the node found
//! each pod ([`Whereabouts`]), turned into enrolment. One owner, driven by
//! three inputs: a new model, the CNI plugin's reports, and a timer that
//! retries what is not in place yet.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    cni::server::Event,
    discover::{self, Places},
    enrol::{EnrolError, Enrolment},
    owner::Ownership,
    whereabouts::{Whereabouts, placements},
};
use crate::state::Snapshot;

/// A scan enters every candidate namespace: at most this often.
const SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Failed enrolments are retried after this, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct NodePods {
    node: String,
    enrolment: Enrolment,
    found: Whereabouts,
    /// Where to look for pods that were running before the agent.
    scan: Arc<Places>,
    owner: Ownership,
    last_scan: Option<Instant>,
    /// Enrolled pods of this node not located yet (`namespace/name`).
    unlocated: Vec<String>,
    /// When to try again after enrolments failed, and the wait after that.
    retry: Option<(Instant, Duration)>,
    superseded: bool,
}

impl NodePods {
    pub fn new(node: &str, enrolment: Enrolment, scan: Places, owner: Ownership) -> Self {
        Self {
            node: node.to_owned(),
            enrolment,
            found: Whereabouts::default(),
            scan: Arc::new(scan),
            owner,
            last_scan: None,
            unlocated: Vec::new(),
            retry: None,
            superseded: false,
        }
    }

    pub fn enrolment(&self) -> &Enrolment {
        &self.enrolment
    }

    /// Enrolled pods of this node whose network namespace is not known yet:
    /// running uncaptured until the CNI plugin or a scan finds them.
    pub fn unlocated(&self) -> &[String] {
        &self.unlocated
    }

    /// Whether another agent owns the node now (see [`Ownership`]): while it
    /// does this one changes nothing. Asked every status tick, which also
    /// keeps this agent's claim fresh.
    pub fn superseded(&mut self) -> bool {
        let superseded = !self.owner.hold();
        if superseded != self.superseded {
            if superseded {
                tracing::warn!(
                    owner = %self.owner.holder(),
                    "a newer agent owns this node now: this one stops changing capture state \
                     and serves only the connections it has, until it is stopped"
                );
            } else {
                tracing::info!("this agent owns the node again");
                // The other agent may have changed what is enrolled.
                self.retry = Some((Instant::now(), RETRY_FIRST));
            }
            self.superseded = superseded;
        }
        self.superseded
    }

    /// [`NodePods::superseded`] as last found, without reading the file.
    pub fn was_superseded(&self) -> bool {
        self.superseded
    }

    /// Brings enrolment in line with `snapshot`; returns what failed.
    pub async fn reconcile(&mut self, snapshot: &Snapshot) -> Vec<EnrolError> {
        if self.superseded() {
            return Vec::new();
        }
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
                 is not captured until the CNI plugin reports them or a scan finds them"
            );
        }
        self.unlocated = plan.unlocated;
        let errors = self.enrolment.reconcile(&plan.placements).await;
        self.retry = match (errors.is_empty(), self.retry) {
            (true, _) => None,
            (false, None) => Some((Instant::now() + RETRY_FIRST, RETRY_FIRST * 2)),
            (false, Some((_, wait))) => Some((Instant::now() + wait, (wait * 2).min(RETRY_MAX))),
        };
        errors
    }

    /// Whether the timer should reconcile again: pods are still unlocated,
    /// or enrolments failed and their retry is due.
    pub fn retry_due(&self) -> bool {
        !self.superseded
            && (!self.unlocated.is_empty()
                || self.retry.is_some_and(|(at, _)| Instant::now() >= at))
    }

    /// Acts on a CNI report, answering it once enrolment is done.
    pub async fn handle(&mut self, event: Event, snapshot: &Snapshot) -> (Vec<EnrolError>, Answer) {
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
                } else if self.superseded {
                    Err("this agent is being replaced; the new one answers".to_owned())
                } else {
                    Err(errors
                        .iter()
                        .find(|e| e.pod() == pod)
                        .map_or_else(|| "see the agent's log".to_owned(), ToString::to_string))
                };
                (errors, Answer::new(reply, answer))
            }
            Event::Gone {
                pod,
                sandbox,
                reply,
            } => {
                let errors = if self.found.gone(&pod, &sandbox) {
                    self.reconcile(snapshot).await
                } else {
                    Vec::new()
                };
                (errors, Answer::new(reply, ()))
            }
            Event::Enrolled { pod, reply } => {
                let enrolled = self.enrolment.is_enrolled(&pod);
                (Vec::new(), Answer::new(reply, enrolled))
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
        let places = Arc::clone(&self.scan);
        let scanned = tokio::task::spawn_blocking(move || discover::find(&places, &wanted)).await;
        match scanned {
            Ok(Ok(found)) => {
                for (pod, located) in found {
                    tracing::info!(%pod, netns = %located.netns.display(), "found by the pod scan");
                    self.found.found(&pod, located);
                }
            }
            Ok(Err(e)) => tracing::warn!("pod scan: {e}"),
            Err(e) => tracing::warn!("pod scan stopped: {e}"),
        }
    }
}

/// The reply to a CNI request, held back until the caller has published
/// what the request changed (the plugin's caller may look at the status at
/// once).
pub struct Answer(Box<dyn FnOnce() + Send>);

impl Answer {
    fn new<T: Send + 'static>(reply: tokio::sync::oneshot::Sender<T>, value: T) -> Self {
        Self(Box::new(move || {
            // The plugin may have given up waiting; nothing to do then.
            let _ = reply.send(value);
        }))
    }

    pub fn send(self) {
        (self.0)()
    }
}
