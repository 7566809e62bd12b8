//! The CNI hand-off on Kubernetes: the `nodemesh-cni` chained plugin
//! ([`plugin`]) tells the agent about each new pod sandbox over a unix
//! socket ([`protocol`]); the agent ([`server`]) enrols the pod before
//! answering, so the pod never starts uncaptured. [`install`] puts the
//! plugin on the node.
pub mod install;
pub mod plugin;
pub mod protocol;
pub mod server;
