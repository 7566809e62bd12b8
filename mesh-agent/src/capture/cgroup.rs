//! Locating the cgroup v2 hierarchy.
//!
//! Capture programs attach to the mesh's own subtree of it. Its mount point
//! differs between hybrid (`/sys/fs/cgroup/unified`) and unified
//! (`/sys/fs/cgroup`) systems, so it is read from the mount table rather than
//! assumed.
use std::path::PathBuf;

use super::mounts::{self, MOUNTINFO};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] std::io::Error),
    #[error(
        "no cgroup v2 filesystem is mounted (looked for type `cgroup2` in /proc/self/mountinfo); \
         nodemesh attaches its capture programs to cgroup v2 — mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NotMounted,
    #[error(
        "no cgroup v2 filesystem is visible to this process, but the host has one at {}: this \
         process runs in a mount namespace of its own, as `ip netns exec` creates (it remounts \
         /sys, hiding the cgroup mounts). Run the agent with `nsenter --net=/run/netns/<name> \
         mesh-agent …` instead, which enters only the network namespace",
        host.display()
    )]
    HiddenByMountNamespace { host: PathBuf },
}

/// Mount point of the cgroup v2 hierarchy.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let table = std::fs::read_to_string(MOUNTINFO).map_err(CgroupError::MountInfo)?;
    // Only read when ours has none: the init process's table says whether
    // the host has one that our mount namespace hides.
    find_cgroup2(&table)
        .ok_or_else(|| missing(std::fs::read_to_string("/proc/1/mountinfo").ok().as_deref()))
}

/// Why there is no cgroup v2 mount, given the init process's mount table
/// (when readable).
fn missing(init_mountinfo: Option<&str>) -> CgroupError {
    match init_mountinfo.and_then(find_cgroup2) {
        Some(host) => CgroupError::HiddenByMountNamespace { host },
        None => CgroupError::NotMounted,
    }
}

/// The mount point of the first `cgroup2` entry in a mountinfo table.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mounts::parse(mountinfo)
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(hybrid), Some("/sys/fs/cgroup/unified".into()));
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(unified), Some("/sys/fs/cgroup".into()));
        let v1_only = "26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2(v1_only), None);
    }

    #[test]
    fn a_mount_namespace_hiding_the_hosts_cgroup2_is_named() {
        let host = "26 25 0:23 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw\n";
        let hidden = missing(Some(host));
        assert!(
            matches!(&hidden, CgroupError::HiddenByMountNamespace { host } if host.as_os_str() == "/sys/fs/cgroup/unified")
        );
        assert!(hidden.to_string().contains("nsenter --net="), "{hidden}");
        assert!(matches!(missing(None), CgroupError::NotMounted));
        assert!(matches!(missing(Some("")), CgroupError::NotMounted));
    }
}
