//! From a route as written to its typed, checked form. Every check reports
//! at the field it concerns (`spec.rules[0].matches[1].path.value`) with
//! what to do, and compilation goes on after a problem so one pass shows
//! the user all of them; a route is only used when there were none.
use http::Method;
use regex::Regex;

use super::{
    Backend, Retry, RouteKind, RouteProblem, Rule, Timeouts,
    attach::DEFAULT_NAMESPACE,
    filters::{RuleShape, compile_filters, header_name},
    matching::{HeaderMatch, HostPattern, PathMatch, QueryMatch, RouteMatch, ValueMatch},
    parse_duration,
    timestamp::{Instant, parse_rfc3339},
};
use crate::state::gateway::{
    HttpBackendRef, HttpHeaderMatch, HttpRoute, HttpRouteFilter, HttpRouteMatch, HttpRouteRetry,
    HttpRouteRule, HttpRouteTimeouts, PathMatchType, RouteMeta, ValueMatchType,
};

/// The specification's bound on a backend weight.
const MAX_WEIGHT: u32 = 1_000_000;

/// The methods the specification's `HTTPMethod` enumerates.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Problems found in one route so far.
pub(super) struct Problems {
    kind: RouteKind,
    route: String,
    found: Vec<RouteProblem>,
}

impl Problems {
    pub fn push(&mut self, field: String, message: String) {
        self.found.push(RouteProblem {
            kind: self.kind,
            route: self.route.clone(),
            field,
            message,
        });
    }
}

#[derive(Debug)]
pub(super) struct CompiledRoute {
    pub kind: RouteKind,
    /// `namespace/name`.
    pub key: String,
    pub created: Option<Instant>,
    /// Lowercase; empty = every host.
    pub hostnames: Vec<HostPattern>,
    pub rules: Vec<CompiledRule>,
}

impl CompiledRoute {
    /// Smaller is senior: the oldest route (absent timestamps after every
    /// present one), then the first by `namespace/name` — the
    /// specification's tie-break between routes.
    pub fn seniority(&self) -> (bool, Option<Instant>, &str) {
        (self.created.is_none(), self.created, &self.key)
    }
}

#[derive(Debug)]
pub(super) struct CompiledRule {
    pub rule: Rule,
    /// Never empty: a rule written without matches has the catch-all one.
    pub matches: Vec<RouteMatch>,
}

/// An HTTPRoute's typed form, or every problem found in it.
pub(super) fn compile_http(route: &HttpRoute) -> Result<CompiledRoute, Vec<RouteProblem>> {
    compile(
        RouteKind::Http,
        &route.metadata,
        &route.spec.hostnames,
        |namespace, problems| {
            if route.spec.rules.is_empty() {
                // The specification's reading of a route without rules:
                // everything matches and, with no backends, is answered 500.
                vec![compile_rule(
                    &HttpRouteRule::default(),
                    0,
                    namespace,
                    problems,
                )]
            } else {
                route
                    .spec
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| compile_rule(rule, i, namespace, problems))
                    .collect()
            }
        },
    )
}

/// What every route kind shares: metadata and hostnames; `rules` compiles
/// the kind's rules (given the route's namespace).
pub(super) fn compile(
    kind: RouteKind,
    meta: &RouteMeta,
    hostnames: &[String],
    rules: impl FnOnce(&str, &mut Problems) -> Vec<CompiledRule>,
) -> Result<CompiledRoute, Vec<RouteProblem>> {
    let mut problems = Problems {
        kind,
        route: meta.key(),
        found: Vec::new(),
    };
    let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let created = meta
        .creation_timestamp
        .as_deref()
        .and_then(|text| match parse_rfc3339(text) {
            Ok(instant) => Some(instant),
            Err(message) => {
                problems.push("metadata.creationTimestamp".to_owned(), message);
                None
            }
        });
    let hostnames = hostnames
        .iter()
        .enumerate()
        .filter_map(|(i, host)| match hostname_problem(host, true) {
            Some(message) => {
                problems.push(format!("spec.hostnames[{i}]"), message);
                None
            }
            None => Some(match host.strip_prefix('*') {
                Some(suffix) => HostPattern::Wildcard(suffix.to_owned()),
                None => HostPattern::Exact(host.clone()),
            }),
        })
        .collect();
    let rules = rules(namespace, &mut problems);
    if problems.found.is_empty() {
        Ok(CompiledRoute {
            kind,
            key: problems.route,
            created,
            hostnames,
            rules,
        })
    } else {
        Err(problems.found)
    }
}

fn compile_rule(
    written: &HttpRouteRule,
    index: usize,
    namespace: &str,
    problems: &mut Problems,
) -> CompiledRule {
    let at = format!("spec.rules[{index}]");
    let matches = compile_matches(&written.matches, &at, problems, compile_match);
    let non_prefix = written.matches.iter().enumerate().find_map(|(i, m)| {
        match m
            .path
            .as_ref()
            .map_or(PathMatchType::PathPrefix, |p| p.kind)
        {
            PathMatchType::PathPrefix => None,
            PathMatchType::Exact => Some((i, "Exact")),
            PathMatchType::RegularExpression => Some((i, "RegularExpression")),
        }
    });
    let shape = RuleShape {
        kind: RouteKind::Http,
        namespace,
        non_prefix,
    };
    let (filters, backends) = actions(
        &written.filters,
        &written.backend_refs,
        &at,
        &shape,
        problems,
    );
    let timeouts = written
        .timeouts
        .as_ref()
        .map(|t| timeouts(t, &format!("{at}.timeouts"), problems))
        .unwrap_or_default();
    let retry = written
        .retry
        .as_ref()
        .map(|r| retry(r, &format!("{at}.retry"), problems));
    CompiledRule {
        rule: Rule {
            name: written.name.clone(),
            filters,
            backends,
            timeouts,
            retry,
        },
        matches,
    }
}

/// A rule's filters and weighted backends (with their own filters), for the
/// rule at `at`.
pub(super) fn actions(
    filters: &[HttpRouteFilter],
    backend_refs: &[HttpBackendRef],
    at: &str,
    shape: &RuleShape<'_>,
    problems: &mut Problems,
) -> (Vec<super::Filter>, Vec<Backend>) {
    let filters = compile_filters(filters, &format!("{at}.filters"), shape, problems);
    let backends = backend_refs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("{at}.backendRefs[{i}]");
            let weight = r.weight.unwrap_or(1);
            if weight > MAX_WEIGHT {
                problems.push(
                    format!("{at}.weight"),
                    format!("weight {weight} is more than {MAX_WEIGHT}; scale the weights down to 0-{MAX_WEIGHT}"),
                );
            }
            let mut backend = backend(
                (r.group.as_deref(), r.kind.as_deref()),
                &r.name,
                r.namespace.as_deref(),
                r.port,
                shape.namespace,
                &at,
                problems,
            );
            backend.weight = weight;
            backend.filters = compile_filters(&r.filters, &format!("{at}.filters"), shape, problems);
            backend
        })
        .collect();
    (filters, backends)
}

/// The matches of the rule at `at`, each compiled by `compile`; a rule
/// without matches has the kind's catch-all (a default match).
pub(super) fn compile_matches<M: Default>(
    written: &[M],
    at: &str,
    problems: &mut Problems,
    compile: fn(&M, &str, &mut Problems) -> RouteMatch,
) -> Vec<RouteMatch> {
    if written.is_empty() {
        return vec![compile(&M::default(), at, problems)];
    }
    written
        .iter()
        .enumerate()
        .map(|(i, m)| compile(m, &format!("{at}.matches[{i}]"), problems))
        .collect()
}

fn compile_match(written: &HttpRouteMatch, at: &str, problems: &mut Problems) -> RouteMatch {
    let path = match &written.path {
        None => RouteMatch::everything().path,
        Some(path) => {
            let value = &path.value;
            let field = format!("{at}.path.value");
            match path.kind {
                PathMatchType::Exact | PathMatchType::PathPrefix if !value.starts_with('/') => {
                    problems.push(
                        field,
                        format!("path {value:?} does not start with '/'; write an absolute path such as \"/{value}\""),
                    );
                    RouteMatch::everything().path
                }
                PathMatchType::Exact => PathMatch::Exact(value.clone()),
                PathMatchType::PathPrefix => PathMatch::Prefix {
                    written: value.clone(),
                    trimmed: value.trim_end_matches('/').to_owned(),
                },
                PathMatchType::RegularExpression => match whole(value, &field, problems) {
                    Some(regex) => PathMatch::Regex(regex),
                    None => RouteMatch::everything().path,
                },
            }
        }
    };
    let headers = header_matches(&written.headers, at, problems);
    // Of entries naming the same parameter only the first counts (the
    // specification's rule), also for precedence.
    let mut query: Vec<QueryMatch> = Vec::new();
    for (i, q) in written.query_params.iter().enumerate() {
        let field = format!("{at}.queryParams[{i}]");
        if q.name.is_empty() {
            problems.push(
                format!("{field}.name"),
                "query parameter name is empty; write the parameter's name".to_owned(),
            );
        }
        let value = value_match(q.kind, &q.value, &format!("{field}.value"), problems);
        if let Some(value) = value
            && !q.name.is_empty()
            && !query.iter().any(|seen| seen.name == q.name)
        {
            query.push(QueryMatch {
                name: q.name.clone(),
                value,
            });
        }
    }
    let method = written.method.as_deref().and_then(|method| {
        if METHODS.contains(&method) {
            Some(Method::from_bytes(method.as_bytes()).expect("the standard methods are valid"))
        } else {
            problems.push(
                format!("{at}.method"),
                format!(
                    "method {method:?} is not one the specification allows; use one of {}",
                    METHODS.join(", ")
                ),
            );
            None
        }
    });
    RouteMatch {
        path,
        headers,
        query,
        method,
        grpc: None,
    }
}

/// The header matches of the match at `at`. Of entries naming the same
/// header only the first counts (the specification's rule), also for
/// precedence.
pub(super) fn header_matches(
    written: &[HttpHeaderMatch],
    at: &str,
    problems: &mut Problems,
) -> Vec<HeaderMatch> {
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for (i, h) in written.iter().enumerate() {
        let field = format!("{at}.headers[{i}]");
        let name = header_name(&h.name, &format!("{field}.name"), problems);
        let value = value_match(h.kind, &h.value, &format!("{field}.value"), problems);
        if let (Some(name), Some(value)) = (name, value)
            && !headers.iter().any(|seen| seen.name == name)
        {
            headers.push(HeaderMatch { name, value });
        }
    }
    headers
}

fn value_match(
    kind: ValueMatchType,
    value: &str,
    field: &str,
    problems: &mut Problems,
) -> Option<ValueMatch> {
    match kind {
        ValueMatchType::Exact => Some(ValueMatch::Exact(value.to_owned())),
        ValueMatchType::RegularExpression => whole(value, field, problems).map(ValueMatch::Regex),
    }
}

/// A regex that must match the whole text, as the specification means it:
/// `\A` and `\z` hold even when the user's pattern turns on multi-line mode.
pub(super) fn whole(pattern: &str, field: &str, problems: &mut Problems) -> Option<Regex> {
    match Regex::new(&format!(r"\A(?:{pattern})\z")) {
        Ok(regex) => Some(regex),
        Err(e) => {
            problems.push(
                field.to_owned(),
                format!(
                    "regex {pattern:?} does not compile: {e}; write a valid RE2-style expression"
                ),
            );
            None
        }
    }
}

/// A backend reference (of a backendRef or a mirror) at `at`; only core
/// Services are supported.
pub(super) fn backend(
    (group, kind): (Option<&str>, Option<&str>),
    name: &str,
    namespace: Option<&str>,
    port: Option<u16>,
    route_namespace: &str,
    at: &str,
    problems: &mut Problems,
) -> Backend {
    if let Some(group) = group.filter(|g| !matches!(*g, "" | "core")) {
        problems.push(
            format!("{at}.group"),
            format!("backend group {group:?} is not supported; only Services (group \"\") can be backends"),
        );
    }
    if let Some(kind) = kind.filter(|k| *k != "Service") {
        problems.push(
            format!("{at}.kind"),
            format!("backend kind {kind:?} is not supported; use kind Service"),
        );
    }
    if name.is_empty() {
        problems.push(
            format!("{at}.name"),
            "backend name is empty; write the Service's name".to_owned(),
        );
    }
    if port == Some(0) {
        problems.push(
            format!("{at}.port"),
            "port 0 is not a port; use the Service port (1-65535)".to_owned(),
        );
    }
    Backend::new(namespace.unwrap_or(route_namespace), name, port)
}

fn timeouts(written: &HttpRouteTimeouts, at: &str, problems: &mut Problems) -> Timeouts {
    let mut parse = |text: &Option<String>, field: &str| {
        text.as_deref().and_then(|text| match parse_duration(text) {
            Ok(d) => Some(d),
            Err(message) => {
                problems.push(format!("{at}.{field}"), message);
                None
            }
        })
    };
    let request = parse(&written.request, "request");
    let backend_request = parse(&written.backend_request, "backendRequest");
    // A zero request timeout disables it, so it bounds nothing.
    if let (Some(request), Some(backend)) = (request, backend_request)
        && !request.is_zero()
        && backend > request
    {
        problems.push(
                format!("{at}.backendRequest"),
                format!(
                    "backendRequest {backend:?} is longer than request {request:?}, so it could never fire; make it at most the request timeout"
                ),
            );
    }
    let enabled = |d: Option<std::time::Duration>| d.filter(|d| !d.is_zero());
    Timeouts {
        request: enabled(request),
        backend_request: enabled(backend_request),
    }
}

fn retry(written: &HttpRouteRetry, at: &str, problems: &mut Problems) -> Retry {
    for (i, &code) in written.codes.iter().enumerate() {
        if !(400..=599).contains(&code) {
            problems.push(
                format!("{at}.codes[{i}]"),
                format!("status {code} is not an error status; list codes from 400 to 599"),
            );
        }
    }
    let attempts = written.attempts.unwrap_or(Retry::DEFAULT_ATTEMPTS);
    if attempts > Retry::MAX_ATTEMPTS {
        problems.push(
            format!("{at}.attempts"),
            format!(
                "{attempts} attempts would multiply the load on a failing backend; use at most {}",
                Retry::MAX_ATTEMPTS
            ),
        );
    }
    let backoff = match written.backoff.as_deref().map(parse_duration) {
        None => Retry::DEFAULT_BACKOFF,
        Some(Ok(backoff)) => backoff,
        Some(Err(message)) => {
            problems.push(format!("{at}.backoff"), message);
            Retry::DEFAULT_BACKOFF
        }
    };
    Retry {
        codes: written.codes.clone(),
        attempts,
        backoff,
    }
}

/// Why `text` is not a hostname the specification accepts (lowercase RFC
/// 1123 labels; with `wildcard`, optionally `*.` first), or `None`.
pub(super) fn hostname_problem(text: &str, wildcard: bool) -> Option<String> {
    let name = match text.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => text,
    };
    let example = if wildcard {
        "\"foo.example.com\" or \"*.example.com\""
    } else {
        "\"foo.example.com\""
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if text.is_empty() || text.len() > 253 || !name.split('.').all(label_ok) {
        return Some(format!(
            "hostname {text:?} is not a valid hostname; write lowercase DNS labels of letters, digits and '-' like {example}"
        ));
    }
    if name
        .split('.')
        .all(|label| label.bytes().all(|c| c.is_ascii_digit()))
    {
        return Some(format!(
            "hostname {text:?} is an IP address, which routes cannot match; write a DNS name like {example}"
        ));
    }
    None
}
