//! Maps shared with the agent. Names and value types come from `mesh-common`
//! so user space looks them up by the same constants.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use mesh_common::{CAPTURE_STATS_LEN, EnrolFlags, OrigDst};

/// Enrolled pods, by network-namespace cookie. Filled by the agent; the
/// namespace cookie is what makes a socket "a meshed pod's socket", whatever
/// cgroup the program happens to be attached to.
#[map(name = "ENROLLED")]
pub static ENROLLED: HashMap<u64, EnrolFlags> = HashMap::with_max_entries(16_384, 0);

/// Original destination of each captured socket, by socket cookie. LRU so an
/// agent that misses a close can never exhaust it.
#[map(name = "ORIG_DST_BY_COOKIE")]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(65_536, 0);

/// Per-CPU counters: exact without atomics (the BPF target has no `fetch_add`
/// through `core`); the agent sums the CPUs.
#[map(name = "CAPTURE_STATS")]
pub static CAPTURE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CAPTURE_STATS_LEN, 0);
