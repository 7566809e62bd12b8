//! What every hook reports: global counters for each decision, per-pod
//! capture proof, and one ring-buffer event per capture — so "did the mesh
//! see my traffic?" always has an answer.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use mesh_common::{CaptureEvent, Counter, Hook, OrigDst, counter_index};

use crate::maps::{CAPTURE_STATS, EVENTS, POD_STATS};

#[inline(always)]
pub fn count(hook: Hook, counter: Counter) {
    if let Some(slot) = CAPTURE_STATS.get_ptr_mut(counter_index(hook, counter)) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU, and
        // BPF programs are not preempted by one another on the same CPU.
        unsafe { *slot += 1 };
    }
}

/// Records one capture: counter, the pod's proof row, and an event.
#[inline(always)]
pub fn captured(hook: Hook, netns: u64, socket_cookie: u64, orig: OrigDst, peer: ([u8; 16], u16)) {
    count(hook, Counter::Captured);
    // SAFETY: reads the monotonic clock; no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(row) = POD_STATS.get_ptr_mut(netns) {
        let i = hook as usize;
        if i < 3 {
            // SAFETY: a per-CPU row, only written by programs on this CPU.
            unsafe {
                (*row).captured[i] += 1;
                (*row).last_ns[i] = now;
            }
        }
    }
    let event = CaptureEvent {
        ts_ns: now,
        netns,
        socket_cookie,
        orig,
        peer: peer.0,
        peer_port: peer.1,
        _pad: [0; 6],
    };
    // A full ring drops the event, not the connection; counters stay exact.
    let _ = EVENTS.output::<CaptureEvent>(&event, 0);
}
