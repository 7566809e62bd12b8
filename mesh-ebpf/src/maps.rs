//! Maps shared with the agent. Names and value types come from `mesh-common`
//! so user space looks them up by the same constants.
//!
//! Every map is pinned by name (under the agent's bpffs directory, which the
//! agent passes to the loader): a restarted agent reopens the same maps, so
//! enrolment, in-flight original destinations and counters survive it.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, SockHash},
};
use mesh_common::{
    CAPTURE_STATS_LEN, Endpoint, EnrolFlags, InboundPod, OrigDst, PodStats, TupleKey,
};

/// Enrolled pods, by network-namespace cookie. Filled by the agent; the
/// namespace cookie is what makes a socket "a meshed pod's socket", whatever
/// cgroup the program happens to be attached to.
#[map(name = "ENROLLED")]
pub static ENROLLED: HashMap<u64, EnrolFlags> = HashMap::pinned(16_384, 0);

/// Original destination of each captured socket, by socket cookie. Lives as
/// long as the app's socket (sockops removes it on close) so `getpeername`
/// keeps answering; LRU so a missed close can never exhaust it.
#[map(name = "ORIG_DST_BY_COOKIE")]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(65_536, 0);

/// The same original destination keyed the way the agent sees the
/// connection after `accept()`; the agent deletes each entry once read.
#[map(name = "ORIG_DST_BY_TUPLE")]
pub static ORIG_DST_BY_TUPLE: LruHashMap<TupleKey, OrigDst> = LruHashMap::pinned(65_536, 0);

/// Per-CPU counters: exact without atomics (the BPF target has no `fetch_add`
/// through `core`); the agent sums the CPUs.
#[map(name = "CAPTURE_STATS")]
pub static CAPTURE_STATS: PerCpuArray<u64> = PerCpuArray::pinned(CAPTURE_STATS_LEN, 0);

/// Per-pod capture proof, by netns cookie. Rows are created by the agent at
/// enrolment; programs only update existing rows.
#[map(name = "POD_STATS")]
pub static POD_STATS: PerCpuHashMap<u64, PodStats> = PerCpuHashMap::pinned(16_384, 0);

/// Capture events for the agent's logs and flow records. Best effort: when
/// it is full an event is dropped, never the connection.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// Enrolled pod addresses whose inbound traffic the agent takes.
#[map(name = "IN_PODS")]
pub static IN_PODS: HashMap<[u8; 16], InboundPod> = HashMap::pinned(16_384, 0);

/// The agent's inbound listening sockets, by pod address. A socket leaves
/// this map by itself when the agent closes it (or dies).
#[map(name = "IN_LISTENERS")]
pub static IN_LISTENERS: SockHash<[u8; 16]> = SockHash::pinned(16_384, 0);

/// Source endpoints of the agent's in-flight delivery connections (to apps
/// inside pods). Their SYNs carry the client's address, exactly like the
/// connections sk_lookup steers, so sk_lookup must recognise and skip them.
#[map(name = "DELIVERIES")]
pub static DELIVERIES: LruHashMap<Endpoint, u8> = LruHashMap::pinned(65_536, 0);
