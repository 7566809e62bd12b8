//! Validation of one TrafficPolicy into its typed form. Every problem is
//! reported with the path of its field, all at once, and a policy with any
//! problem is not compiled at all: half a policy (a limit without its
//! fault, a fault on the wrong rule) is worse than none, and the problems
//! say how to fix it.
//!
//! What is accepted, beyond the types:
//! - `targetRef` is an HTTPRoute (`gateway.networking.k8s.io`) with a name;
//!   `sectionName`, when given, is not empty. Whether the route (or rule)
//!   exists is not checked: routes may arrive after their policies.
//! - `requestsPerUnit` ≥ 1 and `burst` ≥ 1 (default `requestsPerUnit`). A
//!   burst below the rate is allowed on purpose: `100` per `Second` with
//!   burst `1` admits one request every 10 ms, a smoothed limit.
//! - `unit` is `Second`, `Minute` or `Hour`.
//! - `percent` is 0–100, fractions allowed (default 100: every request).
//! - `abort.status` is 200–599; `delay.fixed` a Gateway API duration.
//! - At least one of `rateLimit` and `fault`, and each sets something.
use std::time::Duration;

use super::{LimitProblem, bucket::Rate};
use crate::{
    state::traffic::{
        Fault, FaultAbort, FaultDelay, Percent, PolicyTargetRef, RateLimit, TokenBucket,
        TrafficPolicy, TrafficPolicySpec,
    },
    waypoint::route::parse_duration,
};

const ROUTE_GROUP: &str = "gateway.networking.k8s.io";
const ROUTE_KIND: &str = "HTTPRoute";

/// Where a policy applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// The route's `namespace/name` (the policy's namespace).
    pub(super) route: String,
    /// One rule's name; `None`: all rules.
    pub(super) rule: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "HTTPRoute {} rule {rule:?}", self.route),
            None => write!(f, "HTTPRoute {} (all rules)", self.route),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Abort {
    pub(super) status: u16,
    /// Share of requests, 0–1.
    pub(super) share: f64,
    /// As written, for the reason.
    pub(super) percent: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Delay {
    pub(super) fixed: Duration,
    /// Share of requests, 0–1.
    pub(super) share: f64,
}

/// A valid policy, typed.
#[derive(Debug, Clone)]
pub(super) struct Compiled {
    /// `namespace/name`.
    pub(super) key: String,
    /// As written: a reload keeps bucket state only when this is unchanged.
    pub(super) spec: TrafficPolicySpec,
    pub(super) target: Target,
    pub(super) route: Option<Rate>,
    pub(super) per_source: Option<Rate>,
    pub(super) abort: Option<Abort>,
    pub(super) delay: Option<Delay>,
}

/// Collects problems of one policy.
struct Check<'a> {
    policy: &'a str,
    problems: Vec<LimitProblem>,
}

impl Check<'_> {
    fn problem(&mut self, field: &str, message: String) {
        self.problems.push(LimitProblem {
            policy: self.policy.to_owned(),
            field: field.to_owned(),
            message,
        });
    }
}

pub(super) fn compile(policy: &TrafficPolicy) -> Result<Compiled, Vec<LimitProblem>> {
    let key = policy.key();
    let mut check = Check {
        policy: &key,
        problems: Vec::new(),
    };
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
    let spec = &policy.spec;
    let target = target(&mut check, namespace, &spec.target_ref);
    if spec.rate_limit.is_none() && spec.fault.is_none() {
        check.problem(
            "spec",
            "sets neither rateLimit nor fault, so the policy would do nothing: add one of \
             them, or delete the policy"
                .into(),
        );
    }
    let (route, per_source) = match &spec.rate_limit {
        Some(limit) => rate_limit(&mut check, limit),
        None => (None, None),
    };
    let (abort, delay) = match &spec.fault {
        Some(fault) => self::fault(&mut check, fault),
        None => (None, None),
    };
    if !check.problems.is_empty() {
        return Err(check.problems);
    }
    Ok(Compiled {
        key,
        spec: spec.clone(),
        target,
        route,
        per_source,
        abort,
        delay,
    })
}

fn target(check: &mut Check<'_>, namespace: &str, target: &PolicyTargetRef) -> Target {
    if target.group != ROUTE_GROUP {
        check.problem(
            "spec.targetRef.group",
            format!(
                "{:?} is not supported: a TrafficPolicy applies to an HTTPRoute, group \
                 {ROUTE_GROUP}",
                target.group
            ),
        );
    }
    if target.kind != ROUTE_KIND {
        check.problem(
            "spec.targetRef.kind",
            format!(
                "{:?} is not supported: a TrafficPolicy applies to an {ROUTE_KIND}; to limit \
                 a Service's traffic, target the route that serves it",
                target.kind
            ),
        );
    }
    if target.name.is_empty() {
        check.problem(
            "spec.targetRef.name",
            "empty: name the HTTPRoute (in the policy's namespace) this policy applies to".into(),
        );
    }
    if target.section_name.as_deref() == Some("") {
        check.problem(
            "spec.targetRef.sectionName",
            "empty: name one rule of the route (its rules[].name), or leave sectionName out \
             for all rules"
                .into(),
        );
    }
    Target {
        route: format!("{namespace}/{}", target.name),
        rule: target.section_name.clone(),
    }
}

fn rate_limit(check: &mut Check<'_>, limit: &RateLimit) -> (Option<Rate>, Option<Rate>) {
    if limit.route.is_none() && limit.per_source.is_none() {
        check.problem(
            "spec.rateLimit",
            "sets neither route nor perSource: add one of them, or leave rateLimit out".into(),
        );
    }
    let route = limit
        .route
        .as_ref()
        .and_then(|b| bucket(check, "spec.rateLimit.route", b));
    let per_source = limit
        .per_source
        .as_ref()
        .and_then(|b| bucket(check, "spec.rateLimit.perSource", b));
    (route, per_source)
}

fn bucket(check: &mut Check<'_>, at: &str, bucket: &TokenBucket) -> Option<Rate> {
    let mut valid = true;
    if bucket.requests_per_unit == 0 {
        check.problem(
            &format!("{at}.requestsPerUnit"),
            "0 would refuse everything after the first burst: use at least 1 (to refuse all \
             traffic, use an AuthorizationPolicy)"
                .into(),
        );
        valid = false;
    }
    let unit = match bucket.unit.as_str() {
        "Second" => Duration::from_secs(1),
        "Minute" => Duration::from_secs(60),
        "Hour" => Duration::from_secs(3600),
        other => {
            check.problem(
                &format!("{at}.unit"),
                format!("unknown unit {other:?}: use Second, Minute or Hour"),
            );
            valid = false;
            Duration::ZERO
        }
    };
    let burst = bucket.burst.unwrap_or(bucket.requests_per_unit);
    if bucket.burst == Some(0) {
        check.problem(
            &format!("{at}.burst"),
            "0 would hold no token, and a request needs one: use at least 1, or leave burst \
             out to default to requestsPerUnit"
                .into(),
        );
        valid = false;
    }
    valid.then(|| Rate::new(bucket.requests_per_unit, unit, burst))
}

fn fault(check: &mut Check<'_>, fault: &Fault) -> (Option<Abort>, Option<Delay>) {
    if fault.abort.is_none() && fault.delay.is_none() {
        check.problem(
            "spec.fault",
            "sets neither delay nor abort: add one of them, or leave fault out".into(),
        );
    }
    let abort = fault.abort.as_ref().and_then(|a| abort(check, a));
    let delay = fault.delay.as_ref().and_then(|d| delay(check, d));
    (abort, delay)
}

fn abort(check: &mut Check<'_>, abort: &FaultAbort) -> Option<Abort> {
    let percent = percent(check, "spec.fault.abort.percent", abort.percent);
    let status = u16::try_from(abort.status)
        .ok()
        .filter(|s| (200..=599).contains(s));
    if status.is_none() {
        check.problem(
            "spec.fault.abort.status",
            format!(
                "{} is not a status to answer with: use one from 200 to 599 (e.g. 503)",
                abort.status
            ),
        );
    }
    let (status, percent) = (status?, percent?);
    Some(Abort {
        status,
        share: percent / 100.0,
        percent,
    })
}

fn delay(check: &mut Check<'_>, delay: &FaultDelay) -> Option<Delay> {
    let percent = percent(check, "spec.fault.delay.percent", delay.percent);
    let fixed = parse_duration(&delay.fixed)
        .map_err(|message| check.problem("spec.fault.delay.fixed", message))
        .ok();
    let (fixed, percent) = (fixed?, percent?);
    Some(Delay {
        fixed,
        share: percent / 100.0,
    })
}

/// The percentage, 100 when absent; `None` (and a problem) when invalid.
fn percent(check: &mut Check<'_>, at: &str, percent: Option<Percent>) -> Option<f64> {
    let Some(Percent(value)) = percent else {
        return Some(100.0);
    };
    // Written so that NaN fails too.
    if (0.0..=100.0).contains(&value) {
        Some(value)
    } else {
        check.problem(
            at,
            format!("{value} is not a percentage: use 0 to 100 (fractions like 0.5 are fine)"),
        );
        None
    }
}
