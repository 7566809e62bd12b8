//! Pre-flight: can this machine run the node agent? The kernel's version,
//! the cgroup v2 and bpffs mounts, this process's capabilities, and every
//! capture program through the kernel's verifier (loaded, attached nowhere).
//! `mesh-agent check` and `meshctl check` both run [`run`].
use std::path::{Path, PathBuf};

use super::Check;
use crate::capture::{
    Capture, CaptureError, cgroup, kernel,
    mounts::{self, MOUNTINFO, Mount},
    object,
};

/// Runs every pre-flight check for an agent that will pin its programs
/// under `bpffs_dir`.
pub fn run(bpffs_dir: &Path) -> Vec<Check> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mounts = std::fs::read_to_string(MOUNTINFO)
        .map(|table| mounts::parse(&table))
        .unwrap_or_default();
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_capabilities(&s));
    let (bpffs_check, bpffs_mount) = bpffs(&mounts, bpffs_dir);
    let programs = match bpffs_mount {
        Some(mount) => programs(load_programs(&mount, bpffs_dir)),
        None => Check::fail(
            "eBPF",
            "not tried: loading the programs needs bpffs (see the bpffs check).",
            "make bpffs available, then re-run.",
        ),
    };
    vec![
        kernel_release(&release),
        cgroup_v2(cgroup::cgroup2_mount()),
        bpffs_check,
        capabilities(cap_eff),
        programs,
    ]
}

fn kernel_release(release: &str) -> Check {
    let min = kernel::min_release();
    match kernel::check_release(release) {
        Ok(()) => Check::pass("kernel", format!("Linux {release} ({min} or newer needed)")),
        Err(too_old) => Check::fail(
            "kernel",
            format!("{too_old}."),
            format!("run the node on a kernel of Linux {min} or newer."),
        ),
    }
}

fn cgroup_v2(mount: Result<PathBuf, cgroup::CgroupError>) -> Check {
    match mount {
        Ok(path) => Check::pass("cgroup v2", format!("mounted at {}", path.display())),
        Err(e) => {
            let fix = match e {
                cgroup::CgroupError::HiddenByMountNamespace { .. } => {
                    "run the check where the agent will run: in the host's mount namespace, or \
                     (Kubernetes) in a container that mounts the host's cgroup filesystem."
                }
                _ => {
                    "boot with cgroup v2 (current distributions do; else mount it: \
                     `mount -t cgroup2 none /sys/fs/cgroup/unified`)."
                }
            };
            Check::fail("cgroup v2", format!("{e}."), fix)
        }
    }
}

/// Whether `bpffs_dir` lies on bpffs; on success also the bpffs mount point
/// it lies on.
fn bpffs(mounts: &[Mount], bpffs_dir: &Path) -> (Check, Option<PathBuf>) {
    let bpf_mounts: Vec<String> = mounts
        .iter()
        .filter(|m| m.fstype == "bpf")
        .map(|m| m.point.display().to_string())
        .collect();
    let dir = bpffs_dir.display();
    if bpf_mounts.is_empty() {
        let check = Check::fail(
            "bpffs",
            format!("no bpffs is mounted (no `bpf` filesystem in {MOUNTINFO})."),
            "mount it: `mount -t bpf bpf /sys/fs/bpf` (Kubernetes: mount the host's \
             /sys/fs/bpf into the agent's pod, with HostToContainer propagation).",
        );
        return (check, None);
    }
    match mounts::containing(mounts, bpffs_dir) {
        Some(on) if on.fstype == "bpf" => (
            Check::pass(
                "bpffs",
                format!("{dir} is on bpffs (mounted at {})", on.point.display()),
            ),
            Some(on.point.clone()),
        ),
        on => {
            let on = on.map_or_else(String::new, |m| {
                format!(", it is on {} at {}", m.fstype, m.point.display())
            });
            let check = Check::fail(
                "bpffs",
                format!(
                    "the agent's pins would go to {dir}, which is not on bpffs{on}; bpffs is \
                     mounted at {}.",
                    bpf_mounts.join(", ")
                ),
                format!(
                    "pass a --bpffs-dir under {} (to the agent and to this check).",
                    bpf_mounts[0]
                ),
            );
            (check, None)
        }
    }
}

/// A capability, its bit in `CapEff`, and what the agent needs it for.
const CAPABILITIES: [(&str, u32, &str); 3] = [
    (
        "CAP_BPF",
        39,
        "loading the capture programs and creating their maps",
    ),
    (
        "CAP_NET_ADMIN",
        12,
        "attaching the programs to the pods' cgroup and network namespaces, the routing rules \
         and sysctls of inbound delivery inside each pod's network namespace, and SO_MARK on the \
         agent's own sockets so capture leaves them alone",
    ),
    (
        "CAP_SYS_ADMIN",
        21,
        "entering each pod's network namespace (setns) to open the agent's listeners there",
    ),
];

/// The `CapEff` mask of a `/proc/<pid>/status` text.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn capabilities(cap_eff: Option<u64>) -> Check {
    let Some(mask) = cap_eff else {
        return Check::fail(
            "capabilities",
            "could not read CapEff from /proc/self/status.",
            "run the check on Linux with /proc mounted.",
        );
    };
    let names = || CAPABILITIES.iter().map(|(name, ..)| *name);
    let missing: Vec<String> = CAPABILITIES
        .iter()
        .filter(|(_, bit, _)| mask & (1 << bit) == 0)
        .map(|(name, _, why)| format!("{name} (for {why})"))
        .collect();
    if missing.is_empty() {
        return Check::pass(
            "capabilities",
            format!("{} effective", names().collect::<Vec<_>>().join(", ")),
        );
    }
    Check::fail(
        "capabilities",
        format!("this process lacks {}.", missing.join("; ")),
        format!(
            "run as root, or grant {} (Kubernetes: securityContext.capabilities.add: \
             [BPF, NET_ADMIN, SYS_ADMIN]).",
            names().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// Loads every program (the verifier runs) into a scratch directory of its
/// own on the bpffs mount and removes it again, so a running agent's pinned
/// maps are never touched. Named after `bpffs_dir`, so a leftover is
/// recognisable.
fn load_programs(mount: &Path, bpffs_dir: &Path) -> Result<(), CaptureError> {
    let name = bpffs_dir
        .file_name()
        .map_or_else(|| "nodemesh".into(), |n| n.to_string_lossy());
    let scratch = mount.join(format!("{name}-check-{}", std::process::id()));
    let loaded = Capture::open(&scratch);
    let removed = object::uninstall(&scratch);
    drop(loaded?);
    removed
}

fn programs(loaded: Result<(), CaptureError>) -> Check {
    match loaded {
        Ok(()) => {
            let names: Vec<&str> = object::program_names().collect();
            Check::pass(
                "eBPF",
                format!(
                    "{} programs load and pass the verifier: {}",
                    names.len(),
                    names.join(", ")
                ),
            )
        }
        Err(e) => Check::fail(
            "eBPF",
            format!("{e}."),
            "fix the checks above first; a kernel that still refuses a program needs the \
             version named, with BTF (/sys/kernel/btf/vmlinux).",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(c: &Check) -> &str {
        c.fix.as_deref().unwrap_or_default()
    }

    #[test]
    fn the_kernel_floor_is_named_with_the_release() {
        let ok = kernel_release("6.1.0-18-amd64");
        assert!(ok.ok && ok.detail == "Linux 6.1.0-18-amd64 (5.17 or newer needed)");
        let old = kernel_release("5.10.0-28-amd64");
        assert!(!old.ok);
        assert!(old.detail.contains("5.10.0-28-amd64") && old.detail.contains("sk_lookup"));
        assert!(fix(&old).contains("5.17 or newer"), "{old:?}");
    }

    #[test]
    fn cgroup_failures_say_which_case() {
        let ok = cgroup_v2(Ok("/sys/fs/cgroup".into()));
        assert!(ok.ok && ok.detail == "mounted at /sys/fs/cgroup");
        let none = cgroup_v2(Err(cgroup::CgroupError::NotMounted));
        assert!(
            !none.ok && fix(&none).contains("mount -t cgroup2"),
            "{none:?}"
        );
        let hidden = cgroup_v2(Err(cgroup::CgroupError::HiddenByMountNamespace {
            host: "/sys/fs/cgroup".into(),
        }));
        assert!(
            !hidden.ok && fix(&hidden).contains("host's mount namespace"),
            "{hidden:?}"
        );
    }

    const TABLE: &str = "\
        22 1 0:21 / / rw - ext4 /dev/vda rw\n\
        30 22 0:27 / /sys/fs/bpf rw,nosuid shared:12 - bpf bpf rw,mode=700\n";

    #[test]
    fn bpffs_must_hold_the_agents_directory() {
        let mounts = mounts::parse(TABLE);
        let (ok, mount) = bpffs(&mounts, Path::new("/sys/fs/bpf/nodemesh"));
        assert!(ok.ok, "{ok:?}");
        assert_eq!(
            ok.detail,
            "/sys/fs/bpf/nodemesh is on bpffs (mounted at /sys/fs/bpf)"
        );
        assert_eq!(mount, Some("/sys/fs/bpf".into()));

        let (elsewhere, mount) = bpffs(&mounts, Path::new("/var/lib/nodemesh"));
        assert!(!elsewhere.ok && mount.is_none());
        assert!(
            elsewhere
                .detail
                .contains("/var/lib/nodemesh, which is not on bpffs, it is on ext4 at /"),
            "{elsewhere:?}"
        );
        assert_eq!(
            fix(&elsewhere),
            "pass a --bpffs-dir under /sys/fs/bpf (to the agent and to this check)."
        );

        let root_only = mounts::parse(TABLE.lines().next().unwrap());
        let (none, mount) = bpffs(&root_only, Path::new("/sys/fs/bpf/x"));
        assert!(!none.ok && mount.is_none());
        assert!(none.detail.starts_with("no bpffs is mounted"), "{none:?}");
        assert!(fix(&none).contains("mount -t bpf bpf /sys/fs/bpf"));
    }

    #[test]
    fn each_missing_capability_is_named_with_what_needs_it() {
        let status = "Name:\tmeshctl\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        let root = effective_capabilities(status);
        assert_eq!(root, Some(0x1ff_ffff_ffff));
        let all = capabilities(root);
        assert!(all.ok, "{all:?}");
        assert_eq!(
            all.detail,
            "CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN effective"
        );

        let without_net_admin = capabilities(Some(0x1ff_ffff_ffff & !(1 << 12)));
        assert!(!without_net_admin.ok);
        assert!(
            without_net_admin
                .detail
                .starts_with("this process lacks CAP_NET_ADMIN (for attaching the programs"),
            "{without_net_admin:?}"
        );
        assert!(!without_net_admin.detail.contains("CAP_BPF"));
        assert!(fix(&without_net_admin).contains("run as root"));

        let none = capabilities(effective_capabilities("CapEff:\t0000000000000000\n"));
        for (name, _, why) in CAPABILITIES {
            assert!(
                none.detail.contains(&format!("{name} (for {why})")),
                "{none:?}"
            );
        }
        let unreadable = capabilities(effective_capabilities("Name:\tx\n"));
        assert!(!unreadable.ok && unreadable.detail.contains("CapEff"));
    }

    #[test]
    fn the_program_check_names_every_program_or_the_kernels_refusal() {
        let ok = programs(Ok(()));
        assert!(ok.ok);
        for name in object::program_names() {
            assert!(ok.detail.contains(name), "{ok:?}");
        }
        let refused = programs(Err(CaptureError::NotBpffs("/tmp/x".into())));
        assert!(!refused.ok && refused.detail.contains("/tmp/x is not on a bpffs mount"));
    }
}
