//! `sockops`: hands each captured connection's original destination from the
//! app's socket to the agent, and forgets it when the app's socket closes.
//!
//! connect4/6 only know the app's socket (by cookie); the agent only knows
//! its accepted socket (by address tuple). `ACTIVE_ESTABLISHED_CB` runs on
//! the app's socket before the final ACK of the handshake is sent, so the
//! tuple entry it writes into `ORIG_DST_BY_TUPLE` is always there by the time
//! the agent's `accept()` returns — no race, no guessing.
//! It also subscribes the socket to state changes, so on `TCP_CLOSE` the
//! cookie entry (which `getpeername` reads) is removed.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, bpf_sock_ops,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_sock_ops_cb_flags_set},
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{TupleKey, v4_mapped, v6_bytes};

use crate::maps::{ORIG_DST_BY_COOKIE, ORIG_DST_BY_TUPLE};

const AF_INET: u32 = 2;
/// sockops programs must return 1.
const DONE: u32 = 1;

#[sock_ops]
pub fn track_sockets(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: `op` and `args` are readable for every sockops callback.
    let (op, arg1) = unsafe {
        (
            core::ptr::read_volatile(&(*ops).op),
            core::ptr::read_volatile(&(*ops).__bindgen_anon_1.args[1]),
        )
    };
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        hand_over(ops);
    } else if op == BPF_SOCK_OPS_STATE_CB && arg1 == BPF_TCP_CLOSE {
        // SAFETY: the helper only reads the context it is given.
        let cookie = unsafe { bpf_get_socket_cookie(ops.cast()) };
        let _ = ORIG_DST_BY_COOKIE.remove(cookie);
    }
    DONE
}

fn hand_over(ops: *mut bpf_sock_ops) {
    // SAFETY: the helper only reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ops.cast()) };
    // SAFETY: read-only lookup; the value is copied out at once.
    let Some(orig) = (unsafe { ORIG_DST_BY_COOKIE.get(cookie) }).copied() else {
        // Not a captured socket: nothing to hand over.
        return;
    };
    // Read every candidate field first, then select (gotcha 4).
    // SAFETY: these fields are readable in ACTIVE_ESTABLISHED_CB, which
    // always runs on a full socket.
    let (family, l4, r4, l6, r6, lport, rport) = unsafe {
        (
            core::ptr::read_volatile(&(*ops).family),
            core::ptr::read_volatile(&(*ops).local_ip4),
            core::ptr::read_volatile(&(*ops).remote_ip4),
            [
                core::ptr::read_volatile(&(*ops).local_ip6[0]),
                core::ptr::read_volatile(&(*ops).local_ip6[1]),
                core::ptr::read_volatile(&(*ops).local_ip6[2]),
                core::ptr::read_volatile(&(*ops).local_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&(*ops).remote_ip6[0]),
                core::ptr::read_volatile(&(*ops).remote_ip6[1]),
                core::ptr::read_volatile(&(*ops).remote_ip6[2]),
                core::ptr::read_volatile(&(*ops).remote_ip6[3]),
            ],
            core::ptr::read_volatile(&(*ops).local_port),
            core::ptr::read_volatile(&(*ops).remote_port),
        )
    };
    let (src, dst) = if family == AF_INET {
        (v4_mapped(l4), v4_mapped(r4))
    } else {
        (v6_bytes(l6), v6_bytes(r6))
    };
    // SAFETY: the helper only reads the context it is given.
    let netns = unsafe { bpf_get_netns_cookie(ops.cast()) };
    let key = TupleKey {
        netns,
        src,
        dst,
        // `local_port` is host order; `remote_port` is network order in the
        // upper 16 bits (gotcha 6).
        src_port: lport as u16,
        dst_port: u16::from_be((rport >> 16) as u16),
        _pad: 0,
    };
    // If this insert fails the agent cannot find the destination and closes
    // the connection: loud, never a silent bypass.
    let _ = ORIG_DST_BY_TUPLE.insert(key, orig, 0);
    // SAFETY: valid context; asks for STATE_CB so the close is seen.
    unsafe { bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG as i32) };
}
