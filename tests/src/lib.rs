//! nodemesh's simulated-cluster harness.
//!
//! A [`Cluster`] is real Linux plumbing, built by [`ClusterSpec::build`]:
//!
//! ```text
//!            underlay namespace: bridge br0  (172.30.0.0/24, fd00:30::/64)
//!             │ veth                     │ veth
//!   node n1: eth0 172.30.0.1          node n2: eth0 172.30.0.2
//!            br0  10.1.0.1/16                  br0  10.2.0.1/16
//!             │ veth                              │ veth
//!   pod a: eth0 10.1.0.11, default via 10.1.0.1    pod b: eth0 10.2.0.11 …
//! ```
//!
//! - every node and pod is a network namespace; nodes route to each other's
//!   pod subnets over the underlay, so pod traffic really crosses "nodes";
//! - every pod also has a cgroup v2 directory under a per-cluster root, and
//!   [`Cluster::spawn`] starts a process in a pod's namespace *and* cgroup,
//!   exactly where a container runtime would put it (so capture sees it);
//! - nothing connects to the machine's own namespace: there is no route out;
//! - names carry a per-process, per-cluster prefix ([`Cluster::prefix`]), so
//!   tests run concurrently; dropping the `Cluster` (also while unwinding from
//!   a panic) kills its processes and removes its cgroups and namespaces;
//! - [`leaks`] finds anything a test left behind under the suite's prefix.
pub mod cluster;
pub mod greeter;
pub mod leaks;
pub mod mesh;
pub mod process;
pub mod traffic;

pub use cluster::{Cluster, ClusterSpec, Host};
pub use process::PodChild;

/// Fails loudly when not root: a privileged test that lacks privileges must
/// never pass silently.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "end-to-end tests need root (network namespaces, cgroups, eBPF): run `sudo -E cargo xtask test`"
        );
    }
    Ok(())
}

/// Retries `check` (bounded, 20 s) until it holds: for changes that take
/// effect "soon" (a config reload, a record being written), never a fixed
/// sleep.
pub fn eventually(
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if check()? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{what}: still not true after 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
