//! The embedded eBPF object and the one owner of its pinned kernel state.
//!
//! Everything the agent puts into the kernel lives under one bpffs
//! directory per agent:
//!
//! ```text
//! <dir>/maps/<MAP>                      every map, pinned by name (aya's loader reuses them)
//! <dir>/links/cgroup-<program>          connect4/6, sockops, getpeername4/6 on the pods' cgroup
//! <dir>/links/sk_lookup-<netns cookie>  one inbound link per enrolled pod namespace
//! ```
//!
//! [`Capture::open`] creates what is missing and adopts what is there, so an
//! agent restart re-attaches nothing: while the agent is down, pinned
//! programs keep rewriting connects to its (closed) listeners and refusing
//! inbound SYNs for enrolled pods — the mesh fails closed. [`uninstall`]
//! removes it all (links are detached when their last pin goes).
use std::{
    collections::HashMap as StdHashMap,
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf, SockHash,
    },
    programs::{
        CgroupAttachMode, ProgramError, SkLookup,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use mesh_common::{
    Counter, Endpoint, EnrolFlags, Hook, InboundPod, OrigDst, PodStats, TupleKey, counter_index,
    maps, programs,
};

/// Where an agent pins its state unless told otherwise.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/nodemesh";

/// The kernel programs, compiled by `build.rs` from `mesh-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-programs"));

/// The programs attached to the pods' cgroup, with the oldest kernel each needs.
const CGROUP_PROGRAMS: [(&str, &str); 5] = [
    (programs::CONNECT4, "4.17"),
    (programs::CONNECT6, "4.17"),
    (programs::GETPEERNAME4, "5.8"),
    (programs::GETPEERNAME6, "5.8"),
    // bpf_get_netns_cookie in sockops.
    (programs::SOCKOPS, "5.15"),
];
/// sk_lookup's `ingress_ifindex` field.
const SK_LOOKUP_KERNEL: &str = "5.17";

/// Every program [`Capture::open`] loads, by its name in the object.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    CGROUP_PROGRAMS
        .iter()
        .map(|(name, _)| *name)
        .chain([programs::SK_LOOKUP])
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "the kernel rejected nodemesh's eBPF object: {0}. nodemesh needs Linux 5.17 or newer \
         with BTF (/sys/kernel/btf/vmlinux), bpffs mounted at /sys/fs/bpf, and root \
         (CAP_BPF + CAP_NET_ADMIN)"
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
    #[error(
        "the kernel refused program `{program}` (it needs Linux {min_kernel} or newer): {source}"
    )]
    Program {
        program: &'static str,
        min_kernel: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is not on a bpffs mount; pinned capture state must survive agent restarts. \
         Mount it: mount -t bpf bpf /sys/fs/bpf"
    )]
    NotBpffs(PathBuf),
    #[error("attaching `{program}` to {target}: {source}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: ProgramError,
    },
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Loaded capture programs, their pinned maps and links.
pub struct Capture {
    ebpf: Ebpf,
    dir: PathBuf,
    /// Links this process holds (adopted or created); pins keep them alive
    /// beyond the process.
    links: StdHashMap<String, PinnedLink>,
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

/// What [`Capture::attach_cgroup`] and [`Capture::attach_netns`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Created,
    /// A pinned link from a previous agent run was taken over.
    Adopted,
}

impl Capture {
    /// Loads the object into the kernel (the verifier runs here), reusing
    /// maps pinned under `dir` and creating the rest. Attaches nothing.
    pub fn open(dir: &Path) -> Result<Self, CaptureError> {
        for sub in ["maps", "links"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| CaptureError::Io { path, source })?;
        }
        if !is_bpffs(dir)? {
            return Err(CaptureError::NotBpffs(dir.to_owned()));
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir.join("maps"))
            .load(OBJECT)
            .map_err(CaptureError::Load)?;
        for (name, min_kernel) in CGROUP_PROGRAMS {
            let program = ebpf
                .program_mut(name)
                .ok_or(CaptureError::MissingProgram(name))?;
            let loaded = match program {
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::SockOps(p) => p.load(),
                _ => return Err(CaptureError::MissingProgram(name)),
            };
            loaded.map_err(|source| CaptureError::Program {
                program: name,
                min_kernel,
                source,
            })?;
        }
        sk_lookup(&mut ebpf)?
            .load()
            .map_err(|source| CaptureError::Program {
                program: programs::SK_LOOKUP,
                min_kernel: SK_LOOKUP_KERNEL,
                source,
            })?;
        Ok(Self {
            ebpf,
            dir: dir.to_owned(),
            links: StdHashMap::new(),
        })
    }

    /// Attaches outbound capture (connect4/6, sockops, getpeername4/6) to the
    /// cgroup v2 directory `cgroup` and all its descendants, or adopts the
    /// links a previous run pinned. Callers pass the pods' cgroup, never the
    /// machine's root.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<Attached, CaptureError> {
        let mut outcome = Attached::Adopted;
        for (name, _) in CGROUP_PROGRAMS {
            let pin = format!("cgroup-{name}");
            if self.adopt(&pin)? {
                continue;
            }
            outcome = Attached::Created;
            let dir = File::open(cgroup).map_err(|source| CaptureError::Io {
                path: cgroup.to_owned(),
                source,
            })?;
            let target = format!("cgroup {}", cgroup.display());
            let attach_err = |source| CaptureError::Attach {
                program: name,
                target: target.clone(),
                source,
            };
            // `Single`, not `AllowMultiple`: aya passes a flag cgroup links
            // reject with EINVAL on 6.x, and a link coexists with other
            // programs on the cgroup anyway (CAPTURE-NOTES gotcha 1).
            let link: FdLink = match self.ebpf.program_mut(name) {
                Some(aya::programs::Program::CgroupSockAddr(p)) => {
                    let id = p
                        .attach(&dir, CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                    p.take_link(id)
                        .map_err(attach_err)?
                        .try_into()
                        .map_err(link_err(&pin))?
                }
                Some(aya::programs::Program::SockOps(p)) => {
                    let id = p
                        .attach(&dir, CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                    p.take_link(id)
                        .map_err(attach_err)?
                        .try_into()
                        .map_err(link_err(&pin))?
                }
                _ => return Err(CaptureError::MissingProgram(name)),
            };
            self.pin_link(&pin, link)?;
        }
        Ok(outcome)
    }

    /// Attaches inbound capture to one pod's network namespace (or adopts
    /// the pinned link).
    pub fn attach_netns(
        &mut self,
        netns_cookie: u64,
        netns: &Path,
    ) -> Result<Attached, CaptureError> {
        let pin = format!("sk_lookup-{netns_cookie}");
        if self.adopt(&pin)? {
            return Ok(Attached::Adopted);
        }
        let ns = File::open(netns).map_err(|source| CaptureError::Io {
            path: netns.to_owned(),
            source,
        })?;
        let attach_err = |source| CaptureError::Attach {
            program: programs::SK_LOOKUP,
            target: format!("network namespace {}", netns.display()),
            source,
        };
        let prog = sk_lookup(&mut self.ebpf)?;
        let id = prog.attach(ns).map_err(attach_err)?;
        let link = FdLink::from(prog.take_link(id).map_err(attach_err)?);
        self.pin_link(&pin, link)?;
        Ok(Attached::Created)
    }

    /// Detaches inbound capture from a pod's namespace.
    pub fn detach_netns(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        self.unpin_link(&format!("sk_lookup-{netns_cookie}"))
    }

    /// True when this agent holds a live link for `pin` (`cgroup-<prog>` or
    /// `sk_lookup-<cookie>`).
    pub fn has_link(&self, pin: &str) -> bool {
        self.links.contains_key(pin)
    }

    /// Cookies of namespaces with a pinned sk_lookup link (from this run or a
    /// previous one).
    pub fn pinned_netns_links(&self) -> Result<Vec<u64>, CaptureError> {
        let links = self.dir.join("links");
        let entries = std::fs::read_dir(&links).map_err(|source| CaptureError::Io {
            path: links.clone(),
            source,
        })?;
        Ok(entries
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("sk_lookup-")?
                    .parse()
                    .ok()
            })
            .collect())
    }

    fn adopt(&mut self, pin: &str) -> Result<bool, CaptureError> {
        if self.links.contains_key(pin) {
            return Ok(true);
        }
        let path = self.dir.join("links").join(pin);
        if !path.exists() {
            return Ok(false);
        }
        let link =
            PinnedLink::from_pin(&path).map_err(|source| CaptureError::Link { path, source })?;
        self.links.insert(pin.to_owned(), link);
        Ok(true)
    }

    fn pin_link(&mut self, pin: &str, link: FdLink) -> Result<(), CaptureError> {
        let path = self.dir.join("links").join(pin);
        let pinned = link
            .pin(&path)
            .map_err(|source| CaptureError::Pin { path, source })?;
        self.links.insert(pin.to_owned(), pinned);
        Ok(())
    }

    fn unpin_link(&mut self, pin: &str) -> Result<(), CaptureError> {
        self.adopt(pin)?;
        if let Some(link) = self.links.remove(pin) {
            let path = self.dir.join("links").join(pin);
            // Dropping the unpinned link closes its last reference: detached.
            drop(
                link.unpin()
                    .map_err(|source| CaptureError::Io { path, source })?,
            );
        }
        Ok(())
    }

    /// Puts the network namespace with this cookie into the mesh (outbound).
    pub fn enrol(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        let flags = EnrolFlags {
            bits: EnrolFlags::OUTBOUND,
        };
        self.hash_mut::<u64, EnrolFlags>(maps::ENROLLED)?
            .insert(netns_cookie, flags, 0)
            .map_err(map_err(maps::ENROLLED))
    }

    /// Takes a namespace out of the mesh; new connections go direct again.
    pub fn unenrol(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        ignore_missing(
            self.hash_mut::<u64, EnrolFlags>(maps::ENROLLED)?
                .remove(&netns_cookie),
            maps::ENROLLED,
        )
    }

    /// Network namespaces currently enrolled (including by a previous run).
    pub fn enrolled(&self) -> Result<Vec<u64>, CaptureError> {
        let map: HashMap<&MapData, u64, EnrolFlags> = self.map(maps::ENROLLED)?;
        map.keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::ENROLLED))
    }

    /// Starts the per-pod capture-proof row (programs only update rows).
    pub fn track_pod(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        let cpus = aya::util::nr_cpus().map_err(|(path, source)| CaptureError::Io {
            path: path.into(),
            source,
        })?;
        let mut map: PerCpuHashMap<&mut MapData, u64, PodStats> = self.map_mut(maps::POD_STATS)?;
        if map.get(&netns_cookie, 0).is_ok() {
            // Keep the counts of a pod adopted from a previous run.
            return Ok(());
        }
        let zero = PerCpuValues::try_from(vec![PodStats::default(); cpus]).map_err(|source| {
            CaptureError::Io {
                path: maps::POD_STATS.into(),
                source,
            }
        })?;
        map.insert(netns_cookie, zero, 0)
            .map_err(map_err(maps::POD_STATS))
    }

    pub fn untrack_pod(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        let mut map: PerCpuHashMap<&mut MapData, u64, PodStats> = self.map_mut(maps::POD_STATS)?;
        ignore_missing(map.remove(&netns_cookie), maps::POD_STATS)
    }

    /// A pod's capture proof, summed over CPUs (`last_ns`: the latest).
    pub fn pod_stats(&self, netns_cookie: u64) -> Result<Option<PodStats>, CaptureError> {
        let map: PerCpuHashMap<&MapData, u64, PodStats> = self.map(maps::POD_STATS)?;
        let per_cpu = match map.get(&netns_cookie, 0) {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(map_err(maps::POD_STATS)(e)),
        };
        let mut total = PodStats::default();
        for cpu in per_cpu.iter() {
            for i in 0..total.captured.len() {
                total.captured[i] += cpu.captured[i];
                total.last_ns[i] = total.last_ns[i].max(cpu.last_ns[i]);
            }
        }
        Ok(Some(total))
    }

    /// Takes inbound traffic for `ip` (a pod address) with `listener`.
    pub fn add_inbound(
        &mut self,
        ip: std::net::IpAddr,
        netns_cookie: u64,
        listener: &impl AsRawFd,
    ) -> Result<(), CaptureError> {
        let key = ip_key(ip);
        let mut sockets: SockHash<&mut MapData, [u8; 16]> = self.map_mut(maps::IN_LISTENERS)?;
        sockets
            .insert(key, listener.as_raw_fd(), 0)
            .map_err(map_err(maps::IN_LISTENERS))?;
        self.hash_mut::<[u8; 16], InboundPod>(maps::IN_PODS)?
            .insert(
                key,
                InboundPod {
                    netns: netns_cookie,
                },
                0,
            )
            .map_err(map_err(maps::IN_PODS))
    }

    /// Stops taking inbound traffic for `ip`.
    pub fn remove_inbound(&mut self, ip: std::net::IpAddr) -> Result<(), CaptureError> {
        let key = ip_key(ip);
        ignore_missing(
            self.hash_mut::<[u8; 16], InboundPod>(maps::IN_PODS)?
                .remove(&key),
            maps::IN_PODS,
        )?;
        let mut sockets: SockHash<&mut MapData, [u8; 16]> = self.map_mut(maps::IN_LISTENERS)?;
        ignore_missing(sockets.remove(&key), maps::IN_LISTENERS)
    }

    /// Pod addresses whose inbound traffic is taken (including by a previous run).
    pub fn inbound_addresses(&self) -> Result<Vec<(std::net::IpAddr, u64)>, CaptureError> {
        let map: HashMap<&MapData, [u8; 16], InboundPod> = self.map(maps::IN_PODS)?;
        map.iter()
            .map(|entry| entry.map(|(k, v)| (std::net::Ipv6Addr::from(k).to_canonical(), v.netns)))
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::IN_PODS))
    }

    /// Marks `source` as the agent's own delivery connection, which
    /// sk_lookup must not steer; undo with [`Self::end_delivery`] once the
    /// handshake is done.
    pub fn begin_delivery(&mut self, source: std::net::SocketAddr) -> Result<(), CaptureError> {
        self.hash_mut::<Endpoint, u8>(maps::DELIVERIES)?
            .insert(endpoint(source), 1, 0)
            .map_err(map_err(maps::DELIVERIES))
    }

    pub fn end_delivery(&mut self, source: std::net::SocketAddr) -> Result<(), CaptureError> {
        ignore_missing(
            self.hash_mut::<Endpoint, u8>(maps::DELIVERIES)?
                .remove(&endpoint(source)),
            maps::DELIVERIES,
        )
    }

    /// Reads and removes the original destination of a captured connection,
    /// as the agent's accepted socket sees it.
    pub fn take_original_destination(
        &mut self,
        key: &TupleKey,
    ) -> Result<Option<OrigDst>, CaptureError> {
        let name = maps::ORIG_DST_BY_TUPLE;
        let map = self.ebpf.map(name).ok_or(CaptureError::MissingMap(name))?;
        // Typed first: aya checks the key and value sizes against the map's.
        HashMap::<&MapData, TupleKey, OrigDst>::try_from(map).map_err(map_err(name))?;
        let aya::maps::Map::LruHashMap(map) = map else {
            return Err(CaptureError::MissingMap(name));
        };
        lookup_and_delete(map, key).map_err(|io_error| {
            map_err(name)(MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_and_delete_elem",
                io_error,
            }))
        })
    }

    /// Every original destination recorded by socket cookie.
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

    /// Takes the eBPF-side log ring (aya-log, once); its records go to the
    /// `log` facade, which the agent's tracing subscriber picks up.
    pub fn take_logger(
        &mut self,
    ) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, CaptureError> {
        aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|e| CaptureError::Io {
            path: "AYA_LOGS".into(),
            source: std::io::Error::other(e),
        })
    }

    /// Takes the capture event ring buffer (once) for an event reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(CaptureError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(maps::EVENTS))
    }

    fn hash_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, CaptureError> {
        self.map_mut(name)
    }

    fn map<'a, M>(&'a self, name: &'static str) -> Result<M, CaptureError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or(CaptureError::MissingMap(name))?;
        M::try_from(map).map_err(map_err(name))
    }

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, CaptureError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(CaptureError::MissingMap(name))?;
        M::try_from(map).map_err(map_err(name))
    }
}

/// Removes every pin under `dir`: links are detached, maps freed. For
/// uninstalling the mesh from a node, and for tests.
pub fn uninstall(dir: &Path) -> Result<(), CaptureError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CaptureError::Io {
            path: dir.to_owned(),
            source,
        }),
    }
}

fn endpoint(addr: std::net::SocketAddr) -> Endpoint {
    Endpoint {
        addr: ip_key(addr.ip()),
        port: addr.port(),
        _pad: 0,
    }
}

/// The 16-byte map key for a pod address (IPv4 v4-mapped).
pub fn ip_key(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

fn sk_lookup(ebpf: &mut Ebpf) -> Result<&mut SkLookup, CaptureError> {
    let name = programs::SK_LOOKUP;
    ebpf.program_mut(name)
        .ok_or(CaptureError::MissingProgram(name))?
        .try_into()
        .map_err(|source| CaptureError::Program {
            program: name,
            min_kernel: SK_LOOKUP_KERNEL,
            source,
        })
}

fn is_bpffs(dir: &Path) -> Result<bool, CaptureError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let stat = nix::sys::statfs::statfs(dir).map_err(|e| CaptureError::Io {
        path: dir.to_owned(),
        source: e.into(),
    })?;
    Ok(stat.filesystem_type().0 == BPF_FS_MAGIC)
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> CaptureError {
    move |source| CaptureError::Map { map, source }
}

fn link_err(pin: &str) -> impl Fn(LinkError) -> CaptureError + '_ {
    move |source| CaptureError::Link {
        path: pin.into(),
        source,
    }
}

/// Reads and removes `key`'s value in one `bpf(2)` call (what aya offers
/// for hash maps takes two), or `None` if it is not there. `K` and `V`
/// must be the map's key and value sizes.
fn lookup_and_delete<K: aya::Pod, V: aya::Pod>(map: &MapData, key: &K) -> io::Result<Option<V>> {
    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (hash maps: Linux 5.14+).
    const LOOKUP_AND_DELETE: libc::c_long = 21;
    /// The map element commands' part of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut value = std::mem::MaybeUninit::<V>::uninit();
    let attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; its
    // key points to a live `K` and its value to room for a `V`, which the
    // caller checked are the map's key and value sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            LOOKUP_AND_DELETE,
            &raw const attr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        // SAFETY: the kernel wrote a whole value on success.
        return Ok(Some(unsafe { value.assume_init() }));
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        e => Err(e),
    }
}

/// Removing a key that is already gone is success: the state is as wanted.
fn ignore_missing(result: Result<(), MapError>, map: &'static str) -> Result<(), CaptureError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(CaptureError::Map { map, source }),
    }
}
