//! Finding what tests left behind: network namespaces, cgroups and bpffs pins
//! whose names start with a prefix (a cluster's, or the whole suite's).
use std::{fmt, path::PathBuf};

use anyhow::Context as _;
use mesh_agent::capture::cgroup::cgroup2_mount;

use crate::cluster::{ip, remove_cgroup_tree, remove_pins};

const NETNS_DIR: &str = "/run/netns";
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Default)]
pub struct Leftovers {
    pub namespaces: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub pins: Vec<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.cgroups.is_empty() && self.pins.is_empty()
    }
}

impl fmt::Display for Leftovers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "namespaces {:?}, cgroups {:?}, bpffs pins {:?}",
            self.namespaces, self.cgroups, self.pins
        )
    }
}

/// Everything on the machine whose name starts with `prefix`.
pub fn find(prefix: &str) -> anyhow::Result<Leftovers> {
    let names = |dir: PathBuf| -> anyhow::Result<Vec<PathBuf>> {
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                found.push(entry.path());
            }
        }
        found.sort();
        Ok(found)
    };
    Ok(Leftovers {
        namespaces: names(NETNS_DIR.into())?
            .into_iter()
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect(),
        cgroups: names(cgroup2_mount()?)?,
        pins: names(BPFFS.into())?,
    })
}

/// Removes what [`find`] reported.
pub fn sweep(found: &Leftovers) -> anyhow::Result<()> {
    for cgroup in &found.cgroups {
        remove_cgroup_tree(cgroup)?;
    }
    for ns in &found.namespaces {
        ip(&["netns", "del", ns])?;
    }
    for pin in &found.pins {
        if pin.is_dir() {
            remove_pins(pin)?;
        } else {
            std::fs::remove_file(pin).with_context(|| format!("removing pin {}", pin.display()))?;
        }
    }
    Ok(())
}
