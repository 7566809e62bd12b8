//! `cgroup/connect4` and `cgroup/connect6`: outbound capture.
//!
//! Attached to the mesh's cgroup subtree (never the machine's root cgroup).
//! For each TCP `connect()` it decides, in this order:
//! 1. socket marked with the agent's mark → leave it: it is the agent's own
//!    upstream connection, and capturing it would loop;
//! 2. loopback destination → leave it: traffic that stays inside the pod;
//! 3. network namespace not in `ENROLLED` → leave it: not a meshed pod;
//! 4. otherwise remember `socket cookie → original ip:port` in
//!    `ORIG_DST_BY_COOKIE` and rewrite the destination to the agent's
//!    outbound listener on loopback (port 15001) inside the same pod
//!    namespace. `sockops` then hands the entry over to the agent by tuple.
//!
//! An IPv6 socket connecting to a v4-mapped address goes through connect6;
//! it is sent to `::ffff:127.0.0.1`, the agent's IPv4 listener.
//!
//! If the agent is not listening the rewritten connect is refused: capture
//! fails closed, it never silently bypasses the mesh.
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use mesh_common::{
    Counter, Hook, OrigDst, is_agent_mark, is_loopback, is_v4_mapped, ports, v4_mapped, v6_bytes,
    v6_words,
};

use crate::{
    maps::{ENROLLED, ORIG_DST_BY_COOKIE},
    stats::{captured, count},
};

const IPPROTO_TCP: u32 = 6;
/// Let the `connect()` proceed (with whatever address the program left).
const PROCEED: i32 = 1;
/// Fail the `connect()` with `EPERM`.
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn capture_connect4(ctx: SockAddrContext) -> i32 {
    verdict(Hook::Connect4, try_connect4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn capture_connect6(ctx: SockAddrContext) -> i32 {
    verdict(Hook::Connect6, try_connect6(&ctx))
}

fn verdict(hook: Hook, result: Result<(), ()>) -> i32 {
    match result {
        Ok(()) => PROCEED,
        Err(()) => {
            count(hook, Counter::Errors);
            // Refusing is the safe failure: letting the connect through would
            // send an enrolled pod's traffic around the mesh.
            REFUSE
        }
    }
}

/// Fields every connect hook reads, loaded with volatile reads: LLVM
/// otherwise folds ctx accesses into forms the verifier rejects
/// (CAPTURE-NOTES gotchas 3, 4).
struct Seen {
    protocol: u32,
    mark: u32,
    port: u16,
}

fn seen(sa: *mut bpf_sock_addr) -> Seen {
    // SAFETY: `sa` is the kernel-provided context, valid for the whole run;
    // these are readable fields of `bpf_sock_addr` for connect hooks, and
    // the verifier types `sk` as a non-null socket whose `mark` is readable.
    unsafe {
        let protocol = core::ptr::read_volatile(&(*sa).protocol);
        let port_be = core::ptr::read_volatile(&(*sa).user_port);
        let sk = core::ptr::read_volatile(&(*sa).__bindgen_anon_1.sk);
        let mark = core::ptr::read_volatile(&(*sk).mark);
        // `user_port` holds the port in network order in its low 16 bits.
        Seen {
            protocol,
            mark,
            port: u16::from_be(port_be as u16),
        }
    }
}

/// Steps 1–4 of the module docs; returns the original destination to record
/// when the connection is to be captured.
fn decide(ctx: &SockAddrContext, hook: Hook, seen: &Seen, dst: [u8; 16]) -> Option<OrigDst> {
    if seen.protocol != IPPROTO_TCP {
        // UDP/ICMP are outside the mesh's scope; nothing to capture.
        return None;
    }
    if is_agent_mark(seen.mark) {
        count(hook, Counter::SkippedAgent);
        return None;
    }
    if is_loopback(&dst) {
        count(hook, Counter::SkippedLoopback);
        return None;
    }
    // SAFETY: the helper only reads the context it is given.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup in a map this program owns.
    if unsafe { ENROLLED.get(netns) }.is_none() {
        count(hook, Counter::SkippedUnenrolled);
        return None;
    }
    Some(OrigDst::from_bytes(dst, seen.port, hook))
}

/// Records the original destination and the capture; the caller rewrites.
fn remember(ctx: &SockAddrContext, hook: Hook, orig: OrigDst) -> Result<(), ()> {
    // SAFETY: the helpers only read the context they are given.
    let (cookie, netns) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_get_netns_cookie(ctx.as_ptr()),
        )
    };
    ORIG_DST_BY_COOKIE.insert(cookie, orig, 0).map_err(|_| ())?;
    captured(hook, netns, cookie, orig, ([0; 16], 0));
    debug!(
        ctx,
        "{}: captured socket {} (netns {}), original port {}",
        hook.name(),
        cookie,
        netns,
        orig.port
    );
    Ok(())
}

fn agent_port_be() -> u32 {
    u32::from(ports::OUTBOUND.to_be())
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    let seen = seen(sa);
    // SAFETY: readable field of connect4's context.
    let ip_be = unsafe { core::ptr::read_volatile(&(*sa).user_ip4) };
    let Some(orig) = decide(ctx, Hook::Connect4, &seen, v4_mapped(ip_be)) else {
        return Ok(());
    };
    remember(ctx, Hook::Connect4, orig)?;
    // SAFETY: `user_ip4`/`user_port` are the writable fields of connect4's
    // context; single volatile stores keep them separate (gotcha 3).
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes([127, 0, 0, 1]));
        core::ptr::write_volatile(&mut (*sa).user_port, agent_port_be());
    }
    Ok(())
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    let seen = seen(sa);
    // SAFETY: readable fields of connect6's context, one word at a time.
    let words = unsafe {
        [
            core::ptr::read_volatile(&(*sa).user_ip6[0]),
            core::ptr::read_volatile(&(*sa).user_ip6[1]),
            core::ptr::read_volatile(&(*sa).user_ip6[2]),
            core::ptr::read_volatile(&(*sa).user_ip6[3]),
        ]
    };
    let dst = v6_bytes(words);
    let Some(orig) = decide(ctx, Hook::Connect6, &seen, dst) else {
        return Ok(());
    };
    remember(ctx, Hook::Connect6, orig)?;
    let agent = if is_v4_mapped(&dst) {
        v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))
    } else {
        core::net::Ipv6Addr::LOCALHOST.octets()
    };
    let agent = v6_words(agent);
    // SAFETY: `user_ip6`/`user_port` are writable in connect6's context;
    // one 32-bit volatile store per word, as the verifier requires.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], agent[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], agent[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], agent[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], agent[3]);
        core::ptr::write_volatile(&mut (*sa).user_port, agent_port_be());
    }
    Ok(())
}
