//! Capture: the kernel programs that hand enrolled pods' connections to the
//! agent, and the user-space side that loads, attaches and reads them.
//!
//! - [`object`]: the eBPF object embedded at build time and its programs;
//! - [`netns`]: entering pod network namespaces and naming them by cookie;
//! - [`cgroup`]: finding the cgroup v2 hierarchy capture attaches under.
pub mod cgroup;
pub mod netns;
pub mod object;

pub use object::{Capture, CaptureCounters, CaptureError};
