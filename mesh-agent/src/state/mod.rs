//! The agent's view of the cluster: Kubernetes-shaped objects (namespaces,
//! pods, services) from one of two sources of truth — local YAML in a
//! directory (tests, demo, single machines) or the Kubernetes API server.
//!
//! - [`model`]: the compact [`Snapshot`] every stage queries, and enrolment;
//! - [`parse`]: YAML → typed objects → snapshot, with precise errors;
//! - [`watch`]: hot reload of the directory;
//! - [`index`]: objects as a watching source (the API server) holds them,
//!   made into the model by the same loader;
//! - [`cluster`]: that source: watches on the Kubernetes API server;
//! - [`directory`]: the other nodes' pods, as the CA serves them to node
//!   agents that watch only their own node's;
//! - [`source`]: opening either source;
//! - [`gateway`], [`traffic`]: Gateway API routes and nodemesh's
//!   TrafficPolicies, kept as written;
//! - [`keys`]: every label and annotation key nodemesh reads.
pub mod cluster;
pub mod directory;
mod error;
pub mod gateway;
pub mod index;
pub mod keys;
pub mod model;
mod parse;
pub mod source;
pub mod traffic;
mod watch;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use model::{NamespaceInfo, PodInfo, ServiceInfo, ServicePort, Snapshot, WaypointRef};
pub use parse::{Loaded, load_dir};
pub use watch::watch;
