//! Gateway API HTTPRoutes and GRPCRoutes as the waypoint serves them: the
//! routes attached to one [`Parent`] compiled into a [`RouteTable`] that
//! answers, per request, which rule of which route wins by the
//! specification's precedence, with the rule's filters, weighted backends,
//! timeouts and retry already validated and typed. Routes with any problem
//! are left out whole and reported per field ([`RouteProblem`]), so a
//! half-understood route can never serve traffic.
//!
//! A GRPCRoute compiles into the same form as an HTTPRoute (a gRPC call is a
//! POST to `/{service}/{method}`), so one matcher serves both kinds.
//!
//! - `attach`: which routes belong to the parent (Service or waypoint), and
//!   which of an HTTPRoute and a GRPCRoute sharing hostnames is accepted.
//! - `compile`: validation and the typed form, with field paths.
//! - `grpc`: a GRPCRoute's method matches in that form.
//! - `matching`: hostnames, match criteria, the precedence order.
//! - `filters`: header edits, redirects, rewrites, mirrors.
//! - `duration`, `timestamp`: the two textual formats routes carry.
use std::time::Duration;

use crate::{
    flows::record::Text,
    state::gateway::{GrpcRoute, HttpRoute},
};

mod attach;
mod compile;
mod duration;
mod filters;
mod grpc;
mod matching;
mod timestamp;

#[cfg(test)]
mod tests;

pub use duration::parse_duration;
pub use filters::{Filter, HeaderEdit, PathChange, Redirect, Rewrite};
pub use matching::is_grpc;

use compile::CompiledRoute;
use matching::{Entry, HostGroup};

/// What the waypoint serves a request for: a Service port, through a waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub service_namespace: String,
    pub service_name: String,
    pub port: u16,
    pub waypoint_namespace: String,
    pub waypoint_name: String,
}

/// A request as matching sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a http::Method,
    /// Host (or `:authority`) without its port, in any case.
    pub host: &'a str,
    /// Without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// Which Gateway API route type a route is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl std::fmt::Display for RouteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        })
    }
}

/// One invalid route, as its status condition would say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProblem {
    pub kind: RouteKind,
    /// `namespace/name`.
    pub route: String,
    /// The path of the offending field, e.g. `spec.rules[0].matches[1].path.value`.
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl std::fmt::Display for RouteProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.kind, self.route, self.field, self.message
        )
    }
}

/// The valid routes attached to one parent, in precedence order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<CompiledRoute>,
    /// Most specific hostname first; the catch-all group (routes without
    /// hostnames) last.
    groups: Vec<HostGroup>,
}

/// The winning rule for a request.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    /// `namespace/name`.
    pub route: &'a str,
    pub rule_index: usize,
    pub rule: &'a Rule,
    /// The winning match's `PathPrefix` value as written, for
    /// `ReplacePrefixMatch`; `None` for other path matches.
    pub matched_prefix: Option<&'a str>,
}

/// A rule's actions (its matches stay inside the table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: Option<String>,
    pub filters: Vec<Filter>,
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
}

/// A Service port to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub namespace: String,
    /// A Service.
    pub name: String,
    /// `namespace/name`, as records, budgets and logs name it (made once,
    /// not per request).
    pub key: Text,
    /// Absent: the port the request came in on.
    pub port: Option<u16>,
    /// Relative share (default 1, 0 = never chosen); meaningless for a mirror.
    pub weight: u32,
    pub filters: Vec<Filter>,
}

impl Backend {
    /// Service `namespace/name` on `port`, weight 1, no filters.
    pub fn new(namespace: &str, name: &str, port: Option<u16>) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: format!("{namespace}/{name}").into(),
            port,
            weight: 1,
            filters: Vec::new(),
        }
    }
}

/// `None` = no timeout (absent or `0s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

/// GEP-1731 retry. The specification leaves the defaults to
/// implementations: absent `attempts` is [`Retry::DEFAULT_ATTEMPTS`] and
/// absent `backoff` [`Retry::DEFAULT_BACKOFF`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Statuses worth a retry; connection failures always are.
    pub codes: Vec<u16>,
    /// Retries after the first try (so at most `attempts + 1` tries).
    pub attempts: u32,
    pub backoff: Duration,
}

impl Retry {
    pub const DEFAULT_ATTEMPTS: u32 = 1;
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
    /// A sane bound, not the specification's: more retries multiply load on
    /// a failing backend.
    pub const MAX_ATTEMPTS: u32 = 10;
}

impl Rule {
    /// Weighted choice: `roll` is any random u64; `None` when no backend has
    /// weight > 0 (the caller answers 500, as the specification says).
    pub fn pick(&self, roll: u64) -> Option<&Backend> {
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = roll % total;
        for backend in &self.backends {
            let weight = u64::from(backend.weight);
            if point < weight {
                return Some(backend);
            }
            point -= weight;
        }
        None
    }
}

impl RouteTable {
    /// Compiles every route in `http` and `grpc` attached to `parent`;
    /// routes with any problem are left out whole (and reported), valid ones
    /// are unaffected. Routes attached elsewhere are skipped without a word:
    /// they are another parent's business.
    pub fn build(
        http: &[HttpRoute],
        grpc: &[GrpcRoute],
        parent: &Parent,
    ) -> (RouteTable, Vec<RouteProblem>) {
        let http = http
            .iter()
            .filter(|r| attach::attaches(&r.metadata, &r.spec.parent_refs, parent))
            .map(compile::compile_http);
        let grpc = grpc
            .iter()
            .filter(|r| attach::attaches(&r.metadata, &r.spec.parent_refs, parent))
            .map(grpc::compile_grpc);
        let mut compiled = Vec::new();
        let mut problems = Vec::new();
        for result in http.chain(grpc) {
            match result {
                Ok(route) => compiled.push(route),
                Err(mut found) => problems.append(&mut found),
            }
        }
        let compiled = attach::without_conflicts(compiled, &mut problems);
        let groups = matching::order(&compiled);
        (
            RouteTable {
                routes: compiled,
                groups,
            },
            problems,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The winning rule by the specification's precedence, or `None` (the
    /// caller answers 404, or UNIMPLEMENTED to a gRPC call). A scan of the precomputed order: the first
    /// entry whose hostname and match hold wins.
    pub fn decide(&self, req: &Request<'_>) -> Option<Matched<'_>> {
        self.groups
            .iter()
            .filter(|group| group.host.matches(req.host))
            .flat_map(|group| group.entries.iter())
            .find_map(|&Entry { route, rule, index }| {
                let compiled = &self.routes[route];
                let compiled_rule = &compiled.rules[rule];
                let matched = &compiled_rule.matches[index];
                matched.matches(req).then(|| Matched {
                    route: &compiled.key,
                    rule_index: rule,
                    rule: &compiled_rule.rule,
                    matched_prefix: matched.prefix(),
                })
            })
    }
}
