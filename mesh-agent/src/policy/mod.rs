//! L4 policy: who may connect to whom, and whether plaintext is accepted.
//!
//! - [`api`] — the objects users write (`nodemesh.io/v1alpha1`
//!   `AuthorizationPolicy` and `PeerAuthentication`);
//! - [`compile`] — validated, matcher-ready policies, built when the config
//!   changes, never per connection;
//! - [`eval`] — the decision for one connection, with the rule that made it
//!   (pure, so the proxy and `meshctl why` share it);
//! - [`istio`] — the same objects in Istio's `security.istio.io` shape,
//!   translated into the compiled form, so one evaluator judges both;
//! - [`peer_auth`] — STRICT or PERMISSIVE for a pod.
pub mod api;
pub mod compile;
pub mod eval;
pub mod istio;
pub mod peer_auth;

#[cfg(test)]
mod istio_tests;
#[cfg(test)]
mod tests;

pub use compile::Policy;
pub use eval::{Connection, Decision, Request, Verdict, evaluate};

/// The API group and version of nodemesh's own objects.
pub const API_VERSION: &str = "nodemesh.io/v1alpha1";
/// nodemesh's own namespace (agents' and the CA's identities); its
/// PeerAuthentication applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "nodemesh-system";
/// Istio's default root namespace, so an Istio mesh-wide PeerAuthentication
/// works unchanged.
pub const ISTIO_ROOT_NAMESPACE: &str = "istio-system";
/// Where a namespace-wide PeerAuthentication applies to the whole mesh, in
/// the order they are consulted.
pub const MESH_ROOTS: [&str; 2] = [ROOT_NAMESPACE, ISTIO_ROOT_NAMESPACE];
