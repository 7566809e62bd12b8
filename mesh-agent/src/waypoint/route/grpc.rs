//! GRPCRoutes in the form HTTPRoutes compile to. A gRPC call is a POST to
//! `/{service}/{method}`, so each method match becomes a path match:
//!
//! | written (type, service, method)  | path match                      |
//! |----------------------------------|---------------------------------|
//! | Exact, `s`, `m`                  | Exact `/s/m`                    |
//! | Exact, `s`, —                    | PathPrefix `/s/`                |
//! | Exact, —, `m`                    | regex `/[^/]+/m`                |
//! | RegularExpression, `s?`, `m?`    | regex `/(?:s)/(?:m)`, an absent part `[^/]+` |
//!
//! Every regex is anchored at both ends; headers map as HTTPRoute's do.
//! Filters and backends are HTTPRoute's, of the types GRPCRoute shares.
use std::sync::LazyLock;

use http::Method;
use regex::Regex;

use super::{
    RouteKind, RouteProblem, Rule, Timeouts,
    compile::{self, CompiledRoute, CompiledRule, Problems},
    filters::RuleShape,
    matching::{GrpcMethod, MethodClass, PathMatch, RouteMatch},
};
use crate::state::gateway::{
    GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule, HttpBackendRef, HttpRouteFilter,
    ValueMatchType,
};

/// The specification's syntax of an Exact service (`pkg.Service`).
static SERVICE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*\z").expect("a valid regex")
});
/// The specification's syntax of an Exact method.
static METHOD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[A-Za-z_][A-Za-z_0-9]*\z").expect("a valid regex"));

/// A GRPCRoute's typed form, or every problem found in it.
pub(super) fn compile_grpc(route: &GrpcRoute) -> Result<CompiledRoute, Vec<RouteProblem>> {
    compile::compile(
        RouteKind::Grpc,
        &route.metadata,
        &route.spec.hostnames,
        |namespace, problems| {
            // A route without rules matches every gRPC request and, with
            // no backends, answers 500 — as an HTTPRoute without rules.
            let default = [GrpcRouteRule::default()];
            let rules = if route.spec.rules.is_empty() {
                &default[..]
            } else {
                &route.spec.rules
            };
            rules
                .iter()
                .enumerate()
                .map(|(i, rule)| compile_rule(rule, i, namespace, problems))
                .collect()
        },
    )
}

fn compile_rule(
    written: &GrpcRouteRule,
    index: usize,
    namespace: &str,
    problems: &mut Problems,
) -> CompiledRule {
    let at = format!("spec.rules[{index}]");
    let matches = compile::compile_matches(&written.matches, &at, problems, compile_match);
    let shape = RuleShape {
        kind: RouteKind::Grpc,
        namespace,
        non_prefix: None,
    };
    let filters: Vec<HttpRouteFilter> = written.filters.iter().map(Into::into).collect();
    let backend_refs: Vec<HttpBackendRef> = written.backend_refs.iter().map(Into::into).collect();
    let (filters, backends) = compile::actions(&filters, &backend_refs, &at, &shape, problems);
    CompiledRule {
        rule: Rule {
            name: written.name.clone(),
            filters,
            backends,
            timeouts: Timeouts::default(),
            retry: None,
        },
        matches,
    }
}

fn compile_match(written: &GrpcRouteMatch, at: &str, problems: &mut Problems) -> RouteMatch {
    let (path, grpc) = match &written.method {
        None => every_call(),
        Some(method) => method_match(method, &format!("{at}.method"), problems),
    };
    RouteMatch {
        path,
        headers: compile::header_matches(&written.headers, at, problems),
        query: Vec::new(),
        method: Some(Method::POST),
        grpc: Some(grpc),
    }
}

/// A match without a method: every service and method.
fn every_call() -> (PathMatch, GrpcMethod) {
    (
        RouteMatch::everything().path,
        GrpcMethod {
            class: MethodClass::Any,
            service_len: 0,
            method_len: 0,
        },
    )
}

fn method_match(
    written: &GrpcMethodMatch,
    at: &str,
    problems: &mut Problems,
) -> (PathMatch, GrpcMethod) {
    let service = written.service.as_deref().filter(|s| !s.is_empty());
    let method = written.method.as_deref().filter(|m| !m.is_empty());
    if service.is_none() && method.is_none() {
        problems.push(
            at.to_owned(),
            "a method match needs a service, a method or both; name them, or remove `method` to match every call".to_owned(),
        );
        return every_call();
    }
    match written.kind {
        ValueMatchType::Exact => {
            let mut valid = true;
            if let Some(s) = service.filter(|s| !SERVICE.is_match(s)) {
                valid = false;
                problems.push(
                    format!("{at}.service"),
                    format!("service {s:?} is not a gRPC service name; write it fully qualified like \"pkg.v1.Greeter\" (letters, digits, '_' and '.'), or use type RegularExpression"),
                );
            }
            if let Some(m) = method.filter(|m| !METHOD.is_match(m)) {
                valid = false;
                problems.push(
                    format!("{at}.method"),
                    format!("method {m:?} is not a gRPC method name; write it like \"SayHello\" (letters, digits and '_'), or use type RegularExpression"),
                );
            }
            if !valid {
                return every_call();
            }
            let path = match (service, method) {
                (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
                (Some(s), None) => PathMatch::Prefix {
                    written: format!("/{s}/"),
                    trimmed: format!("/{s}"),
                },
                (None, Some(m)) => PathMatch::Regex(
                    Regex::new(&format!(r"\A/[^/]+/{}\z", regex::escape(m)))
                        .expect("an escaped name is a valid regex"),
                ),
                // Reported above.
                (None, None) => return every_call(),
            };
            let grpc = GrpcMethod {
                class: MethodClass::Exact,
                service_len: service.map_or(0, str::len),
                method_len: method.map_or(0, str::len),
            };
            (path, grpc)
        }
        ValueMatchType::RegularExpression => {
            // Each part is checked on its own so a mistake is reported at
            // its field; the joined pattern then compiles too.
            let mut part = |written: Option<&str>, field: &str| match written {
                None => Some("[^/]+".to_owned()),
                Some(pattern) => compile::whole(pattern, &format!("{at}.{field}"), problems)
                    .map(|_| format!("(?:{pattern})")),
            };
            let (service, method) = (part(service, "service"), part(method, "method"));
            let (Some(service), Some(method)) = (service, method) else {
                return every_call();
            };
            match compile::whole(&format!("/{service}/{method}"), at, problems) {
                Some(regex) => (
                    PathMatch::Regex(regex),
                    GrpcMethod {
                        class: MethodClass::Regex,
                        service_len: 0,
                        method_len: 0,
                    },
                ),
                None => every_call(),
            }
        }
    }
}
