//! TrafficPolicies as the waypoint enforces them: local rate limits (token
//! buckets, kept by each waypoint process on its own) and fault injection
//! (aborts, delays), per HTTPRoute rule. Pure logic: the caller passes the
//! clock and the random rolls, so every decision is reproducible in tests.
//!
//! A request meets its policy in a fixed order: **limit → abort → delay**.
//! A rate-limited request is answered at once, neither aborted nor delayed
//! (a limit protects the backend and must not be diluted by faults), and a
//! request that passes its limits has spent its tokens even if a fault then
//! aborts it — it did reach the waypoint's budget.
//!
//! - `compile`: validation (problems per field) and the typed form;
//! - `bucket`: one token bucket, exact integer arithmetic;
//! - `sources`: the per-source buckets of a policy, bounded in number;
//! - `fault`: abort and delay by their percentages.
//!
//! One policy applies per route rule. A policy without `sectionName`
//! covers every rule of its route, so it overlaps any policy naming one of
//! them; of policies that overlap, the first by namespace/name is kept and
//! each later one is reported as a conflict and left out.
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::state::traffic::TrafficPolicy;

mod bucket;
mod compile;
mod fault;
mod sources;

#[cfg(test)]
mod tests;

use bucket::Bucket;
use compile::Compiled;
use sources::Sources;

/// Compiled TrafficPolicies for one waypoint, per (route `namespace/name`,
/// rule name) — a rule's name is its HTTPRoute `rules[].name`.
#[derive(Debug, Default)]
pub struct Limits {
    policies: Vec<Policy>,
    /// Route `namespace/name` → the policies on it.
    by_route: HashMap<String, Targets>,
}

/// The policies on one route: either one for all its rules or some for
/// named rules, never both (that is a conflict).
#[derive(Debug, Default)]
struct Targets {
    all_rules: Option<usize>,
    by_rule: HashMap<String, usize>,
}

#[derive(Debug)]
struct Policy {
    compiled: Compiled,
    /// One lock for both kinds of bucket: a request takes its tokens from
    /// both or from neither, which needs them checked together.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Created full on first use (build has no clock).
    route: Option<Bucket>,
    sources: Sources,
}

/// One invalid TrafficPolicy, as its status condition would say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitProblem {
    /// `namespace/name`.
    pub policy: String,
    /// The path of the offending field, e.g. `spec.rateLimit.route.unit`.
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl std::fmt::Display for LimitProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TrafficPolicy {} {}: {}",
            self.policy, self.field, self.message
        )
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward it, after `delay` when a delay fault hit.
    Pass { delay: Option<Duration> },
    /// Answer `status` instead of forwarding (an abort fault hit).
    Abort { status: u16, reason: String },
    /// Refuse it (429): a bucket is empty. `retry_after` is whole seconds,
    /// at least one, for the `retry-after` header; `which` names the bucket
    /// (`route` or `per-source`) and its policy.
    Limited {
        retry_after: Duration,
        which: String,
    },
}

impl Limits {
    /// Compiles the policies. Invalid ones are left out whole and reported
    /// (object, field, what to do); so is each policy that conflicts with
    /// an earlier one (by namespace/name) on the same route rule. A target
    /// route that does not exist is not a problem: it may arrive later.
    pub fn build(policies: &[TrafficPolicy]) -> (Limits, Vec<LimitProblem>) {
        let mut sorted: Vec<&TrafficPolicy> = policies.iter().collect();
        let order = |p: &TrafficPolicy| {
            let namespace = p.metadata.namespace.as_deref().unwrap_or("default");
            (namespace.to_owned(), p.metadata.name.clone())
        };
        sorted.sort_by_cached_key(|p| order(p));
        let mut limits = Limits::default();
        let mut problems = Vec::new();
        for policy in sorted {
            match compile::compile(policy) {
                Ok(compiled) => {
                    if let Err(problem) = limits.add(compiled) {
                        problems.push(problem);
                    }
                }
                Err(mut found) => problems.append(&mut found),
            }
        }
        (limits, problems)
    }

    /// Adds a valid policy unless an earlier one claims its key or target.
    fn add(&mut self, compiled: Compiled) -> Result<(), LimitProblem> {
        let problem = |field: &str, message: String| LimitProblem {
            policy: compiled.key.clone(),
            field: field.to_owned(),
            message,
        };
        if self.policies.iter().any(|p| p.compiled.key == compiled.key) {
            return Err(problem(
                "metadata.name",
                "declared twice; this copy is ignored: keep one".into(),
            ));
        }
        let targets = self
            .by_route
            .entry(compiled.target.route.clone())
            .or_default();
        let earlier = match &compiled.target.rule {
            None => targets
                .all_rules
                .or_else(|| targets.by_rule.values().copied().min()),
            Some(rule) => targets.all_rules.or(targets.by_rule.get(rule).copied()),
        };
        if let Some(index) = earlier {
            let other = &self.policies[index].compiled;
            return Err(problem(
                "spec.targetRef",
                format!(
                    "conflicts with TrafficPolicy {}, which already applies to {}; this \
                     policy is ignored: merge the two, or give each its own rule with \
                     sectionName",
                    other.key, other.target
                ),
            ));
        }
        let index = self.policies.len();
        match &compiled.target.rule {
            None => targets.all_rules = Some(index),
            Some(rule) => {
                targets.by_rule.insert(rule.clone(), index);
            }
        }
        self.policies.push(Policy {
            compiled,
            state: Mutex::default(),
        });
        Ok(())
    }

    /// The decision for one request to `route` (`namespace/name`), rule
    /// `rule_name`, from `source` (its SPIFFE ID), at `now`. `rolls` are two
    /// independent uniform numbers in [0, 1) — `.0` for the abort fault,
    /// `.1` for the delay (e.g. `(fastrand::f64(), fastrand::f64())`).
    /// Order: limit → abort → delay (see the module's documentation).
    pub fn check(
        &self,
        route: &str,
        rule_name: Option<&str>,
        source: &str,
        now: Instant,
        rolls: (f64, f64),
    ) -> Decision {
        let Some(targets) = self.by_route.get(route) else {
            return Decision::Pass { delay: None };
        };
        let index = targets
            .all_rules
            .or_else(|| rule_name.and_then(|r| targets.by_rule.get(r).copied()));
        let Some(policy) = index.and_then(|i| self.policies.get(i)) else {
            return Decision::Pass { delay: None };
        };
        let compiled = &policy.compiled;
        if let Some(limited) = policy.take_tokens(source, now) {
            return limited;
        }
        fault::decide(
            &compiled.key,
            compiled.abort.as_ref(),
            compiled.delay.as_ref(),
            rolls,
        )
    }

    /// For a changed set of policies: recompiles them, keeping the bucket
    /// state of each policy whose spec did not change (so a reload does not
    /// hand out a fresh burst) and dropping the rest.
    pub fn rebuild(&mut self, policies: &[TrafficPolicy]) -> Vec<LimitProblem> {
        let (mut next, problems) = Limits::build(policies);
        let mut previous: HashMap<String, Policy> = self
            .policies
            .drain(..)
            .map(|p| (p.compiled.key.clone(), p))
            .collect();
        for policy in &mut next.policies {
            if let Some(old) = previous.remove(&policy.compiled.key)
                && old.compiled.spec == policy.compiled.spec
            {
                policy.state = old.state;
            }
        }
        *self = next;
        problems
    }
}

impl Policy {
    /// Takes a token from each bucket the policy has, or none: `Some` (the
    /// refusal) when any is empty, so a route token is never spent on a
    /// request its per-source bucket refuses, nor the other way round.
    fn take_tokens(&self, source: &str, now: Instant) -> Option<Decision> {
        let compiled = &self.compiled;
        if compiled.route.is_none() && compiled.per_source.is_none() {
            return None;
        }
        // Every update leaves the buckets consistent, so the state behind a
        // lock poisoned by a panic is still sound to use.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State { route, sources } = &mut *state;
        let route_bucket = compiled.route.as_ref().map(|rate| {
            let bucket = route.get_or_insert_with(|| Bucket::full(rate, now));
            bucket.refill(rate, now);
            (rate, bucket)
        });
        let route_wait = route_bucket
            .as_ref()
            .map_or(Duration::ZERO, |(rate, bucket)| bucket.wait(rate));
        // An untracked source's bucket is full: it passes without being
        // tracked until it has spent a token.
        let source_wait = compiled.per_source.as_ref().map_or(Duration::ZERO, |rate| {
            sources.touch(source).map_or(Duration::ZERO, |bucket| {
                bucket.refill(rate, now);
                bucket.wait(rate)
            })
        });
        if !route_wait.is_zero() || !source_wait.is_zero() {
            let (wait, which) = if route_wait >= source_wait {
                (route_wait, "route")
            } else {
                (source_wait, "per-source")
            };
            return Some(Decision::Limited {
                retry_after: whole_seconds(wait),
                which: format!("{which} limit of TrafficPolicy {}", compiled.key),
            });
        }
        if let Some((rate, bucket)) = route_bucket {
            bucket.take(rate);
        }
        if let Some(rate) = &compiled.per_source {
            match sources.touch(source) {
                Some(bucket) => bucket.take(rate),
                None => {
                    let mut bucket = Bucket::full(rate, now);
                    bucket.take(rate);
                    sources.insert(source, bucket);
                }
            }
        }
        None
    }
}

/// Rounded up, at least one second: a `retry-after` of 0 would invite an
/// immediate retry that is refused again.
fn whole_seconds(wait: Duration) -> Duration {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}
