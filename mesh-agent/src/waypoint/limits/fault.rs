//! Fault injection for a request that passed its limits: abort first, then
//! delay, each decided by its own roll so the two shares are independent
//! (5 % aborts and 10 % delays delay 10 % of the requests not aborted).
use super::{
    Decision,
    compile::{Abort, Delay},
};

/// `rolls.0` decides the abort, `rolls.1` the delay; each is uniform in
/// [0, 1), and a fault of `p` percent hits when its roll is below `p / 100`
/// (so 0 % never does and 100 % always does).
pub(super) fn decide(
    policy: &str,
    abort: Option<&Abort>,
    delay: Option<&Delay>,
    rolls: (f64, f64),
) -> Decision {
    if let Some(abort) = abort.filter(|a| rolls.0 < a.share) {
        return Decision::Abort {
            status: abort.status,
            reason: format!(
                "fault injected by TrafficPolicy {policy} (abort with {} for {}% of requests)",
                abort.status, abort.percent
            ),
        };
    }
    Decision::Pass {
        delay: delay.filter(|d| rolls.1 < d.share).map(|d| d.fixed),
    }
}
