//! Capture proof: what `meshctl status` shows per enrolled pod, read from
//! the kernel programs' per-namespace counters.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One hook family's proof for one pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookStatus {
    /// The program is attached where it can see this pod.
    pub attached: bool,
    /// Connections it captured for this pod.
    pub captured: u64,
    /// When it last did (milliseconds since the Unix epoch).
    pub last_capture_unix_ms: Option<u64>,
}

/// Capture proof for one enrolled pod (shown by `meshctl status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodCaptureStatus {
    pub pod: String,
    pub netns_cookie: u64,
    /// connect4 + connect6.
    pub outbound: HookStatus,
    /// sk_lookup.
    pub inbound: HookStatus,
    /// Why capture is not fully in place; empty when it is.
    pub problems: Vec<String>,
}

/// Converts `bpf_ktime_get_ns` (CLOCK_MONOTONIC) stamps to wall-clock time.
pub struct MonotonicToWall {
    mono_ns: u64,
    wall_ms: u64,
}

impl MonotonicToWall {
    pub fn now() -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
            .unwrap_or_default();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            mono_ns: mono.as_nanos() as u64,
            wall_ms: wall.as_millis() as u64,
        }
    }

    pub fn wall_ms(&self, mono_ns: u64) -> Option<u64> {
        (mono_ns != 0).then(|| self.wall_ms - self.mono_ns.saturating_sub(mono_ns) / 1_000_000)
    }
}
