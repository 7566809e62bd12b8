//! Capture counters: every hook says what it did with every socket it saw, so
//! "did the mesh see my traffic?" always has an answer.
use mesh_common::{Counter, Hook, counter_index};

use crate::maps::CAPTURE_STATS;

#[inline(always)]
pub fn count(hook: Hook, counter: Counter) {
    if let Some(slot) = CAPTURE_STATS.get_ptr_mut(counter_index(hook, counter)) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU, and
        // BPF programs are not preempted by one another on the same CPU.
        unsafe { *slot += 1 };
    }
}
