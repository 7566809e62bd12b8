//! The mount table (`/proc/self/mountinfo`): where the cgroup v2 hierarchy
//! and bpffs are mounted differs between distributions and containers, so
//! it is read, never assumed.
use std::path::{Path, PathBuf};

pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of a mountinfo table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    /// `cgroup2`, `bpf`, `tmpfs`, …
    pub fstype: String,
}

/// Every mount of a mountinfo table, in its order.
pub fn parse(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options [optional…] - fstype source super-options
            let (left, right) = line.split_once(" - ")?;
            Some(Mount {
                point: PathBuf::from(left.split_whitespace().nth(4)?),
                fstype: right.split_whitespace().next()?.to_owned(),
            })
        })
        .collect()
}

/// The mount `path` lives on: the longest mount point above it, the later
/// one when two are stacked on the same point (it hides the earlier).
/// `path` need not exist yet.
pub fn containing<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
        22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
        25 22 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
        26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
        30 22 0:27 / /sys/fs/bpf rw,nosuid,nodev shared:12 - bpf bpf rw,mode=700\n\
        31 30 0:40 / /sys/fs/bpf/cover rw - tmpfs tmpfs rw\n\
        garbage line without separator\n";

    #[test]
    fn parses_mount_points_and_types() {
        let mounts = parse(TABLE);
        let found: Vec<(&str, &str)> = mounts
            .iter()
            .map(|m| (m.point.to_str().unwrap(), m.fstype.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("/", "ext4"),
                ("/sys/fs/cgroup", "tmpfs"),
                ("/sys/fs/cgroup/unified", "cgroup2"),
                ("/sys/fs/bpf", "bpf"),
                ("/sys/fs/bpf/cover", "tmpfs"),
            ]
        );
    }

    #[test]
    fn a_path_lives_on_the_deepest_mount_above_it() {
        let mounts = parse(TABLE);
        let fstype = |p: &str| containing(&mounts, Path::new(p)).map(|m| m.fstype.as_str());
        assert_eq!(fstype("/sys/fs/bpf/nodemesh"), Some("bpf"));
        assert_eq!(fstype("/sys/fs/bpf"), Some("bpf"));
        assert_eq!(fstype("/sys/fs/bpf/cover/nodemesh"), Some("tmpfs"));
        // A name that merely starts like a mount point is not under it.
        assert_eq!(fstype("/sys/fs/bpfx/nodemesh"), Some("ext4"));
        assert_eq!(fstype("/tmp/x"), Some("ext4"));
        assert_eq!(containing(&[], Path::new("/tmp")), None);
    }
}
