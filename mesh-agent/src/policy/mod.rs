//! L4 policy: who may connect to whom, and whether plaintext is accepted.
//!
//! - [`api`] — the objects users write (`nodemesh.io/v1alpha1`
//!   `AuthorizationPolicy` and `PeerAuthentication`);
//! - [`compile`] — validated, matcher-ready policies, built when the config
//!   changes, never per connection;
//! - [`eval`] — the decision for one connection, with the rule that made it
//!   (pure, so the proxy and `meshctl why` share it);
//! - [`peer_auth`] — STRICT or PERMISSIVE for a namespace.
pub mod api;
pub mod compile;
pub mod eval;
pub mod peer_auth;

#[cfg(test)]
mod tests;

pub use compile::Policy;
pub use eval::{Connection, Decision, Request, Verdict, evaluate};

/// The API group and version of nodemesh's own objects.
pub const API_VERSION: &str = "nodemesh.io/v1alpha1";
/// Namespace whose PeerAuthentication applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "nodemesh-system";
