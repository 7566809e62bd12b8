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
        let o = ip_be.to_ne_bytes();
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = o[0];
        addr[13] = o[1];
        addr[14] = o[2];
        addr[15] = o[3];
        Self {
            addr,
            port,
            family: FAMILY_INET,
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
    /// A map update failed; the connection was refused rather than let through
    /// uncaptured.
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
