//! Types shared by the kernel programs (`mesh-ebpf`) and the agent (`mesh-agent`).
//!
//! Every map key, map value and constant that both sides touch is declared here
//! once, `#[repr(C)]`, so the two sides can never disagree on a layout. The
//! `user` feature adds the `aya::Pod` impls the agent needs to read maps.
#![no_std]

/// `SO_MARK` the agent sets on every socket it opens. Capture programs never
/// redirect a marked socket, which is what keeps the agent's own connections
/// from looping back into itself (ztunnel uses the same value).
pub const AGENT_MARK: u32 = 0x539;

/// Mark of the agent's inbound delivery sockets (transparent, bound to the
/// client's address). It shares [`AGENT_MARK`]'s low 12 bits, so capture
/// skips it too, and differs above them so a policy route can send the
/// app's replies to these sockets alone.
pub const DELIVERY_MARK: u32 = 0x1539;

/// True for any socket the agent marked as its own.
pub const fn is_agent_mark(mark: u32) -> bool {
    mark & 0xfff == AGENT_MARK
}

/// Ports the agent listens on, numbered as in ztunnel so operators can reuse
/// their firewall rules and muscle memory.
pub mod ports {
    /// Captured outbound connections, inside each enrolled pod's namespace.
    pub const OUTBOUND: u16 = 15001;
    /// Captured inbound plaintext connections.
    pub const INBOUND_PLAINTEXT: u16 = 15006;
    /// HBONE: mutual-TLS HTTP/2 CONNECT tunnel endpoint.
    pub const HBONE: u16 = 15008;
    /// Admin API (localhost only).
    pub const ADMIN: u16 = 15000;
    /// Prometheus metrics.
    pub const METRICS: u16 = 15020;
    /// Readiness probe.
    pub const READINESS: u16 = 15021;
}

/// Names of the maps in the eBPF object, as the agent looks them up.
pub mod maps {
    /// `u64` network-namespace cookie → [`crate::EnrolFlags`].
    pub const ENROLLED: &str = "ENROLLED";
    /// `u64` socket cookie → [`crate::OrigDst`], written at connect time.
    pub const ORIG_DST_BY_COOKIE: &str = "ORIG_DST_BY_COOKIE";
    /// Per-CPU `u64` counters, indexed by [`crate::counter_index`].
    pub const CAPTURE_STATS: &str = "CAPTURE_STATS";
    /// [`crate::TupleKey`] → [`crate::OrigDst`]: the handoff from the app's
    /// socket (known by cookie) to the agent's accepted socket (known by tuple).
    pub const ORIG_DST_BY_TUPLE: &str = "ORIG_DST_BY_TUPLE";
    /// Per-CPU `u64` netns cookie → [`crate::PodStats`]; rows made by the agent.
    pub const POD_STATS: &str = "POD_STATS";
    /// Ring buffer of [`crate::CaptureEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// `[u8; 16]` pod IP (v4-mapped for IPv4) → [`crate::InboundPod`].
    pub const IN_PODS: &str = "IN_PODS";
    /// SOCKHASH `[u8; 16]` pod IP → the agent's inbound listening socket.
    pub const IN_LISTENERS: &str = "IN_LISTENERS";
    /// [`crate::Endpoint`] → `u8`: source endpoints of the agent's own
    /// in-flight delivery connections, which sk_lookup must not steer.
    pub const DELIVERIES: &str = "DELIVERIES";
}

/// Programs in the eBPF object, by function name.
pub mod programs {
    pub const CONNECT4: &str = "capture_connect4";
    pub const CONNECT6: &str = "capture_connect6";
    pub const SOCKOPS: &str = "track_sockets";
    pub const GETPEERNAME4: &str = "restore_peer4";
    pub const GETPEERNAME6: &str = "restore_peer6";
    pub const SK_LOOKUP: &str = "steer_inbound";
}

/// Value of the `ENROLLED` map. Presence of the key is what enrols a
/// namespace; the flags refine what is captured.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrolFlags {
    pub bits: u32,
}

impl EnrolFlags {
    /// Capture outbound connections of this namespace.
    pub const OUTBOUND: u32 = 1;
}

/// Maps an IPv4 address (network order, as the kernel stores it in a `u32`)
/// to `::ffff:a.b.c.d`, the one key shape used for both families.
pub const fn v4_mapped(ip_be: u32) -> [u8; 16] {
    let o = ip_be.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
    ]
}

/// The bytes of an IPv6 address held as four network-order `u32` words.
pub const fn v6_bytes(words: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        words[0].to_ne_bytes(),
        words[1].to_ne_bytes(),
        words[2].to_ne_bytes(),
        words[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// Inverse of [`v6_bytes`].
pub const fn v6_words(bytes: [u8; 16]) -> [u32; 4] {
    let b = bytes;
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// True for `::ffff:a.b.c.d`.
pub const fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[0] == 0
        && addr[1] == 0
        && addr[2] == 0
        && addr[3] == 0
        && addr[4] == 0
        && addr[5] == 0
        && addr[6] == 0
        && addr[7] == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}

/// True for destinations that never leave the pod: `127.0.0.0/8` (also
/// v4-mapped) and `::1`.
pub const fn is_loopback(addr: &[u8; 16]) -> bool {
    if is_v4_mapped(addr) {
        return addr[12] == 127;
    }
    let mut i = 0;
    while i < 15 {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    addr[15] == 1
}

/// Key of `ORIG_DST_BY_TUPLE`: a captured connection as seen from the
/// agent's accepted socket (`src` = the app's address, `dst` = the agent's
/// listener), qualified by the pod's network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub netns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host order.
    pub src_port: u16,
    /// Host order.
    pub dst_port: u16,
    pub _pad: u32,
}

/// An address and port (address v4-mapped for IPv4; port in host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

/// Per-pod capture proof: how often each hook fired for this pod and when it
/// last did (`bpf_ktime_get_ns`, CLOCK_MONOTONIC), indexed by [`Hook`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodStats {
    pub captured: [u64; 3],
    pub last_ns: [u64; 3],
}

/// Value of `IN_PODS`: an enrolled pod address whose inbound traffic the
/// agent takes. Present with no listener in `IN_LISTENERS` means the agent
/// is down: the SYN is refused rather than delivered around the mesh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundPod {
    pub netns: u64,
}

/// One capture, sent to the agent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub netns: u64,
    /// The app's socket (outbound); 0 for `sk_lookup`, which has no socket yet.
    pub socket_cookie: u64,
    /// Where the connection was going.
    pub orig: OrigDst,
    /// The remote peer (inbound only; zero for outbound).
    pub peer: [u8; 16],
    pub peer_port: u16,
    pub _pad: [u8; 6],
}

/// Address family tag stored in [`OrigDst::family`], matching `AF_INET`/`AF_INET6`.
pub const FAMILY_INET: u16 = 2;
pub const FAMILY_INET6: u16 = 10;

/// The destination an application asked for before capture rewrote it.
///
/// IPv4 addresses are stored v4-mapped (`::ffff:a.b.c.d`) so one layout serves
/// both families; `addr` is in network byte order, `port` in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    /// Which [`Hook`] captured the connection.
    pub hook: u32,
}

impl OrigDst {
    /// Builds the record for an IPv4 destination given as the kernel holds it
    /// (`user_ip4`: network order in a native `u32`).
    pub fn v4(ip_be: u32, port: u16, hook: Hook) -> Self {
        Self {
            addr: v4_mapped(ip_be),
            port,
            family: FAMILY_INET,
            hook: hook as u32,
        }
    }

    /// Builds the record for an address given as 16 bytes; v4-mapped
    /// addresses are recorded as IPv4.
    pub fn from_bytes(addr: [u8; 16], port: u16, hook: Hook) -> Self {
        let family = if is_v4_mapped(&addr) {
            FAMILY_INET
        } else {
            FAMILY_INET6
        };
        Self {
            addr,
            port,
            family,
            hook: hook as u32,
        }
    }

    /// The destination as a socket address; v4-mapped addresses come back as IPv4.
    pub fn socket_addr(&self) -> core::net::SocketAddr {
        let v6 = core::net::Ipv6Addr::from(self.addr);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) if self.family == FAMILY_INET => core::net::IpAddr::V4(v4),
            _ => core::net::IpAddr::V6(v6),
        };
        core::net::SocketAddr::new(ip, self.port)
    }
}

/// The capture hooks, in the order their counters are laid out.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 0,
    Connect6 = 1,
    SkLookup = 2,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Connect4, Hook::Connect6, Hook::SkLookup];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::SkLookup => "sk_lookup",
        }
    }
}

/// What a hook did with one socket operation it saw.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Redirected to the agent.
    Captured = 0,
    /// Left alone: the socket's namespace is not enrolled.
    SkippedUnenrolled = 1,
    /// Left alone: the socket belongs to the agent (carries [`AGENT_MARK`]).
    SkippedAgent = 2,
    /// Left alone: loopback destination, traffic that never leaves the pod.
    SkippedLoopback = 3,
    /// Refused rather than let through uncaptured: a map update failed, or
    /// (sk_lookup) the pod is enrolled but no agent listens for it — the
    /// agent is down or restarting, and the mesh fails closed.
    Errors = 4,
}

impl Counter {
    pub const ALL: [Counter; 5] = [
        Counter::Captured,
        Counter::SkippedUnenrolled,
        Counter::SkippedAgent,
        Counter::SkippedLoopback,
        Counter::Errors,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Captured => "captured",
            Counter::SkippedUnenrolled => "skipped_unenrolled",
            Counter::SkippedAgent => "skipped_agent",
            Counter::SkippedLoopback => "skipped_loopback",
            Counter::Errors => "errors",
        }
    }
}

/// Number of slots in the `CAPTURE_STATS` array.
pub const CAPTURE_STATS_LEN: u32 = Hook::COUNT * Counter::COUNT;

/// Slot of one (hook, counter) pair in `CAPTURE_STATS`.
pub const fn counter_index(hook: Hook, counter: Counter) -> u32 {
    hook as u32 * Counter::COUNT + counter as u32
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with no padding
    // (16 + 2 + 2 + 4 bytes), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: a single `u32`, valid for every bit pattern.
    unsafe impl aya::Pod for super::EnrolFlags {}
    // SAFETY: `#[repr(C)]` integers and byte arrays, explicit padding field,
    // no implicit padding (8 + 16 + 16 + 2 + 2 + 4 bytes).
    unsafe impl aya::Pod for super::TupleKey {}
    // SAFETY: `#[repr(C)]` arrays of `u64`, valid for every bit pattern.
    unsafe impl aya::Pod for super::PodStats {}
    // SAFETY: `#[repr(C)]` bytes and `u16`s, padding explicit (16 + 2 + 2).
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: a single `u64`.
    unsafe impl aya::Pod for super::InboundPod {}
    // SAFETY: `#[repr(C)]` integers, byte arrays and an `OrigDst` (itself
    // Pod), with the padding spelled out (8+8+8+24+16+2+6 bytes).
    unsafe impl aya::Pod for super::CaptureEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_is_stored_mapped_in_network_order() {
        // 10.2.0.11 as the kernel's user_ip4 holds it on a little-endian host.
        let ip_be = u32::from_ne_bytes([10, 2, 0, 11]);
        let o = OrigDst::v4(ip_be, 7000, Hook::Connect4);
        assert_eq!(&o.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&o.addr[12..], &[10, 2, 0, 11]);
        assert_eq!((o.port, o.family, o.hook), (7000, FAMILY_INET, 0));
        assert_eq!(o.socket_addr(), "10.2.0.11:7000".parse().unwrap());
    }

    #[test]
    fn address_helpers_agree() {
        let v6: core::net::Ipv6Addr = "fd00:10:2::b".parse().unwrap();
        let words = v6_words(v6.octets());
        assert_eq!(v6_bytes(words), v6.octets());
        assert!(!is_v4_mapped(&v6.octets()));
        let lo4 = v4_mapped(u32::from_ne_bytes([127, 0, 0, 53]));
        assert!(is_v4_mapped(&lo4) && is_loopback(&lo4));
        assert!(is_loopback(&core::net::Ipv6Addr::LOCALHOST.octets()));
        assert!(!is_loopback(&v6.octets()));
        assert!(!is_loopback(&v4_mapped(u32::from_ne_bytes([10, 1, 0, 11]))));
        let o = OrigDst::from_bytes(v6.octets(), 80, Hook::Connect6);
        assert_eq!(o.socket_addr(), "[fd00:10:2::b]:80".parse().unwrap());
        let m = OrigDst::from_bytes(
            v4_mapped(u32::from_ne_bytes([10, 2, 0, 11])),
            80,
            Hook::Connect6,
        );
        assert_eq!(m.socket_addr(), "10.2.0.11:80".parse().unwrap());
    }

    #[test]
    fn shared_layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<OrigDst>(), 24);
        assert_eq!(size_of::<TupleKey>(), 48);
        assert_eq!(size_of::<CaptureEvent>(), 72);
        assert_eq!(size_of::<PodStats>(), 48);
        assert_eq!(size_of::<Endpoint>(), 20);
    }

    #[test]
    fn counter_slots_are_distinct_and_in_range() {
        let mut seen = [false; CAPTURE_STATS_LEN as usize];
        for h in Hook::ALL {
            for c in Counter::ALL {
                let i = counter_index(h, c) as usize;
                assert!(!seen[i], "slot {i} used twice");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }
}
