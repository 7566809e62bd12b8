//! The node agent role: per-pod enrolment, composing the stages below it
//! (capture programs, in-pod listeners, proxy tasks, certificates).
//!
//! - [`pods`]: this node's pods — the model joined with where the node
//!   found them ([`whereabouts`]: annotations, the CNI plugin, a scan of
//!   pinned namespaces and `/proc` by [`discover`]) — driving [`enrol`];
//!   [`owner`] says which of two agents (a rolling update) may change it.
//! - [`enrol`]: turning "these pods should be meshed" into kernel state,
//!   in-pod listeners and proxy tasks, and back out.
//! - [`cni`]: the chained CNI plugin, its socket on the agent, its installer.
//! - [`taint`]: on Kubernetes, lifting the start-up taint off this node
//!   once the agent is ready.
pub mod cni;
pub mod discover;
pub mod enrol;
pub mod owner;
pub mod pods;
pub mod taint;
pub mod whereabouts;
