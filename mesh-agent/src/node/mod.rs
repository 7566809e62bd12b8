//! The node agent role: per-pod enrolment, composing the stages below it
//! (capture programs, in-pod listeners, proxy tasks, certificates).
//!
//! - [`enrol`]: turning "these pods should be meshed" into kernel state,
//!   in-pod listeners and proxy tasks, and back out.
//! - [`taint`]: on Kubernetes, lifting the start-up taint off this node
//!   once the agent is ready.
pub mod enrol;
pub mod taint;
