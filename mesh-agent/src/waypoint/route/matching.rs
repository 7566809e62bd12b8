//! Whether a request meets a rule, and in which order rules are tried.
//!
//! The order is computed once per table: every match of every rule of every
//! route gets a place by the specification's precedence — hostname
//! specificity (exact, then longer wildcards, then routes without
//! hostnames), an `Exact` path, the longest `PathPrefix`, a method match,
//! the most header matches, the most query matches, the oldest route, the
//! route's `namespace/name`, the rule's and then the match's position. A
//! request then walks that order and the first match that holds wins, so a
//! rule of a less specific hostname still serves a request no rule of a more
//! specific one matches.
//!
//! `RegularExpression` paths rank after every `Exact` and `PathPrefix` path
//! (the specification leaves their place to implementations: a regex's
//! specificity cannot be measured), and tie among themselves.
//!
//! A GRPCRoute match ranks by the GRPCRoute specification instead: the
//! most characters of a matching service, then of a matching method, then
//! the most header matches. Exact method matches come before
//! `RegularExpression` ones (for the same reason as regex paths) and those
//! before matches without a method. The two kinds never meet in one host
//! group (see `attach`), so their ranks are never compared with each other.
use std::cmp::{Ordering, Reverse};

use http::{HeaderName, Method};
use regex::Regex;

use super::{Request, compile::CompiledRoute};

#[derive(Debug, Clone)]
pub(super) enum PathMatch {
    Exact(String),
    /// `trimmed` is the written value without trailing `/`, so `/foo/` and
    /// `/foo` match alike and `/` becomes the empty prefix of every path.
    Prefix {
        written: String,
        trimmed: String,
    },
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub(super) enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub(super) struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch,
}

#[derive(Debug, Clone)]
pub(super) struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

/// One entry of a rule's `matches`: all parts must hold.
#[derive(Debug, Clone)]
pub(super) struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    pub method: Option<Method>,
    /// Set for a GRPCRoute's match: only gRPC requests meet it, and it
    /// ranks by the GRPCRoute precedence.
    pub grpc: Option<GrpcMethod>,
}

/// How a GRPCRoute match names the method, for precedence.
#[derive(Debug, Clone, Copy)]
pub(super) struct GrpcMethod {
    pub class: MethodClass,
    /// Characters of an exact service and method; 0 when absent or regex.
    pub service_len: usize,
    pub method_len: usize,
}

/// More specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum MethodClass {
    Exact,
    Regex,
    /// No method match: every service and method.
    Any,
}

/// A match's place in the order; smaller is more specific.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// Path class (Exact, PathPrefix, regex), prefix length, method,
    /// headers, query parameters.
    Http(
        u8,
        Reverse<usize>,
        Reverse<bool>,
        Reverse<usize>,
        Reverse<usize>,
    ),
    /// Method class, service characters, method characters, headers.
    Grpc(MethodClass, Reverse<usize>, Reverse<usize>, Reverse<usize>),
}

/// Whether a request is a gRPC call: `content-type: application/grpc`,
/// optionally with a `+codec` suffix or parameters.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

impl RouteMatch {
    /// The match of a rule written without matches.
    pub fn everything() -> Self {
        RouteMatch {
            path: PathMatch::Prefix {
                written: "/".to_owned(),
                trimmed: String::new(),
            },
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
            grpc: None,
        }
    }

    pub fn matches(&self, req: &Request<'_>) -> bool {
        self.method
            .as_ref()
            .is_none_or(|method| method == req.method)
            && self.path_matches(req.path)
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|q| q.matches(req.query))
            && (self.grpc.is_none() || is_grpc(req.headers))
    }

    fn path_matches(&self, path: &str) -> bool {
        match &self.path {
            PathMatch::Exact(value) => path == value,
            PathMatch::Prefix { trimmed, .. } => path
                .strip_prefix(trimmed.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathMatch::Regex(regex) => regex.is_match(path),
        }
    }

    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix { written, .. } => Some(written),
            PathMatch::Exact(_) | PathMatch::Regex(_) => None,
        }
    }

    fn rank(&self) -> Rank {
        if let Some(grpc) = self.grpc {
            return Rank::Grpc(
                grpc.class,
                Reverse(grpc.service_len),
                Reverse(grpc.method_len),
                Reverse(self.headers.len()),
            );
        }
        let (class, prefix_len) = match &self.path {
            PathMatch::Exact(_) => (0u8, 0),
            PathMatch::Prefix { trimmed, .. } => (1, trimmed.len()),
            PathMatch::Regex(_) => (2, 0),
        };
        Rank::Http(
            class,
            Reverse(prefix_len),
            Reverse(self.method.is_some()),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
        )
    }
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(expected) => value == expected,
            ValueMatch::Regex(regex) => regex.is_match(value),
        }
    }
}

impl HeaderMatch {
    /// The first value of a repeated header decides, as the specification
    /// allows; a value that is not UTF-8 matches nothing.
    fn matches(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get(&self.name)
            .and_then(|value| std::str::from_utf8(value.as_bytes()).ok())
            .is_some_and(|value| self.value.matches(value))
    }
}

impl QueryMatch {
    /// The first occurrence of the name decides, as the specification
    /// allows.
    fn matches(&self, query: Option<&str>) -> bool {
        query
            .and_then(|query| {
                form_urlencoded::parse(query.as_bytes()).find(|(name, _)| *name == self.name)
            })
            .is_some_and(|(_, value)| self.value.matches(&value))
    }
}

/// A route hostname, stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    Exact(String),
    /// `*.example.com` as `.example.com`.
    Wildcard(String),
    /// The group of routes without hostnames.
    Any,
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            // At least one label before the suffix: never the bare domain.
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            HostPattern::Any => true,
        }
    }

    /// Whether some host matches both (`Any` matches every host).
    fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) | (_, HostPattern::Any) => true,
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a.eq_ignore_ascii_case(b),
            (HostPattern::Exact(host), wildcard) | (wildcard, HostPattern::Exact(host)) => {
                wildcard.matches(host)
            }
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
                a.ends_with(b.as_str()) || b.ends_with(a.as_str())
            }
        }
    }

    /// Smaller is more specific.
    fn rank(&self) -> (u8, Reverse<usize>) {
        match self {
            HostPattern::Exact(_) => (0, Reverse(0)),
            HostPattern::Wildcard(suffix) => (1, Reverse(suffix.len())),
            HostPattern::Any => (2, Reverse(0)),
        }
    }
}

/// Whether two routes' hostnames (empty: every host) share a host.
pub(super) fn hostnames_overlap(a: &[HostPattern], b: &[HostPattern]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|x| b.iter().any(|y| x.overlaps(y)))
}

/// A place in the order: `routes[route].rules[rule].matches[index]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub route: usize,
    pub rule: usize,
    pub index: usize,
}

/// The entries of the routes with one hostname, in precedence order.
#[derive(Debug)]
pub(super) struct HostGroup {
    pub host: HostPattern,
    pub entries: Vec<Entry>,
}

/// The table's order: host groups by specificity, each with its entries
/// sorted by the match criteria and tie-breaks.
pub(super) fn order(routes: &[CompiledRoute]) -> Vec<HostGroup> {
    let mut entries: Vec<Entry> = routes
        .iter()
        .enumerate()
        .flat_map(|(route, compiled)| {
            compiled
                .rules
                .iter()
                .enumerate()
                .flat_map(move |(rule, r)| {
                    (0..r.matches.len()).map(move |index| Entry { route, rule, index })
                })
        })
        .collect();
    entries.sort_by(|a, b| compare(routes, a, b));

    let mut hosts: Vec<HostPattern> = Vec::new();
    for pattern in routes.iter().flat_map(|r| &r.hostnames) {
        if !hosts.contains(pattern) {
            hosts.push(pattern.clone());
        }
    }
    hosts.sort_by_key(HostPattern::rank);
    hosts.push(HostPattern::Any);

    hosts
        .into_iter()
        .map(|host| {
            let entries = entries
                .iter()
                .copied()
                .filter(|e| {
                    let hostnames = &routes[e.route].hostnames;
                    match host {
                        HostPattern::Any => hostnames.is_empty(),
                        _ => hostnames.contains(&host),
                    }
                })
                .collect();
            HostGroup { host, entries }
        })
        .filter(|group| !group.entries.is_empty())
        .collect()
}

fn compare(routes: &[CompiledRoute], a: &Entry, b: &Entry) -> Ordering {
    let (route_a, route_b) = (&routes[a.route], &routes[b.route]);
    let match_a = &route_a.rules[a.rule].matches[a.index];
    let match_b = &route_b.rules[b.rule].matches[b.index];
    match_a
        .rank()
        .cmp(&match_b.rank())
        .then_with(|| route_a.seniority().cmp(&route_b.seniority()))
        .then_with(|| a.rule.cmp(&b.rule))
        .then_with(|| a.index.cmp(&b.index))
}
