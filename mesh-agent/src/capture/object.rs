//! The embedded eBPF object: loading it, attaching its programs to the mesh's
//! cgroups, and reading and writing its maps.
use std::{fs::File, path::Path};

use aya::{
    Ebpf, EbpfError,
    maps::{HashMap, MapData, MapError, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};
use mesh_common::{Counter, EnrolFlags, Hook, OrigDst, counter_index, maps};

/// The kernel programs, compiled by `build.rs` from `mesh-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-programs"));

/// Program names in the object (the eBPF functions' names).
const CONNECT4: &str = "capture_connect4";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "the kernel rejected nodemesh's eBPF object: {0}. nodemesh needs Linux 5.17 or newer \
         with BTF (/sys/kernel/btf/vmlinux) and runs as root (CAP_BPF + CAP_NET_ADMIN)"
    )]
    Load(#[source] EbpfError),
    #[error(
        "program `{0}` is missing from the embedded eBPF object: the agent was built inconsistently; rebuild it"
    )]
    MissingProgram(&'static str),
    #[error(
        "map `{0}` is missing from the embedded eBPF object: the agent was built inconsistently; rebuild it"
    )]
    MissingMap(&'static str),
    #[error("the kernel verifier or loader refused program `{program}`: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "opening cgroup directory {path}: {source} (does the directory exist on the cgroup v2 mount?)"
    )]
    OpenCgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching `{program}` to cgroup {path}: {source}")]
    Attach {
        program: &'static str,
        path: String,
        #[source]
        source: ProgramError,
    },
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Loaded capture programs and their maps. Dropping it detaches every
/// program it attached.
pub struct Capture {
    ebpf: Ebpf,
}

/// Summed per-CPU capture counters, one entry per (hook, counter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureCounters(Vec<(Hook, Counter, u64)>);

impl CaptureCounters {
    pub fn get(&self, hook: Hook, counter: Counter) -> u64 {
        self.0
            .iter()
            .find(|(h, c, _)| *h == hook && *c == counter)
            .map_or(0, |(_, _, n)| *n)
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Hook, Counter, u64)> {
        self.0.iter()
    }
}

impl Capture {
    /// Loads the object and every program into the kernel (the verifier runs
    /// here), attaching nothing yet.
    pub fn load() -> Result<Self, CaptureError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(CaptureError::Load)?;
        let connect4 = program(&mut ebpf, CONNECT4)?;
        connect4.load().map_err(|source| CaptureError::Program {
            program: CONNECT4,
            source,
        })?;
        Ok(Self { ebpf })
    }

    /// Attaches outbound capture to the cgroup v2 directory `cgroup` and all
    /// its descendants. Callers pass the mesh's own subtree, never the root.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), CaptureError> {
        let path = cgroup.display().to_string();
        let dir = File::open(cgroup).map_err(|source| CaptureError::OpenCgroup {
            path: path.clone(),
            source,
        })?;
        // `Single` and not `AllowMultiple`: aya 0.13 passes a flag that cgroup
        // links reject with EINVAL on 6.x, and a link coexists with other
        // programs on the same cgroup anyway (CAPTURE-NOTES gotcha 1).
        program(&mut self.ebpf, CONNECT4)?
            .attach(dir, CgroupAttachMode::Single)
            .map_err(|source| CaptureError::Attach {
                program: CONNECT4,
                path,
                source,
            })?;
        Ok(())
    }

    /// Puts the network namespace with this cookie into the mesh.
    pub fn enrol(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        let flags = EnrolFlags {
            bits: EnrolFlags::OUTBOUND,
        };
        self.enrolled()?
            .insert(netns_cookie, flags, 0)
            .map_err(map_err(maps::ENROLLED))
    }

    /// The original destination recorded for a captured socket.
    pub fn original_destination(
        &self,
        socket_cookie: u64,
    ) -> Result<Option<OrigDst>, CaptureError> {
        let map: HashMap<&MapData, u64, OrigDst> = self.map(maps::ORIG_DST_BY_COOKIE)?;
        match map.get(&socket_cookie, 0) {
            Ok(dst) => Ok(Some(dst)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::ORIG_DST_BY_COOKIE)(e)),
        }
    }

    /// Every original destination currently recorded, by socket cookie.
    pub fn original_destinations(&self) -> Result<Vec<(u64, OrigDst)>, CaptureError> {
        let map: HashMap<&MapData, u64, OrigDst> = self.map(maps::ORIG_DST_BY_COOKIE)?;
        map.iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::ORIG_DST_BY_COOKIE))
    }

    /// Capture counters summed over all CPUs.
    pub fn counters(&self) -> Result<CaptureCounters, CaptureError> {
        let stats: PerCpuArray<&MapData, u64> = self.map(maps::CAPTURE_STATS)?;
        let mut out = Vec::new();
        for hook in Hook::ALL {
            for counter in Counter::ALL {
                let per_cpu = stats
                    .get(&counter_index(hook, counter), 0)
                    .map_err(map_err(maps::CAPTURE_STATS))?;
                out.push((hook, counter, per_cpu.iter().sum()));
            }
        }
        Ok(CaptureCounters(out))
    }

    fn enrolled(&mut self) -> Result<HashMap<&mut MapData, u64, EnrolFlags>, CaptureError> {
        let map = self
            .ebpf
            .map_mut(maps::ENROLLED)
            .ok_or(CaptureError::MissingMap(maps::ENROLLED))?;
        HashMap::try_from(map).map_err(map_err(maps::ENROLLED))
    }

    fn map<'a, M>(&'a self, name: &'static str) -> Result<M, CaptureError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or(CaptureError::MissingMap(name))?;
        M::try_from(map).map_err(map_err(name))
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, CaptureError> {
    ebpf.program_mut(name)
        .ok_or(CaptureError::MissingProgram(name))?
        .try_into()
        .map_err(|source| CaptureError::Program {
            program: name,
            source,
        })
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> CaptureError {
    move |source| CaptureError::Map { map, source }
}
