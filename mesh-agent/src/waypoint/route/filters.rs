//! Rule and backend filters: their validated form, compiled from the
//! written `filters` lists (each problem reported at its field), and what
//! they do to a request — header edits, redirects, rewrites. Mirrors are
//! only described here; sending the copy is the proxy's job.
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{
    Backend, Request, RouteKind,
    compile::{Problems, backend, hostname_problem},
};
use crate::state::gateway::{HeaderModifier, HttpRouteFilter, PathModifier};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    RequestHeaders(HeaderEdit),
    ResponseHeaders(HeaderEdit),
    Redirect(Redirect),
    Rewrite(Rewrite),
    /// Send a copy of `percent`% of requests (0–100) to `backend`, ignoring
    /// its answers.
    Mirror {
        backend: Backend,
        percent: u32,
    },
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdit {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdit {
    /// `set` replaces every value of the name, `add` appends one, `remove`
    /// deletes all, in that order (the specification's). Names compare
    /// case-insensitively, as `HeaderName`s do.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// How a redirect or rewrite changes the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// `ReplaceFullPath`.
    Full(String),
    /// `ReplacePrefixMatch`: the matched `PathPrefix` becomes this.
    Prefix(String),
}

impl PathChange {
    /// The new path, or `None` when a prefix replacement has no matched
    /// prefix to replace (validation rules that out for compiled rules).
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> Option<String> {
        match self {
            PathChange::Full(path) => Some(path.clone()),
            PathChange::Prefix(replacement) => {
                // Both sides without trailing `/` so that the joint has
                // exactly one: `/foo` → `/xyz/` turns `/foo/bar` into
                // `/xyz/bar`, not `/xyz//bar`.
                let prefix = matched_prefix?.trim_end_matches('/');
                let rest = path.strip_prefix(prefix)?;
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                let mut out = replacement.trim_end_matches('/').to_owned();
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                Some(out)
            }
        }
    }
}

/// `RequestRedirect`: answered by the waypoint, no backend involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; absent keeps the request's.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathChange>,
    /// 301 or 302.
    pub status: StatusCode,
}

impl Redirect {
    /// The status and Location for a request that came in over `scheme` on
    /// `port` (the listener's). Port: the redirect's, else the well-known
    /// port of a scheme the redirect sets, else `port`; left out of the
    /// Location when it is the scheme's default. The query is kept.
    pub fn answer(
        &self,
        req: &Request<'_>,
        scheme: &str,
        port: u16,
        matched_prefix: Option<&str>,
    ) -> (StatusCode, String) {
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        let port_out = self.port.unwrap_or_else(|| {
            self.scheme
                .as_deref()
                .and_then(well_known_port)
                .unwrap_or(port)
        });
        let host = self.hostname.as_deref().unwrap_or(req.host);
        let path = self
            .path
            .as_ref()
            .and_then(|change| change.apply(req.path, matched_prefix));
        let mut location = format!("{scheme_out}://{host}");
        if well_known_port(scheme_out) != Some(port_out) {
            location.push(':');
            location.push_str(&port_out.to_string());
        }
        location.push_str(path.as_deref().unwrap_or(req.path));
        if let Some(query) = req.query.filter(|q| !q.is_empty()) {
            location.push('?');
            location.push_str(query);
        }
        (self.status, location)
    }
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `URLRewrite`: changes the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathChange>,
}

impl Rewrite {
    /// New (host, path) for the upstream request; `None` where unchanged.
    pub fn apply(
        &self,
        path: &str,
        matched_prefix: Option<&str>,
    ) -> (Option<String>, Option<String>) {
        (
            self.hostname.clone(),
            self.path
                .as_ref()
                .and_then(|change| change.apply(path, matched_prefix)),
        )
    }
}

/// What the filters of a rule may rely on about its route and matches.
pub(super) struct RuleShape<'a> {
    pub kind: RouteKind,
    pub namespace: &'a str,
    /// The first match that is not a `PathPrefix` (index, type), which
    /// rules out `ReplacePrefixMatch`.
    pub non_prefix: Option<(usize, &'static str)>,
}

/// The settings field each filter type reads, as written in YAML.
const FIELDS: [(&str, &str); 6] = [
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("RequestRedirect", "requestRedirect"),
    ("URLRewrite", "urlRewrite"),
    ("RequestMirror", "requestMirror"),
    ("ExtensionRef", "extensionRef"),
];

impl RouteKind {
    /// The filter types the kind's specification defines, ExtensionRef
    /// aside (which the waypoint does not support).
    fn filter_types(self) -> &'static [&'static str] {
        match self {
            RouteKind::Http => &[
                "RequestHeaderModifier",
                "ResponseHeaderModifier",
                "RequestRedirect",
                "URLRewrite",
                "RequestMirror",
            ],
            RouteKind::Grpc => &[
                "RequestHeaderModifier",
                "ResponseHeaderModifier",
                "RequestMirror",
            ],
        }
    }
}

/// Compiles `written` (at `base`, e.g. `spec.rules[0].filters`), reporting
/// into `problems`; the result is only used when there were none.
pub(super) fn compile_filters(
    written: &[HttpRouteFilter],
    base: &str,
    shape: &RuleShape<'_>,
    problems: &mut Problems,
) -> Vec<Filter> {
    let mut filters = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, filter) in written.iter().enumerate() {
        let at = format!("{base}[{i}]");
        let kind = filter.kind.as_str();
        let known = shape.kind.filter_types().contains(&kind) || kind == "ExtensionRef";
        let Some(&(_, own_field)) = FIELDS.iter().find(|(k, _)| known && *k == kind) else {
            problems.push(
                format!("{at}.type"),
                format!(
                    "unknown filter type {kind:?} for a {}; use one of {}",
                    shape.kind,
                    shape.kind.filter_types().join(", ")
                ),
            );
            continue;
        };
        for (other_kind, other_field) in FIELDS {
            if other_field != own_field && is_set(filter, other_field) {
                problems.push(
                    format!("{at}.{other_field}"),
                    format!(
                        "{other_field} is set on a filter of type {kind}; remove it, or set type to {other_kind} in a filter of its own"
                    ),
                );
            }
        }
        // Repeating a type would make the result depend on an order the
        // specification does not define; mirrors to several backends are
        // the exception it allows.
        if kind != "RequestMirror" && seen.contains(&kind) {
            problems.push(
                format!("{at}.type"),
                format!("a second {kind} filter in the same list; merge it into the first"),
            );
        }
        let conflicting = match kind {
            "RequestRedirect" => Some("URLRewrite"),
            "URLRewrite" => Some("RequestRedirect"),
            _ => None,
        };
        if let Some(other) = conflicting.filter(|other| seen.contains(other)) {
            problems.push(
                format!("{at}.type"),
                format!(
                    "{kind} and {other} cannot be used together (a redirect answers before any rewrite could apply); keep one of them"
                ),
            );
        }
        seen.push(kind);
        let settings_at = format!("{at}.{own_field}");
        let missing =
            || format!("a filter of type {kind} needs its settings in {own_field}; add them");
        let compiled = match kind {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => {
                let settings = if kind == "RequestHeaderModifier" {
                    &filter.request_header_modifier
                } else {
                    &filter.response_header_modifier
                };
                settings.as_ref().map(|m| {
                    let edit = header_edit(m, &settings_at, problems);
                    if kind == "RequestHeaderModifier" {
                        Filter::RequestHeaders(edit)
                    } else {
                        Filter::ResponseHeaders(edit)
                    }
                })
            }
            "RequestRedirect" => filter.request_redirect.as_ref().map(|r| {
                if let Some(scheme) = r
                    .scheme
                    .as_deref()
                    .filter(|s| !matches!(*s, "http" | "https"))
                {
                    problems.push(
                        format!("{settings_at}.scheme"),
                        format!("scheme {scheme:?} is not supported; use \"http\" or \"https\""),
                    );
                }
                check_hostname(r.hostname.as_deref(), &settings_at, problems);
                if r.port == Some(0) {
                    problems.push(
                        format!("{settings_at}.port"),
                        "port 0 is not a port; use 1-65535 or leave it out".to_owned(),
                    );
                }
                let status = match r.status_code.unwrap_or(302) {
                    301 => StatusCode::MOVED_PERMANENTLY,
                    302 => StatusCode::FOUND,
                    other => {
                        problems.push(
                            format!("{settings_at}.statusCode"),
                            format!("statusCode {other} is not supported; use 301 or 302"),
                        );
                        StatusCode::FOUND
                    }
                };
                Filter::Redirect(Redirect {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    port: r.port,
                    path: r.path.as_ref().and_then(|p| {
                        path_change(p, &format!("{settings_at}.path"), shape, problems)
                    }),
                    status,
                })
            }),
            "URLRewrite" => filter.url_rewrite.as_ref().map(|r| {
                check_hostname(r.hostname.as_deref(), &settings_at, problems);
                Filter::Rewrite(Rewrite {
                    hostname: r.hostname.clone(),
                    path: r.path.as_ref().and_then(|p| {
                        path_change(p, &format!("{settings_at}.path"), shape, problems)
                    }),
                })
            }),
            "RequestMirror" if shape.kind == RouteKind::Grpc => {
                problems.push(
                    format!("{at}.type"),
                    "RequestMirror is not supported on GRPCRoutes by the nodemesh waypoint: it mirrors only requests without a body, and every gRPC call has one; remove the filter".to_owned(),
                );
                continue;
            }
            "RequestMirror" => filter.request_mirror.as_ref().map(|m| {
                let percent = m.percent.unwrap_or(100);
                if percent > 100 {
                    problems.push(
                        format!("{settings_at}.percent"),
                        format!("percent {percent} is more than all requests; use 0-100"),
                    );
                }
                let r = &m.backend_ref;
                let backend = backend(
                    (r.group.as_deref(), r.kind.as_deref()),
                    &r.name,
                    r.namespace.as_deref(),
                    r.port,
                    shape.namespace,
                    &format!("{settings_at}.backendRef"),
                    problems,
                );
                Filter::Mirror { backend, percent }
            }),
            _ => {
                problems.push(
                    format!("{at}.type"),
                    "ExtensionRef filters are not supported by the nodemesh waypoint; remove the filter".to_owned(),
                );
                continue;
            }
        };
        match compiled {
            Some(filter) => filters.push(filter),
            None => problems.push(settings_at, missing()),
        }
    }
    filters
}

/// A redirect's or rewrite's new hostname, which must be a precise one.
fn check_hostname(hostname: Option<&str>, settings_at: &str, problems: &mut Problems) {
    if let Some(message) = hostname.and_then(|host| hostname_problem(host, false)) {
        problems.push(format!("{settings_at}.hostname"), message);
    }
}

fn is_set(filter: &HttpRouteFilter, field: &str) -> bool {
    match field {
        "requestHeaderModifier" => filter.request_header_modifier.is_some(),
        "responseHeaderModifier" => filter.response_header_modifier.is_some(),
        "requestRedirect" => filter.request_redirect.is_some(),
        "urlRewrite" => filter.url_rewrite.is_some(),
        "requestMirror" => filter.request_mirror.is_some(),
        _ => filter.extension_ref.is_some(),
    }
}

fn header_edit(written: &HeaderModifier, at: &str, problems: &mut Problems) -> HeaderEdit {
    let mut pairs = |list: &[crate::state::gateway::HeaderValue], field: &str| {
        let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let name = header_name(&entry.name, &format!("{at}.{field}[{i}].name"), problems);
            let value = match HeaderValue::from_str(&entry.value) {
                Ok(value) => Some(value),
                Err(_) => {
                    problems.push(
                        format!("{at}.{field}[{i}].value"),
                        format!(
                            "header value {:?} has characters HTTP does not allow (control characters or non-ASCII); use visible ASCII, spaces and tabs",
                            entry.value
                        ),
                    );
                    None
                }
            };
            if let Some(name) = &name
                && out.iter().any(|(seen, _)| seen == name)
            {
                problems.push(
                    format!("{at}.{field}[{i}].name"),
                    format!("header {name} is listed twice in {field}; keep one entry"),
                );
            }
            if let (Some(name), Some(value)) = (name, value) {
                out.push((name, value));
            }
        }
        out
    };
    let set = pairs(&written.set, "set");
    let add = pairs(&written.add, "add");
    let remove = written
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, name)| header_name(name, &format!("{at}.remove[{i}]"), problems))
        .collect();
    HeaderEdit { set, add, remove }
}

/// A header name, or a problem at `at`.
pub(super) fn header_name(text: &str, at: &str, problems: &mut Problems) -> Option<HeaderName> {
    if text.is_empty() {
        problems.push(
            at.to_owned(),
            "header name is empty; write the header's name".to_owned(),
        );
        return None;
    }
    match HeaderName::from_bytes(text.as_bytes()) {
        Ok(name) => Some(name),
        Err(e) => {
            problems.push(
                at.to_owned(),
                format!(
                    "header name {text:?} is not a valid HTTP header name ({e}); use letters, digits and !#$%&'*+-.^_`|~"
                ),
            );
            None
        }
    }
}

fn path_change(
    written: &PathModifier,
    at: &str,
    shape: &RuleShape<'_>,
    problems: &mut Problems,
) -> Option<PathChange> {
    let (full, prefix) = (&written.replace_full_path, &written.replace_prefix_match);
    match written.kind.as_str() {
        "ReplaceFullPath" => {
            if prefix.is_some() {
                problems.push(
                    format!("{at}.replacePrefixMatch"),
                    "replacePrefixMatch is set with type ReplaceFullPath; remove it or set type to ReplacePrefixMatch".to_owned(),
                );
            }
            let Some(path) = full else {
                problems.push(
                    format!("{at}.replaceFullPath"),
                    "type ReplaceFullPath needs replaceFullPath; add the new path".to_owned(),
                );
                return None;
            };
            if !path.starts_with('/') {
                problems.push(
                    format!("{at}.replaceFullPath"),
                    format!("path {path:?} does not start with '/'; write an absolute path"),
                );
            }
            Some(PathChange::Full(path.clone()))
        }
        "ReplacePrefixMatch" => {
            if full.is_some() {
                problems.push(
                    format!("{at}.replaceFullPath"),
                    "replaceFullPath is set with type ReplacePrefixMatch; remove it or set type to ReplaceFullPath".to_owned(),
                );
            }
            let Some(replacement) = prefix else {
                problems.push(
                    format!("{at}.replacePrefixMatch"),
                    "type ReplacePrefixMatch needs replacePrefixMatch; add the new prefix (it may be empty)".to_owned(),
                );
                return None;
            };
            if !(replacement.is_empty() || replacement.starts_with('/')) {
                problems.push(
                    format!("{at}.replacePrefixMatch"),
                    format!("prefix {replacement:?} does not start with '/'; write an absolute path or leave it empty"),
                );
            }
            if let Some((index, kind)) = shape.non_prefix {
                problems.push(
                    format!("{at}.replacePrefixMatch"),
                    format!(
                        "ReplacePrefixMatch needs every match of the rule to be a PathPrefix, but matches[{index}] is {kind}; make that match a PathPrefix or use ReplaceFullPath"
                    ),
                );
            }
            Some(PathChange::Prefix(replacement.clone()))
        }
        other => {
            problems.push(
                format!("{at}.type"),
                format!("unknown path modifier type {other:?}; use ReplaceFullPath or ReplacePrefixMatch"),
            );
            None
        }
    }
}
