//! Certificate signing over mutual TLS: a node agent asks the CA for the
//! certificate of a pod it runs, sending a CSR so the pod's private key
//! never leaves the node.
//!
//! The agent authenticates with its node identity,
//! `spiffe://<td>/ns/nodemesh-system/sa/node-<node name>`; the CA signs only
//! for pods its own view of the cluster places on that node, and the
//! identity it signs comes from that view (namespace, service account) —
//! never from the request.
//!
//! That node identity comes from `mesh-agent ca issue-node` (local mode),
//! or, on Kubernetes, from the CA itself ([`bootstrap`]): the agent sends a
//! CSR over a fresh key with its projected service-account token, and the
//! CA ([`token_review`]) asks the API server who the token is — the node
//! agents' service account, on which node — before signing the node's
//! identity.
//!
//! Protocol: HTTP/2 over TLS (the server proven by the CA's identity),
//! JSON bodies:
//! - `POST /v1/certificates` ([`SignRequest`]), the client authenticated by
//!   its node certificate;
//! - `POST /v1/node-credentials` ([`NodeRequest`]) with
//!   `Authorization: Bearer <token>`, no client certificate needed;
//! - `POST /v1/workload-credentials` ([`SignRequest`]) with
//!   `Authorization: Bearer <token>`, no client certificate needed: a
//!   waypoint, which runs in its own pod without a node agent's powers,
//!   gets that pod's certificate: the pod is the one bound into the token,
//!   must carry the waypoint label, and its identity is the one the CA's
//!   view gives it;
//! - `GET /v1/workloads`, the client authenticated by its node certificate:
//!   the workload directory ([`directory`]), a stream of JSON lines that
//!   lasts until the CA ends it (at the latest after 30 minutes, and the
//!   agent comes back for a fresh list);
//!
//! the first three answered `200` + [`SignResponse`], or `400` (bad request), `401` (no
//! token, or the API server does not accept it), `403` (not a node agent,
//! or the pod is on another node), `404` (pod unknown, or the CA takes no
//! tokens), `503` (the CA cannot check a token now), each with a JSON
//! [`SignError`] that says why.
pub mod address;
pub mod bootstrap;
pub mod client;
pub mod credentials;
pub mod directory;
pub mod server;
pub mod token_review;

#[cfg(test)]
mod bootstrap_tests;
#[cfg(test)]
mod tests;

pub use address::CaAddr;
use serde::{Deserialize, Serialize};

use super::{IdentityError, SpiffeId};
use crate::policy::ROOT_NAMESPACE;

pub const PATH: &str = "/v1/certificates";
pub const NODE_PATH: &str = "/v1/node-credentials";
pub const DIRECTORY_PATH: &str = "/v1/workloads";
pub const WORKLOAD_PATH: &str = "/v1/workload-credentials";
const NODE_PREFIX: &str = "node-";
const CA_SERVICE_ACCOUNT: &str = "ca";

/// The identity a node agent authenticates with.
pub fn node_identity(trust_domain: &str, node: &str) -> Result<SpiffeId, IdentityError> {
    SpiffeId::new(
        trust_domain,
        ROOT_NAMESPACE,
        &format!("{NODE_PREFIX}{node}"),
    )
}

/// The node a node-agent identity speaks for; `None` for any other identity.
pub fn node_of(id: &SpiffeId) -> Option<&str> {
    (id.namespace() == ROOT_NAMESPACE)
        .then(|| id.service_account().strip_prefix(NODE_PREFIX))
        .flatten()
        .filter(|n| !n.is_empty())
}

/// The identity the CA serves with (agents insist on it).
pub fn ca_identity(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
    SpiffeId::new(trust_domain, ROOT_NAMESPACE, CA_SERVICE_ACCOUNT)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignRequest {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// PEM certificate signing request over the pod's key.
    pub csr: String,
}

/// A node agent's request for its own credentials (the token travels in
/// the `Authorization` header, as bearer tokens do).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRequest {
    /// PEM certificate signing request over the node's fresh key.
    pub csr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignResponse {
    pub identity: String,
    /// PEM leaf certificate.
    pub certificate: String,
    /// PEM trust bundle.
    pub bundle: String,
    pub not_after_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignError {
    pub error: String,
}
