//! Gateway API route objects (`gateway.networking.k8s.io/v1` HTTPRoute and
//! GRPCRoute), in the shape users write them: the part of the specification
//! the waypoint implements, including GEP-1731 `retry`. Unknown fields are errors, so a
//! misspelt `matches` cannot silently turn a route into a catch-all; what a
//! route *means* (regexes, weights, filters) is checked by the waypoint that
//! serves it, which reports problems per object and field.
//!
//! Written here rather than taken from the `gateway-api` crate: that crate
//! pins another k8s-openapi line than ours and pulls kube and schemars into
//! the agent, and its standard channel lacks `retry`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// A route object; its kind is its spec's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: RouteMeta,
    pub spec: S,
}

pub type HttpRoute = Route<HttpRouteSpec>;
pub type GrpcRoute = Route<GrpcRouteSpec>;

/// The metadata a route's meaning depends on; the rest of Kubernetes'
/// `ObjectMeta` (annotations, managedFields, …) is accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMeta {
    pub name: String,
    pub namespace: Option<String>,
    /// RFC 3339. The specification breaks ties between equally specific
    /// rules of different routes by age, oldest first.
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl RouteMeta {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or("default"),
            self.name
        )
    }
}

/// What HTTPRoute and GRPCRoute specs share; `R` is the kind's rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec<R> {
    /// A Service (mesh, GAMMA) or the waypoint Gateway itself.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Absent: one rule matching every request (every gRPC call, for a
    /// GRPCRoute), with no backends (so 500, as the specification says of a
    /// rule without backends).
    #[serde(default)]
    pub rules: Vec<R>,
}

pub type HttpRouteSpec = RouteSpec<HttpRouteRule>;
pub type GrpcRouteSpec = RouteSpec<GrpcRouteRule>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    /// `""` (core) for a Service, `gateway.networking.k8s.io` for a Gateway.
    pub group: Option<String>,
    /// `Service` or `Gateway`; the specification's default is `Gateway`.
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub port: Option<u16>,
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    pub name: Option<String>,
    /// Absent or empty: one match of `PathPrefix /`.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    pub timeouts: Option<HttpRouteTimeouts>,
    pub retry: Option<HttpRouteRetry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    pub path: Option<HttpPathMatch>,
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
    #[serde(default)]
    pub query_params: Vec<HttpQueryParamMatch>,
    /// `GET`, `POST`, …
    pub method: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    #[serde(default, rename = "type")]
    pub kind: PathMatchType,
    /// The specification's default is `/`.
    #[serde(default = "root_path")]
    pub value: String,
}

fn root_path() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeaderMatch {
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
    /// Case-insensitive, as HTTP header names are.
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpQueryParamMatch {
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
    /// Case-sensitive, as the specification says.
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect`,
    /// `URLRewrite`, `RequestMirror` or `ExtensionRef`; the field of the same
    /// (camelCased) name holds its settings.
    #[serde(rename = "type")]
    pub kind: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub request_redirect: Option<RequestRedirect>,
    #[serde(rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    pub request_mirror: Option<RequestMirror>,
    pub extension_ref: Option<LocalObjectRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301 or 302 (the default).
    pub status_code: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    pub backend_ref: BackendObjectRef,
    /// Share of requests mirrored, 0–100 (default all).
    pub percent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendObjectRef {
    pub group: Option<String>,
    /// Only `Service` is supported.
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
}

/// A rule's backend; `F` is the kind's filter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    // `filters` defaults to an empty list, which needs no default filter.
    bound(deserialize = "F: Deserialize<'de>")
)]
pub struct BackendRef<F> {
    /// Spelled out, not flattened from [`BackendObjectRef`]: serde cannot
    /// reject unknown fields through `flatten`.
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
    /// Relative share (default 1; 0 sends nothing).
    pub weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<F>,
}

pub type HttpBackendRef = BackendRef<HttpRouteFilter>;
pub type GrpcBackendRef = BackendRef<GrpcRouteFilter>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// Gateway API duration (`10s`, `500ms`, `1m`); `0s` disables.
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRetry {
    /// Statuses worth a retry (e.g. 503); connection failures always are.
    #[serde(default)]
    pub codes: Vec<u16>,
    pub attempts: Option<u32>,
    pub backoff: Option<String>,
}

/// GRPCRoute has no timeouts or retry in the standard channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    pub name: Option<String>,
    /// Absent or empty: every gRPC request.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default)]
    pub filters: Vec<GrpcRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<GrpcBackendRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    /// Absent: every service and method.
    pub method: Option<GrpcMethodMatch>,
    /// The specification's GRPCHeaderMatch has HTTPHeaderMatch's shape.
    #[serde(default)]
    pub headers: Vec<HttpHeaderMatch>,
}

/// `type` defaults to `Exact`, as for header values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
    /// Fully qualified (`pkg.Service`); absent: any service.
    pub service: Option<String>,
    /// Absent: any method.
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror` or
    /// `ExtensionRef`: GRPCRoute has no redirect or rewrite.
    #[serde(rename = "type")]
    pub kind: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub request_mirror: Option<RequestMirror>,
    pub extension_ref: Option<LocalObjectRef>,
}

/// A GRPCRoute filter is an HTTPRoute filter of the types they share, so
/// the waypoint validates and applies both with one code path.
impl From<&GrpcRouteFilter> for HttpRouteFilter {
    fn from(f: &GrpcRouteFilter) -> Self {
        HttpRouteFilter {
            kind: f.kind.clone(),
            request_header_modifier: f.request_header_modifier.clone(),
            response_header_modifier: f.response_header_modifier.clone(),
            request_redirect: None,
            url_rewrite: None,
            request_mirror: f.request_mirror.clone(),
            extension_ref: f.extension_ref.clone(),
        }
    }
}

impl From<&GrpcBackendRef> for HttpBackendRef {
    fn from(r: &GrpcBackendRef) -> Self {
        HttpBackendRef {
            group: r.group.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            port: r.port,
            weight: r.weight,
            filters: r.filters.iter().map(HttpRouteFilter::from).collect(),
        }
    }
}
