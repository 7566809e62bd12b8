//! `sk_lookup`, one link per enrolled pod's network namespace: inbound
//! capture.
//!
//! A TCP SYN for an enrolled pod address (`IN_PODS`) that arrived on a real
//! interface is assigned to the agent's inbound listener for that address
//! (`IN_LISTENERS`), whatever its port; the accepted socket's local address
//! is the original destination, so the agent needs no map to learn it.
//! Left alone:
//! - loopback arrivals (`ingress_ifindex == 1`): the agent's own delivery to
//!   the app, and the pod talking to itself;
//! - the agent's own ports (15001 outbound, 15006 inbound, 15008 HBONE);
//! - the agent's own delivery connections, by source endpoint
//!   (`DELIVERIES`): they come from the client's address, as if from
//!   outside, so neither the interface nor the addresses tell them apart;
//! - addresses not in `IN_PODS` (not an enrolled pod).
//!
//! An enrolled address with no listener means the agent is down: the
//! program answers `SK_DROP`, the socket lookup fails and the stack refuses
//! the SYN with a reset (fail closed, and fast) — it is never delivered to
//! the app around the mesh.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SK_LOOKUP_F_NO_REUSEPORT, bpf_sock},
    helpers::{bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use aya_log_ebpf::debug;
use mesh_common::{Counter, Endpoint, Hook, OrigDst, ports, v4_mapped, v6_bytes};

use crate::{
    maps::{DELIVERIES, IN_LISTENERS, IN_PODS},
    stats::{captured, count},
};

const IPPROTO_TCP: u32 = 6;
const AF_INET: u32 = 2;
const LOOPBACK_IFINDEX: u32 = 1;
/// Use the assigned socket, or continue the normal lookup if none was assigned.
const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;

#[sk_lookup]
pub fn steer_inbound(ctx: SkLookupContext) -> u32 {
    match try_steer(&ctx) {
        Ok(verdict) => verdict,
        Err(()) => {
            count(Hook::SkLookup, Counter::Errors);
            SK_DROP
        }
    }
}

fn try_steer(ctx: &SkLookupContext) -> Result<u32, ()> {
    let l = ctx.lookup;
    // Read every candidate field first, then select (gotcha 4).
    // SAFETY: all readable fields of `bpf_sk_lookup` (ingress_ifindex: 5.17+).
    let (protocol, family, ifindex, lport, l4, l6, r4, r6, rport) = unsafe {
        (
            core::ptr::read_volatile(&(*l).protocol),
            core::ptr::read_volatile(&(*l).family),
            core::ptr::read_volatile(&(*l).ingress_ifindex),
            core::ptr::read_volatile(&(*l).local_port),
            core::ptr::read_volatile(&(*l).local_ip4),
            [
                core::ptr::read_volatile(&(*l).local_ip6[0]),
                core::ptr::read_volatile(&(*l).local_ip6[1]),
                core::ptr::read_volatile(&(*l).local_ip6[2]),
                core::ptr::read_volatile(&(*l).local_ip6[3]),
            ],
            core::ptr::read_volatile(&(*l).remote_ip4),
            [
                core::ptr::read_volatile(&(*l).remote_ip6[0]),
                core::ptr::read_volatile(&(*l).remote_ip6[1]),
                core::ptr::read_volatile(&(*l).remote_ip6[2]),
                core::ptr::read_volatile(&(*l).remote_ip6[3]),
            ],
            core::ptr::read_volatile(&(*l).remote_port),
        )
    };
    if protocol != IPPROTO_TCP || ifindex == LOOPBACK_IFINDEX {
        return Ok(SK_PASS);
    }
    // `local_port` is host order here (gotcha 6).
    let port = lport as u16;
    if port == ports::OUTBOUND || port == ports::INBOUND_PLAINTEXT || port == ports::HBONE {
        return Ok(SK_PASS);
    }
    let (local, remote) = if family == AF_INET {
        (v4_mapped(l4), v4_mapped(r4))
    } else {
        (v6_bytes(l6), v6_bytes(r6))
    };
    let remote_port = u16::from_be(rport);
    let source = Endpoint {
        addr: remote,
        port: remote_port,
        _pad: 0,
    };
    // SAFETY: read-only lookup.
    if unsafe { DELIVERIES.get(source) }.is_some() {
        count(Hook::SkLookup, Counter::SkippedAgent);
        return Ok(SK_PASS);
    }
    // SAFETY: read-only lookup; the value is copied out at once.
    let Some(pod) = (unsafe { IN_PODS.get(local) }).copied() else {
        count(Hook::SkLookup, Counter::SkippedUnenrolled);
        return Ok(SK_PASS);
    };
    // Called directly: aya-ebpf 0.1.1's `redirect_sk_lookup` passes a pointer
    // to its `Borrow` wrapper instead of the key (CAPTURE-NOTES gotcha 7).
    // SAFETY: a SOCKHASH lookup from BPF returns a referenced socket or null.
    let sk = unsafe {
        bpf_map_lookup_elem(
            (&raw const IN_LISTENERS).cast_mut().cast(),
            (&raw const local).cast(),
        )
    }
    .cast::<bpf_sock>();
    if sk.is_null() {
        // Enrolled but no listener: the agent is down. Fail closed.
        count(Hook::SkLookup, Counter::Errors);
        return Ok(SK_DROP);
    }
    // The agent's listener itself, never another member of its reuseport
    // group: the agent's in-pod listeners allow SO_REUSEPORT (for a rolling
    // update's two agents), and a root process in the pod could join it.
    let flags = u64::from(BPF_SK_LOOKUP_F_NO_REUSEPORT);
    // SAFETY: `sk` is a referenced socket from the lookup above; it is
    // released exactly once, whatever `bpf_sk_assign` returns.
    let assigned = unsafe {
        let rc = bpf_sk_assign(ctx.as_ptr(), sk.cast(), flags);
        bpf_sk_release(sk.cast());
        rc
    };
    if assigned != 0 {
        return Err(());
    }
    let orig = OrigDst::from_bytes(local, port, Hook::SkLookup);
    captured(Hook::SkLookup, pod.netns, 0, orig, (remote, remote_port));
    debug!(
        ctx,
        "sk_lookup: steered a SYN for port {} (netns {}) to the agent", port, pod.netns
    );
    Ok(SK_PASS)
}
