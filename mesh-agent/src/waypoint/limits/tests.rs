//! Limits built from TrafficPolicies written as users write them (YAML),
//! asked about requests at injected instants with fixed rolls.
use std::time::{Duration, Instant};

use super::*;
use crate::state::traffic::TrafficPolicy;

const ROUTE: &str = "shop/cart-split";
const NO_FAULT: (f64, f64) = (0.999, 0.999);

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| format!("{}{line}\n", " ".repeat(by)))
        .collect()
}

/// `shop/<name>`, with `spec` the lines under `spec:` as written.
fn raw(name: &str, spec: &str) -> TrafficPolicy {
    let yaml = format!(
        "apiVersion: nodemesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n{}",
        indent(spec, 2)
    );
    serde_yaml_ng::from_str(&yaml)
        .unwrap_or_else(|e| panic!("test policy does not parse: {e}\n{yaml}"))
}

/// `shop/<name>` on `cart-split` (rule `rule` when given), with `body` the
/// lines beside `targetRef`.
fn policy(name: &str, rule: Option<&str>, body: &str) -> TrafficPolicy {
    let section = rule.map_or(String::new(), |r| format!(", sectionName: {r}"));
    raw(
        name,
        &format!(
            "targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: cart-split{section}}}\n{body}"
        ),
    )
}

fn build(policies: &[TrafficPolicy]) -> Limits {
    let (limits, problems) = Limits::build(policies);
    assert!(problems.is_empty(), "unexpected problems: {problems:#?}");
    limits
}

/// Instants as offsets from one origin, so tests read as a timeline.
struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Self(Instant::now())
    }
    fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

fn pass() -> Decision {
    Decision::Pass { delay: None }
}

fn limited(secs: u64, which: &str, policy: &str) -> Decision {
    Decision::Limited {
        retry_after: Duration::from_secs(secs),
        which: format!("{which} limit of TrafficPolicy shop/{policy}"),
    }
}

fn ask(limits: &Limits, source: &str, now: Instant) -> Decision {
    limits.check(ROUTE, None, source, now, NO_FAULT)
}

#[test]
fn burst_then_refusal_then_continuous_refill() {
    let limits = build(&[policy(
        "p",
        None,
        "rateLimit:\n  route: {requestsPerUnit: 10, unit: Second, burst: 3}",
    )]);
    let clock = Clock::new();
    // (at ms, expected decisions in a row)
    let timeline: [(u64, Vec<Decision>); 4] = [
        (0, vec![pass(), pass(), pass(), limited(1, "route", "p")]),
        // 100 ms earns exactly one token (10 per second), no more.
        (100, vec![pass(), limited(1, "route", "p")]),
        (150, vec![limited(1, "route", "p")]),
        // Long idle: refilled to the burst, not beyond.
        (
            60_000,
            vec![pass(), pass(), pass(), limited(1, "route", "p")],
        ),
    ];
    for (ms, want) in timeline {
        for (i, w) in want.iter().enumerate() {
            assert_eq!(
                &ask(&limits, "spiffe://a", clock.at(ms)),
                w,
                "at {ms} ms, request {i}"
            );
        }
    }
}

#[test]
fn burst_defaults_to_the_rate() {
    let limits = build(&[policy(
        "p",
        None,
        "rateLimit:\n  route: {requestsPerUnit: 2, unit: Hour}",
    )]);
    let now = Clock::new().at(0);
    assert_eq!(ask(&limits, "s", now), pass());
    assert_eq!(ask(&limits, "s", now), pass());
    assert_eq!(ask(&limits, "s", now), limited(1800, "route", "p"));
}

#[test]
fn retry_after_is_rounded_up_to_whole_seconds() {
    // (bucket, asked at ms after the burst of 1 was spent at 0, retry-after s)
    let cases = [
        ("{requestsPerUnit: 10, unit: Second, burst: 1}", 0, 1),
        ("{requestsPerUnit: 10, unit: Second, burst: 1}", 99, 1),
        ("{requestsPerUnit: 1, unit: Minute, burst: 1}", 0, 60),
        ("{requestsPerUnit: 1, unit: Minute, burst: 1}", 30_000, 30),
        ("{requestsPerUnit: 1, unit: Minute, burst: 1}", 29_999, 31),
        ("{requestsPerUnit: 1, unit: Minute, burst: 1}", 59_500, 1),
        ("{requestsPerUnit: 7, unit: Minute, burst: 1}", 0, 9), // 8.57 s
        ("{requestsPerUnit: 1, unit: Hour, burst: 1}", 0, 3600),
    ];
    for (bucket, ms, secs) in cases {
        let limits = build(&[policy("p", None, &format!("rateLimit:\n  route: {bucket}"))]);
        let clock = Clock::new();
        assert_eq!(ask(&limits, "s", clock.at(0)), pass(), "{bucket}");
        assert_eq!(
            ask(&limits, "s", clock.at(ms)),
            limited(secs, "route", "p"),
            "{bucket} at {ms} ms"
        );
    }
}

#[test]
fn per_source_buckets_are_separate() {
    let limits = build(&[policy(
        "p",
        None,
        "rateLimit:\n  perSource: {requestsPerUnit: 1, unit: Minute}",
    )]);
    let now = Clock::new().at(0);
    let alice = "spiffe://cluster.local/ns/shop/sa/alice";
    let bob = "spiffe://cluster.local/ns/shop/sa/bob";
    assert_eq!(ask(&limits, alice, now), pass());
    assert_eq!(ask(&limits, alice, now), limited(60, "per-source", "p"));
    assert_eq!(ask(&limits, bob, now), pass(), "alice's limit is not bob's");
    assert_eq!(ask(&limits, bob, now), limited(60, "per-source", "p"));
}

#[test]
fn tokens_are_taken_from_both_buckets_or_neither() {
    let limits = build(&[policy(
        "p",
        None,
        "rateLimit:\n  route: {requestsPerUnit: 2, unit: Minute}\n  perSource: {requestsPerUnit: 1, unit: Minute}",
    )]);
    let clock = Clock::new();
    let t0 = clock.at(0);
    assert_eq!(ask(&limits, "alice", t0), pass());
    // Refused by her own bucket: the route's last token stays for bob.
    assert_eq!(ask(&limits, "alice", t0), limited(60, "per-source", "p"));
    assert_eq!(ask(&limits, "bob", t0), pass());
    // Refused by the route: carol's own bucket is not spent.
    assert_eq!(ask(&limits, "carol", t0), limited(30, "route", "p"));
    // Both empty: the longer wait is the one that binds.
    assert_eq!(ask(&limits, "alice", t0), limited(60, "per-source", "p"));
    // 30 s later the route has one token again, and carol still her own.
    let t30 = clock.at(30_000);
    assert_eq!(ask(&limits, "carol", t30), pass());
    assert_eq!(ask(&limits, "dave", t30), limited(30, "route", "p"));
}

#[test]
fn per_source_buckets_are_bounded_least_recently_used_first() {
    let limits = build(&[policy(
        "p",
        None,
        "rateLimit:\n  perSource: {requestsPerUnit: 1, unit: Hour}",
    )]);
    let now = Clock::new().at(0);
    let source = |i: usize| format!("spiffe://cluster.local/ns/flood/sa/s{i}");
    for i in 0..sources::MAX_SOURCES {
        assert_eq!(ask(&limits, &source(i), now), pass(), "source {i}");
    }
    let tracked = || limits.policies[0].state.lock().unwrap().sources.len();
    assert_eq!(tracked(), sources::MAX_SOURCES);
    // A refusal refreshes s0's use, so s1 is now the least recently used.
    assert_eq!(
        ask(&limits, &source(0), now),
        limited(3600, "per-source", "p")
    );
    assert_eq!(ask(&limits, "newcomer", now), pass());
    assert_eq!(tracked(), sources::MAX_SOURCES, "the bound holds");
    assert_eq!(
        ask(&limits, &source(1), now),
        pass(),
        "s1 was forgotten: fresh"
    );
    assert_eq!(
        ask(&limits, &source(0), now),
        limited(3600, "per-source", "p")
    );
    assert_eq!(
        ask(&limits, "newcomer", now),
        limited(3600, "per-source", "p")
    );
    assert_eq!(tracked(), sources::MAX_SOURCES);
}

#[test]
fn fault_percentages_at_their_boundaries() {
    let ms100 = Some(Duration::from_millis(100));
    let abort = |status| Decision::Abort {
        status,
        reason: String::new(),
    };
    // (fault, rolls, expected); abort reasons are compared by status only.
    let cases = [
        ("abort: {status: 503, percent: 5}", (0.0, 0.0), abort(503)),
        ("abort: {status: 503, percent: 5}", (0.049, 0.0), abort(503)),
        ("abort: {status: 503, percent: 5}", (0.05, 0.0), pass()),
        ("abort: {status: 503, percent: 5}", (0.999, 0.0), pass()),
        ("abort: {status: 503, percent: 0}", (0.0, 0.0), pass()),
        (
            "abort: {status: 429, percent: 100}",
            (0.999, 0.0),
            abort(429),
        ),
        ("abort: {status: 503}", (0.999, 0.0), abort(503)),
        (
            "abort: {status: 503, percent: 0.5}",
            (0.004, 0.0),
            abort(503),
        ),
        ("abort: {status: 503, percent: 0.5}", (0.005, 0.0), pass()),
        (
            "delay: {fixed: 100ms, percent: 5}",
            (0.0, 0.0),
            Decision::Pass { delay: ms100 },
        ),
        (
            "delay: {fixed: 100ms, percent: 5}",
            (0.0, 0.049),
            Decision::Pass { delay: ms100 },
        ),
        ("delay: {fixed: 100ms, percent: 5}", (0.0, 0.05), pass()),
        ("delay: {fixed: 100ms, percent: 5}", (0.0, 0.999), pass()),
        (
            "delay: {fixed: 1s}",
            (0.0, 0.999),
            Decision::Pass {
                delay: Some(Duration::from_secs(1)),
            },
        ),
        // Each fault has its own roll; abort is decided first.
        (
            "abort: {status: 503, percent: 5}\n  delay: {fixed: 100ms, percent: 10}",
            (0.5, 0.05),
            Decision::Pass { delay: ms100 },
        ),
        (
            "abort: {status: 503, percent: 5}\n  delay: {fixed: 100ms, percent: 10}",
            (0.01, 0.05),
            abort(503),
        ),
        (
            "abort: {status: 503, percent: 5}\n  delay: {fixed: 100ms, percent: 10}",
            (0.5, 0.1),
            pass(),
        ),
    ];
    let now = Clock::new().at(0);
    for (fault, rolls, want) in cases {
        let limits = build(&[policy("p", None, &format!("fault:\n  {fault}"))]);
        let got = limits.check(ROUTE, Some("any"), "s", now, rolls);
        match (&got, &want) {
            (Decision::Abort { status, reason }, Decision::Abort { status: w, .. }) => {
                assert_eq!(status, w, "{fault} {rolls:?}");
                assert!(reason.contains("TrafficPolicy shop/p"), "{reason}");
            }
            _ => assert_eq!(got, want, "{fault} {rolls:?}"),
        }
    }
}

#[test]
fn limits_come_before_faults() {
    let limits = build(&[policy(
        "p",
        None,
        "rateLimit:\n  route: {requestsPerUnit: 1, unit: Minute}\nfault:\n  abort: {status: 503, percent: 100}\n  delay: {fixed: 1s, percent: 100}",
    )]);
    let now = Clock::new().at(0);
    let always = (0.0, 0.0);
    // The first request passes its limit (spending the token), then the
    // abort hits; the second is limited, neither aborted nor delayed.
    assert!(matches!(
        limits.check(ROUTE, None, "s", now, always),
        Decision::Abort { status: 503, .. }
    ));
    assert_eq!(
        limits.check(ROUTE, None, "s", now, always),
        limited(60, "route", "p")
    );
}

#[test]
fn policies_apply_to_their_route_and_rule_only() {
    let limits = build(&[
        policy(
            "canary",
            Some("canary"),
            "rateLimit:\n  route: {requestsPerUnit: 1, unit: Minute}",
        ),
        raw(
            "later-route",
            "targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: not-yet}\nfault:\n  abort: {status: 503}",
        ),
    ]);
    let now = Clock::new().at(0);
    assert_eq!(
        limits.check(ROUTE, Some("canary"), "s", now, NO_FAULT),
        pass()
    );
    assert_eq!(
        limits.check(ROUTE, Some("canary"), "s", now, NO_FAULT),
        limited(60, "route", "canary")
    );
    for (route, rule) in [
        (ROUTE, Some("stable")),
        (ROUTE, None),
        ("other/cart-split", Some("canary")),
        ("shop/elsewhere", Some("canary")),
    ] {
        assert_eq!(
            limits.check(route, rule, "s", now, NO_FAULT),
            pass(),
            "{route} {rule:?}"
        );
    }
    assert!(matches!(
        limits.check("shop/not-yet", None, "s", now, NO_FAULT),
        Decision::Abort { status: 503, .. }
    ));
}

#[test]
fn overlapping_policies_keep_the_first_by_name() {
    let limit = "rateLimit:\n  route: {requestsPerUnit: 1, unit: Minute}";
    let other = |name: &str, rule: &str| {
        raw(
            name,
            &format!(
                "targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: other, sectionName: {rule}}}\n{limit}"
            ),
        )
    };
    let mut elsewhere = policy("z-other-namespace", None, limit);
    elsewhere.metadata.namespace = Some("team".into());
    // Given out of order: build sorts by namespace/name.
    let policies = [
        other("d", "stable"),
        policy("b", Some("canary"), limit),
        other("c", "stable"),
        policy("a", None, limit),
        other("e", "canary"),
        elsewhere,
    ];
    let (limits, problems) = Limits::build(&policies);
    let got: Vec<(&str, &str, &str)> = problems
        .iter()
        .map(|p| (p.policy.as_str(), p.field.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "shop/b",
                "spec.targetRef",
                "conflicts with TrafficPolicy shop/a, which already applies to HTTPRoute \
                 shop/cart-split (all rules); this policy is ignored: merge the two, or give \
                 each its own rule with sectionName"
            ),
            (
                "shop/d",
                "spec.targetRef",
                "conflicts with TrafficPolicy shop/c, which already applies to HTTPRoute \
                 shop/other rule \"stable\"; this policy is ignored: merge the two, or give \
                 each its own rule with sectionName"
            ),
        ]
    );
    // A whole-route policy after a rule's one conflicts too.
    let (_, problems) =
        Limits::build(&[policy("a", Some("canary"), limit), policy("b", None, limit)]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].message.contains("shop/a"), "{}", problems[0]);
    // The kept one (a, all rules) applies to the canary rule.
    let now = Clock::new().at(0);
    assert_eq!(
        limits.check(ROUTE, Some("canary"), "s", now, NO_FAULT),
        pass()
    );
    assert_eq!(
        limits.check(ROUTE, Some("canary"), "s", now, NO_FAULT),
        limited(60, "route", "a")
    );
}

#[test]
fn every_validation_problem_names_its_field() {
    let target = "targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: cart-split}";
    let fault = "fault:\n  abort: {status: 503}";
    // (spec, [(field, part of the message)])
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            format!("targetRef: {{group: \"\", kind: Service, name: cart}}\n{fault}"),
            vec![
                ("spec.targetRef.group", "\"\" is not supported"),
                ("spec.targetRef.kind", "target the route that serves it"),
            ],
        ),
        (
            format!(
                "targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: \"\", sectionName: \"\"}}\n{fault}"
            ),
            vec![
                ("spec.targetRef.name", "empty: name the HTTPRoute"),
                ("spec.targetRef.sectionName", "leave sectionName out"),
            ],
        ),
        (
            target.to_owned(),
            vec![("spec", "neither rateLimit nor fault")],
        ),
        (
            format!("{target}\nrateLimit: {{}}"),
            vec![("spec.rateLimit", "neither route nor perSource")],
        ),
        (
            format!("{target}\nfault: {{}}"),
            vec![("spec.fault", "neither delay nor abort")],
        ),
        (
            format!(
                "{target}\nrateLimit:\n  route: {{requestsPerUnit: 0, unit: Day}}\n  perSource: {{requestsPerUnit: 5, unit: Minute, burst: 0}}"
            ),
            vec![
                ("spec.rateLimit.route.requestsPerUnit", "use at least 1"),
                (
                    "spec.rateLimit.route.unit",
                    "unknown unit \"Day\": use Second, Minute or Hour",
                ),
                ("spec.rateLimit.perSource.burst", "use at least 1"),
            ],
        ),
        (
            format!("{target}\nrateLimit:\n  perSource: {{requestsPerUnit: 0, unit: second}}"),
            vec![
                ("spec.rateLimit.perSource.requestsPerUnit", "use at least 1"),
                ("spec.rateLimit.perSource.unit", "unknown unit \"second\""),
            ],
        ),
        (
            format!(
                "{target}\nfault:\n  abort: {{status: 199, percent: -1}}\n  delay: {{fixed: 100, percent: 100.5}}"
            ),
            vec![
                (
                    "spec.fault.abort.percent",
                    "-1 is not a percentage: use 0 to 100",
                ),
                (
                    "spec.fault.abort.status",
                    "199 is not a status to answer with: use one from 200 to 599",
                ),
                ("spec.fault.delay.percent", "100.5 is not a percentage"),
                ("spec.fault.delay.fixed", "ends without a unit"),
            ],
        ),
        (
            format!(
                "{target}\nfault:\n  abort: {{status: 600, percent: .nan}}\n  delay: {{fixed: soon}}"
            ),
            vec![
                ("spec.fault.abort.percent", "NaN is not a percentage"),
                ("spec.fault.abort.status", "600 is not a status"),
                ("spec.fault.delay.fixed", "where a number was expected"),
            ],
        ),
    ];
    let now = Clock::new().at(0);
    for (spec, want) in cases {
        let policy = raw("bad", &spec);
        let (limits, problems) = Limits::build(std::slice::from_ref(&policy));
        let got: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        let fields: Vec<&str> = want.iter().map(|(f, _)| *f).collect();
        assert_eq!(got, fields, "{spec}\n{problems:#?}");
        for (problem, (_, part)) in problems.iter().zip(&want) {
            assert_eq!(problem.policy, "shop/bad");
            assert!(problem.message.contains(part), "{problem} lacks {part:?}");
        }
        // Left out whole: nothing of it applies.
        assert_eq!(
            limits.check(ROUTE, None, "s", now, (0.0, 0.0)),
            pass(),
            "{spec}"
        );
        assert_eq!(
            limits.check("shop/cart", None, "s", now, (0.0, 0.0)),
            pass(),
            "{spec}"
        );
    }
}

#[test]
fn rebuild_keeps_the_state_of_unchanged_policies_only() {
    let once = |per_unit: u32| {
        format!("rateLimit:\n  route: {{requestsPerUnit: {per_unit}, unit: Hour, burst: 1}}")
    };
    let kept = policy("kept", Some("a"), &once(1));
    let changed = policy("changed", Some("b"), &once(1));
    let removed = policy("removed", Some("c"), &once(1));
    let mut limits = build(&[kept.clone(), changed, removed.clone()]);
    let now = Clock::new().at(0);
    for rule in ["a", "b", "c"] {
        assert_eq!(limits.check(ROUTE, Some(rule), "s", now, NO_FAULT), pass());
        assert!(matches!(
            limits.check(ROUTE, Some(rule), "s", now, NO_FAULT),
            Decision::Limited { .. }
        ));
    }
    let problems = limits.rebuild(&[kept.clone(), policy("changed", Some("b"), &once(2))]);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        limits.check(ROUTE, Some("a"), "s", now, NO_FAULT),
        limited(3600, "route", "kept"),
        "unchanged: the reload handed out no fresh burst"
    );
    assert_eq!(
        limits.check(ROUTE, Some("b"), "s", now, NO_FAULT),
        pass(),
        "changed: reset"
    );
    assert_eq!(
        limits.check(ROUTE, Some("c"), "s", now, NO_FAULT),
        pass(),
        "removed"
    );
    // Back again after removal: its old state was dropped.
    let problems = limits.rebuild(&[kept, removed]);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(limits.check(ROUTE, Some("c"), "s", now, NO_FAULT), pass());
    assert_eq!(
        limits.check(ROUTE, Some("a"), "s", now, NO_FAULT),
        limited(3600, "route", "kept")
    );
}
