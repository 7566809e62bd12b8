//! `cgroup/getpeername4` and `cgroup/getpeername6`: a captured app asking
//! "who am I connected to?" gets the address it connected to, not the
//! agent's loopback listener — apps that log or check their peer keep working.
//!
//! Keys on the socket cookie in `ORIG_DST_BY_COOKIE` (written by connect4/6,
//! removed by sockops on close); sockets without an entry are left alone.
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_common::{FAMILY_INET, OrigDst, v6_words};

use crate::maps::ORIG_DST_BY_COOKIE;

/// getpeername hooks must return 1.
const DONE: i32 = 1;

fn original(ctx: &SockAddrContext) -> Option<OrigDst> {
    // SAFETY: the helper only reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup; the value is copied out at once.
    unsafe { ORIG_DST_BY_COOKIE.get(cookie) }.copied()
}

#[cgroup_sock_addr(getpeername4)]
pub fn restore_peer4(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = original(&ctx).filter(|o| o.family == FAMILY_INET) {
        let a = orig.addr;
        let sa = ctx.sock_addr;
        // SAFETY: `user_ip4`/`user_port` are writable in getpeername4.
        unsafe {
            core::ptr::write_volatile(
                &mut (*sa).user_ip4,
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            );
            core::ptr::write_volatile(&mut (*sa).user_port, u32::from(orig.port.to_be()));
        }
    }
    DONE
}

#[cgroup_sock_addr(getpeername6)]
pub fn restore_peer6(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = original(&ctx) {
        // An IPv6 socket's peer is reported in IPv6 form; a v4 destination
        // stays v4-mapped, exactly as the app passed it to connect().
        let w = v6_words(orig.addr);
        let sa = ctx.sock_addr;
        // SAFETY: `user_ip6`/`user_port` are writable in getpeername6; one
        // 32-bit store per word.
        unsafe {
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], w[0]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], w[1]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], w[2]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], w[3]);
            core::ptr::write_volatile(&mut (*sa).user_port, u32::from(orig.port.to_be()));
        }
    }
    DONE
}
