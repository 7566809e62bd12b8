//! `cgroup/connect4`: outbound capture.
//!
//! Attached to the mesh's cgroup subtree (never the machine's root cgroup).
//! For each TCP `connect()` it decides, in this order:
//! 1. socket marked [`AGENT_MARK`] → leave it: it is the agent's own
//!    upstream connection, and capturing it would loop;
//! 2. loopback destination → leave it: traffic that stays inside the pod;
//! 3. network namespace not in `ENROLLED` → leave it: not a meshed pod;
//! 4. otherwise remember `socket cookie → original ip:port` in
//!    `ORIG_DST_BY_COOKIE` and rewrite the destination to `127.0.0.1:15001`,
//!    the agent's outbound listener inside the same pod namespace.
//!
//! If the agent is not listening the rewritten connect is refused: capture
//! fails closed, it never silently bypasses the mesh.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_common::{AGENT_MARK, Counter, Hook, OrigDst, ports};

use crate::{
    maps::{ENROLLED, ORIG_DST_BY_COOKIE},
    stats::count,
};

const IPPROTO_TCP: u32 = 6;
/// Let the `connect()` proceed (with whatever address the program left).
const PROCEED: i32 = 1;
/// Fail the `connect()` with `EPERM`.
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn capture_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(verdict) => verdict,
        Err(()) => {
            count(Hook::Connect4, Counter::Errors);
            // Refusing is the safe failure: letting the connect through would
            // send an enrolled pod's traffic around the mesh.
            REFUSE
        }
    }
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, ()> {
    let sa = ctx.sock_addr;
    // Every field is read with a volatile load: LLVM otherwise folds ctx
    // accesses into forms the verifier rejects (CAPTURE-NOTES gotchas 3, 4).
    // SAFETY: `sa` is the kernel-provided context, valid for the whole run;
    // these are readable fields of `bpf_sock_addr` for connect4.
    let (protocol, ip_be, port_be, sk) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).protocol),
            core::ptr::read_volatile(&(*sa).user_ip4),
            core::ptr::read_volatile(&(*sa).user_port),
            core::ptr::read_volatile(&(*sa).__bindgen_anon_1.sk),
        )
    };
    if protocol != IPPROTO_TCP {
        // UDP/ICMP are outside the mesh's scope; nothing to capture.
        return Ok(PROCEED);
    }
    // SAFETY: for sock_addr programs the verifier types `sk` as a non-null
    // socket pointer; `mark` is a readable `bpf_sock` field.
    let mark = unsafe { core::ptr::read_volatile(&(*sk).mark) };
    if mark == AGENT_MARK {
        count(Hook::Connect4, Counter::SkippedAgent);
        return Ok(PROCEED);
    }
    if ip_be.to_ne_bytes()[0] == 127 {
        count(Hook::Connect4, Counter::SkippedLoopback);
        return Ok(PROCEED);
    }
    // SAFETY: the helper only reads the context it is given.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup in a map this program owns.
    if unsafe { ENROLLED.get(&netns) }.is_none() {
        count(Hook::Connect4, Counter::SkippedUnenrolled);
        return Ok(PROCEED);
    }

    // `user_port` holds the port in network order in its low 16 bits.
    let port = u16::from_be(port_be as u16);
    // SAFETY: the helper only reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ORIG_DST_BY_COOKIE
        .insert(&cookie, &OrigDst::v4(ip_be, port, Hook::Connect4), 0)
        .map_err(|_| ())?;

    let agent_ip = u32::from_ne_bytes([127, 0, 0, 1]);
    let agent_port = u32::from(ports::OUTBOUND.to_be());
    // SAFETY: `user_ip4`/`user_port` are the writable fields of connect4's
    // context; single volatile stores keep them separate (gotcha 3).
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, agent_ip);
        core::ptr::write_volatile(&mut (*sa).user_port, agent_port);
    }
    count(Hook::Connect4, Counter::Captured);
    Ok(PROCEED)
}
