//! Capture: the kernel programs that hand enrolled pods' connections to the
//! agent, and the user-space side that loads, pins, attaches and reads them.
//!
//! - [`object`]: the embedded eBPF object and its pinned state (one owner);
//! - [`proof`]: what capture did for each enrolled pod, as `meshctl status`
//!   shows it;
//! - [`inpod`]: the agent's sockets inside a pod's namespace;
//! - [`events`]: the ring buffer of capture events;
//! - [`netns`]: entering pod network namespaces and naming them by cookie;
//! - [`cgroup`]: finding the cgroup v2 hierarchy capture attaches under;
//! - [`mounts`]: the mount table both that and the bpffs check read;
//! - [`kernel`]: refusing kernels that lack a needed hook, by name.
pub mod cgroup;
pub mod events;
pub mod inpod;
pub mod kernel;
pub mod mounts;
pub mod netns;
pub mod object;
pub mod proof;
pub mod rtnetlink;

pub use object::{Capture, CaptureCounters, CaptureError};
