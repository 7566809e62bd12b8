//! The start-up taint `nodemesh.io/agent-not-ready` (NoExecute): a node
//! may be created with it so that no pod runs there before the agent can
//! capture it; the agent lifts it off its own Node once ready.
//!
//! Only that taint goes, and a taint anyone else adds or removes meanwhile
//! is never lost: a JSON merge patch replaces the whole `taints` list, so
//! the list is read, ours taken out, and written back on condition that the
//! Node has not changed since (`metadata.resourceVersion` in the patch; the
//! API server answers 409 Conflict otherwise, and it is read again).
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::{
    Client,
    api::{Api, Patch, PatchParams},
};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::identity::renew;

pub const TAINT_KEY: &str = "nodemesh.io/agent-not-ready";
/// A busy Node (status updates, other controllers' taints) may conflict a
/// few times in a row; past this many, the attempt counts as failed.
const MAX_CONFLICTS: usize = 5;

/// What [`remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// The Node does not carry the taint: nothing written.
    Absent,
}

#[derive(Debug, thiserror::Error)]
pub enum TaintError {
    #[error("reading Node {node}: {source} (may the agent get nodes?)")]
    Read {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching Node {node}: {source} (may the agent patch nodes?)")]
    Patch {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("Node {node} changed under every one of {MAX_CONFLICTS} attempts")]
    Conflicts { node: String },
}

/// Whether `taint` is ours, whatever its effect (NoExecute as shipped;
/// NoSchedule if an operator chose that).
fn is_ours(taint: &Taint) -> bool {
    taint.key == TAINT_KEY
}

/// Removes the taint from Node `node`, if it carries it.
pub async fn remove(client: &Client, node: &str) -> Result<Removal, TaintError> {
    let api: Api<Node> = Api::all(client.clone());
    for _ in 0..MAX_CONFLICTS {
        let current = api.get(node).await.map_err(|source| TaintError::Read {
            node: node.to_owned(),
            source,
        })?;
        let taints = current.spec.and_then(|s| s.taints).unwrap_or_default();
        let kept: Vec<&Taint> = taints.iter().filter(|t| !is_ours(t)).collect();
        if kept.len() == taints.len() {
            return Ok(Removal::Absent);
        }
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {"taints": kept},
        });
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(Removal::Removed),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(
                    node,
                    "Node changed while lifting the taint; reading it again"
                );
            }
            Err(source) => {
                return Err(TaintError::Patch {
                    node: node.to_owned(),
                    source,
                });
            }
        }
    }
    Err(TaintError::Conflicts {
        node: node.to_owned(),
    })
}

/// Removes the taint in the background, retrying with backoff until it is
/// gone; failures are logged as errors (pods wait while it stays) and never
/// stop the agent.
pub fn spawn_removal(client: Client, node: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let removal = renew::until_obtained(
            || remove(&client, &node),
            |e, retry| {
                tracing::error!(
                    "cannot lift the taint {TAINT_KEY} off this node, so pods that do not \
                     tolerate it wait; retrying in {retry:?}: {e}"
                );
            },
        )
        .await;
        match removal {
            Removal::Removed => tracing::info!(%node, "lifted the taint {TAINT_KEY}"),
            Removal::Absent => tracing::debug!(%node, "no taint {TAINT_KEY} to lift"),
        }
    })
}

#[cfg(test)]
mod tests;
