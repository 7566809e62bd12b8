//! Finding pods that were running before the agent (or before the CNI
//! plugin was installed), by their addresses.
//!
//! Two places name network namespaces: the directory where the container
//! runtime pins each sandbox's (`/var/run/netns` for containerd and CRI-O),
//! and the host's `/proc`, where each process names its own
//! (`/proc/<pid>/ns/net`) and its cgroup. A namespace whose interfaces carry
//! the address of an unlocated pod of this node is that pod's. Pins are
//! read first: opening another user's `/proc/<pid>/ns/net` needs
//! CAP_SYS_PTRACE, which the agent does not have, so `/proc` finds only
//! pods whose processes run as root (runtimes that pin nothing, such as
//! cri-dockerd with root pause containers). From `/proc`, only processes
//! under the pods cgroup count, so a host process is never taken for a pod;
//! where the cgroup path cannot be placed (an agent in its own cgroup
//! namespace sees paths above its root as `/..`), the address alone
//! decides: addresses are unique on one node.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::whereabouts::Located;
use crate::capture::netns::in_netns;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("reading {path}: {source} (is the host's /proc mounted there? see --host-proc)")]
    Proc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where to look.
#[derive(Debug)]
pub struct Places {
    /// Where the runtime pins sandboxes' network namespaces.
    pub netns_dir: PathBuf,
    /// The host's `/proc` (`/host/proc` in the DaemonSet).
    pub proc_root: PathBuf,
    /// The cgroup v2 mount and the pods cgroup below it.
    pub cgroup_mount: PathBuf,
    pub pods_cgroup: PathBuf,
}

/// One scan: where, and the addresses of the pods looked for →
/// `namespace/name`.
struct Scan<'a> {
    places: &'a Places,
    wanted: &'a BTreeMap<IpAddr, String>,
}

/// The `wanted` pods found in `places`, by `namespace/name`. Namespaces and
/// processes that go away during the scan are skipped; only an unreadable
/// `/proc` is an error (a missing pin directory means the runtime pins
/// nothing).
pub fn find(
    places: &Places,
    wanted: &BTreeMap<IpAddr, String>,
) -> Result<BTreeMap<String, Located>, DiscoverError> {
    Scan { places, wanted }.run()
}

impl Scan<'_> {
    fn run(&self) -> Result<BTreeMap<String, Located>, DiscoverError> {
        let mut found = BTreeMap::new();
        if self.wanted.is_empty() {
            return Ok(found);
        }
        let Places {
            netns_dir,
            proc_root,
            ..
        } = self.places;
        // Neither our own namespace nor the host's (init's) is a pod's.
        let mut seen: BTreeSet<(u64, u64)> = [
            Path::new("/proc/thread-self/ns/net").to_owned(),
            proc_root.join("1/ns/net"),
        ]
        .iter()
        .filter_map(|p| netns_id(p))
        .collect();
        let pins = std::fs::read_dir(netns_dir).into_iter().flatten().flatten();
        for pin in pins {
            self.look(&pin.path(), None, &mut seen, &mut found);
        }
        let entries = std::fs::read_dir(proc_root).map_err(|source| DiscoverError::Proc {
            path: proc_root.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let pid = entry.file_name();
            if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let dir = entry.path();
            if let Some(cgroup) = self.pod_cgroup(&dir) {
                self.look(&dir.join("ns/net"), cgroup, &mut seen, &mut found);
            }
        }
        Ok(found)
    }

    /// Records the namespace at `netns` if its addresses are a wanted pod's.
    fn look(
        &self,
        netns: &Path,
        cgroup: Option<PathBuf>,
        seen: &mut BTreeSet<(u64, u64)>,
        found: &mut BTreeMap<String, Located>,
    ) {
        let Some(id) = netns_id(netns) else {
            return;
        };
        if !seen.insert(id) {
            return;
        }
        let addresses = in_netns(netns, local_addresses)
            .map_err(|e| e.to_string())
            .and_then(|listed| listed.map_err(|e| e.to_string()));
        let addresses = match addresses {
            Ok(addresses) => addresses,
            // Gone, not a namespace, or not ours to open: not a pod we can
            // enrol.
            Err(e) => {
                tracing::debug!(netns = %netns.display(), "skipped in the pod scan: {e}");
                return;
            }
        };
        let ips: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|ip| self.wanted.contains_key(ip))
            .collect();
        let Some(pod) = ips.first().map(|ip| self.wanted[ip].clone()) else {
            return;
        };
        found.insert(
            pod,
            Located {
                netns: netns.to_owned(),
                cgroup,
                ips,
                sandbox: None,
            },
        );
    }

    /// The process's cgroup if it may be a pod's: `Some(None)` when its path
    /// cannot be placed, `None` when it is outside the pods cgroup.
    #[expect(
        clippy::option_option,
        reason = "three answers: outside, inside at a known path, cannot tell"
    )]
    fn pod_cgroup(&self, dir: &Path) -> Option<Option<PathBuf>> {
        let text = std::fs::read_to_string(dir.join("cgroup")).ok()?;
        // cgroup v2: the one line `0::<path>`.
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        if path.split('/').any(|c| c == "..") {
            return Some(None);
        }
        let full = self.places.cgroup_mount.join(path.trim_start_matches('/'));
        full.starts_with(&self.places.pods_cgroup)
            .then_some(Some(full))
    }
}

/// (device, inode) of a namespace file: the namespace's identity.
fn netns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The addresses on the current thread's network namespace's interfaces.
fn local_addresses() -> nix::Result<Vec<IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let address = ifa.address?;
            address
                .as_sockaddr_in()
                .map(|a| IpAddr::V4(a.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
        })
        .map(|ip| ip.to_canonical())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_outside_the_pods_cgroup_are_not_pods() {
        let dir = tempfile::tempdir().unwrap();
        let write = |pid: &str, line: &str| {
            let d = dir.path().join(pid);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup"), line).unwrap();
            d
        };
        let wanted = BTreeMap::new();
        let places = Places {
            netns_dir: dir.path().to_owned(),
            proc_root: dir.path().to_owned(),
            cgroup_mount: "/sys/fs/cgroup".into(),
            pods_cgroup: "/sys/fs/cgroup/kubepods.slice".into(),
        };
        let scan = Scan {
            places: &places,
            wanted: &wanted,
        };
        let pod = write("1", "0::/kubepods.slice/pod1/cri-1.scope\n");
        let host = write("2", "0::/system.slice/sshd.service\n");
        let private = write("3", "0::/../../kubepods-besteffort.slice/pod3\n");
        assert_eq!(
            scan.pod_cgroup(&pod),
            Some(Some(PathBuf::from(
                "/sys/fs/cgroup/kubepods.slice/pod1/cri-1.scope"
            )))
        );
        assert_eq!(scan.pod_cgroup(&host), None);
        assert_eq!(scan.pod_cgroup(&private), Some(None));
    }
}
