//! The workload directory: what a node agent needs to know about the pods
//! of *other* nodes (address, node, service account, labels), served by the
//! CA from its own watch of every pod.
//!
//! A node agent on Kubernetes watches only its own node's Pods (a field
//! selector on `spec.nodeName`): with one cluster-wide pod watch per node,
//! the API server would send every pod change to every node. The CA, which
//! watches every pod anyway (it checks pod→node bindings before signing),
//! fans them out instead, as Istio's control plane does for ztunnel. The
//! agent still needs remote pods: a tunnel's destination must prove the
//! identity its service account gives it, Services select pods by label,
//! and a pod may opt out of the mesh by label.
//!
//! The wire format mirrors a Kubernetes watch, so the agent feeds it to the
//! same [`Index`](super::index::Index) as its API-server watches: one JSON
//! [`Line`] per event, the objects minimal Pods. Each stream starts with a
//! full list (`Init`, `InitApply`…, `InitDone`), so a reconnecting agent
//! prunes what was deleted while it was away; `Bookmark`s keep a quiet
//! stream provably alive.
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodIP, PodSpec, PodStatus};
use kube::{api::DynamicObject, runtime::watcher};
use serde::{Deserialize, Serialize};

use super::{Loaded, PodInfo, Snapshot};

/// One event of the stream, as a JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "object")]
pub enum Line {
    /// A (re)list starts: `InitApply` for each pod follow, then `InitDone`.
    Init,
    InitApply(serde_json::Value),
    InitDone,
    /// Added or changed.
    Apply(serde_json::Value),
    Delete(serde_json::Value),
    /// Nothing changed; the stream is alive.
    Bookmark,
}

/// What one reader (the agent of `node`) has been sent, to send it only
/// what changes: the model it was last sent from, shared with the CA (a
/// copy per reader would cost pods × nodes).
pub struct Publisher {
    node: String,
    sent: Arc<Loaded>,
}

impl Publisher {
    /// For the agent of `node`: its own pods are never sent (it watches
    /// them itself).
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            sent: Arc::default(),
        }
    }

    /// Every other node's pod in `model`, as a list.
    pub fn list(&mut self, model: &Arc<Loaded>) -> Vec<Line> {
        self.sent = Arc::clone(model);
        let mut lines = vec![Line::Init];
        lines.extend(
            others(&self.sent.snapshot, &self.node)
                .values()
                .map(|p| Line::InitApply(pod_object(p))),
        );
        lines.push(Line::InitDone);
        lines
    }

    /// What changed between what was sent and `model` (empty when nothing
    /// did).
    pub fn update(&mut self, model: &Arc<Loaded>) -> Vec<Line> {
        let before = others(&self.sent.snapshot, &self.node);
        let now = others(&model.snapshot, &self.node);
        let mut lines = Vec::new();
        for (key, pod) in &now {
            if before.get(key) != Some(pod) {
                lines.push(Line::Apply(pod_object(pod)));
            }
        }
        for (key, pod) in &before {
            if !now.contains_key(key) {
                lines.push(Line::Delete(pod_object(pod)));
            }
        }
        self.sent = Arc::clone(model);
        lines
    }
}

/// The pods of `snapshot` on nodes other than `node`, by key.
fn others<'a>(snapshot: &'a Snapshot, node: &str) -> BTreeMap<(&'a str, &'a str), &'a PodInfo> {
    snapshot
        .pods
        .iter()
        .filter(|p| p.node != node)
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
        .collect()
}

/// The smallest Pod the model reads back as `pod` (readiness included).
pub fn pod_object(pod: &PodInfo) -> serde_json::Value {
    let object = Pod {
        metadata: kube::api::ObjectMeta {
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            labels: (!pod.labels.is_empty()).then(|| pod.labels.clone()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(pod.node.clone()),
            service_account_name: Some(pod.service_account.clone()),
            containers: Vec::new(),
            ..Default::default()
        }),
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if pod.ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            pod_ips: (!pod.ips.is_empty()).then(|| {
                pod.ips
                    .iter()
                    .map(|ip| PodIP { ip: ip.to_string() })
                    .collect()
            }),
            ..Default::default()
        }),
    };
    let mut value = serde_json::to_value(object).expect("a Pod serializes");
    value["apiVersion"] = "v1".into();
    value["kind"] = "Pod".into();
    value
}

#[derive(Debug, thiserror::Error)]
#[error("a workload directory line is not understood: {0}")]
pub struct LineError(#[source] serde_json::Error);

/// A line read back as the watch event it stands for (`None`: a bookmark).
pub fn event(line: &[u8]) -> Result<Option<watcher::Event<DynamicObject>>, LineError> {
    let object = |v: serde_json::Value| serde_json::from_value::<DynamicObject>(v);
    let line: Line = serde_json::from_slice(line).map_err(LineError)?;
    Ok(Some(match line {
        Line::Init => watcher::Event::Init,
        Line::InitApply(v) => watcher::Event::InitApply(object(v).map_err(LineError)?),
        Line::InitDone => watcher::Event::InitDone,
        Line::Apply(v) => watcher::Event::Apply(object(v).map_err(LineError)?),
        Line::Delete(v) => watcher::Event::Delete(object(v).map_err(LineError)?),
        Line::Bookmark => return Ok(None),
    }))
}

#[cfg(test)]
mod tests;
