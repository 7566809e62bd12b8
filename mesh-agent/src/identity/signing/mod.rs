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
//! Protocol: HTTP/2 over the same mTLS as HBONE, `POST /v1/certificates`
//! with a JSON [`SignRequest`]; `200` + [`SignResponse`], or `400` (bad
//! request), `403` (not a node agent, or the pod is on another node), `404`
//! (pod unknown), each with a JSON [`SignError`].
pub mod client;
pub mod credentials;
pub mod server;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use super::{IdentityError, SpiffeId};
use crate::policy::ROOT_NAMESPACE;

pub const PATH: &str = "/v1/certificates";
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
