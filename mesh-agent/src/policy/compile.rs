//! Turning a written policy into matchers, reporting every bad field.
//!
//! Both shapes (nodemesh's own and Istio's, see [`super::istio`]) compile to
//! the one [`Policy`] form the evaluator knows, with the structure of Istio's
//! AuthorizationPolicy: a rule matches when one of its sources (`from`), one
//! of its operations (`to`) and every condition (`when`) match; inside a
//! source or operation every field set must match, a field matching one of
//! its values and none of its `not` values.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use super::api::{Action, AuthorizationPolicy, TargetRef};
use crate::{identity::SpiffeId, state::PodInfo};

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A validated AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// Set for waypoint policies: what they attach to (no pod selection).
    pub targets: Vec<Target>,
    pub action: Action,
    /// Evaluated and recorded, never enforced (always so for AUDIT).
    pub dry_run: bool,
    pub rules: Vec<Rule>,
}

/// A waypoint policy's attachment, in the policy's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Service(String),
    Gateway(String),
}

/// `from` entries are alternatives, so are `to` entries; `when` entries
/// must all hold. An empty list does not constrain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// Who connects; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// SPIFFE IDs without `spiffe://` (Istio's principal form).
    pub principals: Match<IdentityMatch>,
    /// Namespaces of authenticated peers (from their SPIFFE ID).
    pub namespaces: Match<IdentityMatch>,
    pub ip_blocks: Match<IpNet>,
    /// Istio's original-client addresses (from X-Forwarded-For or the PROXY
    /// protocol). Nothing in front of a pod rewrites addresses here, so the
    /// original client is the peer: matched against the source address.
    pub remote_ip_blocks: Match<IpNet>,
}

/// What is connected to; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operation {
    pub ports: Match<u16>,
    /// Destination addresses (Istio's `when` key `destination.ip`).
    pub ips: Match<IpNet>,
    /// Judged only at a waypoint.
    pub http: HttpOperation,
}

/// The HTTP conditions of an operation; empty ones match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpOperation {
    /// Upper case.
    pub methods: Match<String>,
    pub paths: Match<IdentityMatch>,
    /// Lower case, without port.
    pub hosts: Match<IdentityMatch>,
    /// (lower-case header name, value patterns).
    pub headers: Vec<(String, Match<IdentityMatch>)>,
}

/// One `when` entry: a constraint on the source or on the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Source(Source),
    Operation(Operation),
}

/// Values of which one must match (none given: any value) and values of
/// which none may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<T> {
    pub any: Vec<T>,
    pub not: Vec<T>,
}

impl<T> Default for Match<T> {
    fn default() -> Self {
        Self {
            any: Vec::new(),
            not: Vec::new(),
        }
    }
}

impl<T> Match<T> {
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.not.is_empty()
    }

    /// An unknown value (`None`: plaintext has no principal) matches no
    /// value, so it fails `any` and passes `not` — which is why Istio's
    /// `notPrincipals: ["*"]` picks out plaintext.
    pub fn matches<V: Copy>(&self, value: Option<V>, hit: impl Fn(&T, V) -> bool) -> bool {
        let found = |list: &[T]| value.is_some_and(|v| list.iter().any(|t| hit(t, v)));
        (self.any.is_empty() || found(&self.any)) && !found(&self.not)
    }
}

impl HttpOperation {
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
            && self.paths.is_empty()
            && self.hosts.is_empty()
            && self.headers.is_empty()
    }
}

impl Rule {
    /// Whether only a waypoint, which sees requests, can judge this rule.
    pub fn needs_request(&self) -> bool {
        let http = |o: &Operation| !o.http.is_empty();
        self.to.iter().any(http)
            || self.when.iter().any(|c| match c {
                Condition::Operation(o) => http(o),
                Condition::Source(_) => false,
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

/// A bad field: (path, what is wrong and what to do).
pub type FieldError = (String, String);

impl std::fmt::Display for IdentityMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => write!(f, "*"),
            Self::Exact(id) => write!(f, "{id}"),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// `name [a, b] notName [c]`, or nothing for an unset field.
fn describe<T: std::fmt::Display>(parts: &mut Vec<String>, name: &str, m: &Match<T>) {
    let list = |items: &[T]| {
        let items: Vec<String> = items.iter().map(ToString::to_string).collect();
        format!("[{}]", items.join(", "))
    };
    if !m.any.is_empty() {
        parts.push(format!("{name} {}", list(&m.any)));
    }
    if !m.not.is_empty() {
        parts.push(format!("not {name} {}", list(&m.not)));
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        describe(&mut parts, "principals", &self.principals);
        describe(&mut parts, "namespaces", &self.namespaces);
        describe(&mut parts, "ipBlocks", &self.ip_blocks);
        describe(&mut parts, "remoteIpBlocks", &self.remote_ip_blocks);
        write!(f, "{}", parts.join(" "))
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        describe(&mut parts, "ports", &self.ports);
        describe(&mut parts, "destination ips", &self.ips);
        describe(&mut parts, "methods", &self.http.methods);
        describe(&mut parts, "paths", &self.http.paths);
        describe(&mut parts, "hosts", &self.http.hosts);
        for (name, values) in &self.http.headers {
            describe(&mut parts, &format!("header {name}"), values);
        }
        write!(f, "{}", parts.join(" "))
    }
}

/// A rule in words: `from <source> or <source> to <operation> when <…>`.
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let alternatives = |items: Vec<String>| {
            if items.iter().any(String::is_empty) {
                String::new()
            } else {
                items.join(" or ")
            }
        };
        let from = alternatives(self.from.iter().map(ToString::to_string).collect());
        let to = alternatives(self.to.iter().map(ToString::to_string).collect());
        let from = if from.is_empty() {
            "anyone".into()
        } else {
            from
        };
        let to = if to.is_empty() { "anything".into() } else { to };
        write!(f, "from {from} to {to}")?;
        for c in &self.when {
            match c {
                Condition::Source(s) => write!(f, " when {s}")?,
                Condition::Operation(o) => write!(f, " when {o}")?,
            }
        }
        Ok(())
    }
}

impl IdentityMatch {
    /// A principal pattern: a SPIFFE ID with or without `spiffe://` (Istio
    /// writes `cluster.local/ns/NS/sa/SA`), or `prefix*`, `*suffix`, `*`.
    /// Kept without the scheme, the form [`principal`] matches against.
    pub fn principal(field: String, text: &str) -> Result<Self, FieldError> {
        let pattern = Self::pattern(text.strip_prefix("spiffe://").unwrap_or(text));
        if let Self::Exact(id) = &pattern {
            SpiffeId::parse(&format!("spiffe://{id}")).map_err(|e| (field, e.to_string()))?;
        }
        Ok(pattern)
    }

    /// A pattern for a path, host or header value (no SPIFFE check).
    pub fn pattern(text: &str) -> Self {
        if text == "*" {
            Self::Any
        } else if let Some(prefix) = text.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else {
            Self::Exact(text.to_owned())
        }
    }

    pub fn matches(&self, id: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(want) => id == want,
            Self::Prefix(p) => id.starts_with(p.as_str()),
            Self::Suffix(s) => id.ends_with(s.as_str()),
        }
    }
}

/// The principal of a peer as policies match it: its SPIFFE ID without the
/// scheme (`cluster.local/ns/shop/sa/frontend`).
pub fn principal(id: &SpiffeId) -> String {
    format!(
        "{}/ns/{}/sa/{}",
        id.trust_domain(),
        id.namespace(),
        id.service_account()
    )
}

/// Collects parsed values, or the errors of those that do not parse.
fn each<T, S>(
    field: &str,
    texts: &[S],
    parse: impl Fn(String, &S) -> Result<T, FieldError>,
    errors: &mut Vec<FieldError>,
) -> Vec<T> {
    texts
        .iter()
        .enumerate()
        .filter_map(|(j, t)| {
            parse(format!("{field}[{j}]"), t)
                .map_err(|e| errors.push(e))
                .ok()
        })
        .collect()
}

/// Parsed lists `field` and `notField` (`not` + the capitalised name).
pub fn both<T, S>(
    at: &str,
    field: &str,
    (any, not): (&[S], &[S]),
    parse: impl Fn(String, &S) -> Result<T, FieldError> + Copy,
    errors: &mut Vec<FieldError>,
) -> Match<T> {
    let mut capital = field.to_owned();
    capital[..1].make_ascii_uppercase();
    Match {
        any: each(&format!("{at}.{field}"), any, parse, errors),
        not: each(&format!("{at}.not{capital}"), not, parse, errors),
    }
}

// The parsers take `&impl AsRef<str>` so they fit [`both`] over `String`
// lists as plain function names.
pub fn principal_of(field: String, text: &impl AsRef<str>) -> Result<IdentityMatch, FieldError> {
    IdentityMatch::principal(field, text.as_ref())
}

/// An address or CIDR block.
pub fn ip_block_of(field: String, text: &String) -> Result<IpNet, FieldError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            (
                field,
                format!("{text:?} is not an address or CIDR block (e.g. 10.1.0.0/16)"),
            )
        })
}

pub fn port_of(field: String, port: u32) -> Result<u16, FieldError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| (field, format!("{port} is not a port (1-65535)")))
}

pub fn method_of(field: String, m: &String) -> Result<String, FieldError> {
    let upper = m.to_ascii_uppercase();
    if METHODS.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err((
            field,
            format!(
                "{m:?} is not an HTTP method (one of {})",
                METHODS.join(", ")
            ),
        ))
    }
}

pub fn path_of(field: String, p: &String) -> Result<IdentityMatch, FieldError> {
    if p.starts_with('/') || p.starts_with('*') {
        Ok(IdentityMatch::pattern(p))
    } else {
        Err((
            field,
            format!("{p:?}: a path starts with / (or is a pattern like *.html or *)"),
        ))
    }
}

pub fn host_of(_: String, h: &impl AsRef<str>) -> Result<IdentityMatch, FieldError> {
    Ok(IdentityMatch::pattern(&h.as_ref().to_ascii_lowercase()))
}

/// A namespace or header value pattern.
pub fn value_of(_: String, v: &impl AsRef<str>) -> Result<IdentityMatch, FieldError> {
    Ok(IdentityMatch::pattern(v.as_ref()))
}

/// The header name in a `request.headers[<name>]` key, lower case.
pub fn header_key(key: &str) -> Option<String> {
    key.strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
        .filter(|k| http::HeaderName::try_from(*k).is_ok())
        .map(str::to_ascii_lowercase)
}

/// The parts both shapes share once their rules are compiled.
pub struct Common<'a> {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub selector: Option<BTreeMap<String, String>>,
    pub target_refs: &'a [TargetRef],
    pub action: Action,
    pub dry_run: bool,
}

impl Policy {
    /// Validates a written `nodemesh.io/v1alpha1` policy; every problem is
    /// reported at once.
    pub fn compile(api: AuthorizationPolicy) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for (i, rule) in api.spec.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            let mut compiled = Rule::default();
            if let Some(from) = &rule.from {
                let at = format!("{at}.from");
                let none: &[String] = &[];
                compiled.from.push(Source {
                    principals: both(
                        &at,
                        "identities",
                        (&from.identities, none),
                        principal_of,
                        &mut errors,
                    ),
                    namespaces: both(
                        &at,
                        "namespaces",
                        (&from.namespaces, none),
                        value_of,
                        &mut errors,
                    ),
                    ip_blocks: both(
                        &at,
                        "ipBlocks",
                        (&from.ip_blocks, none),
                        ip_block_of,
                        &mut errors,
                    ),
                    remote_ip_blocks: Match::default(),
                });
            }
            if let Some(to) = &rule.to {
                let at = format!("{at}.to");
                let none: &[String] = &[];
                compiled.to.push(Operation {
                    ports: both(
                        &at,
                        "ports",
                        (&to.ports, &[]),
                        |f, p| port_of(f, *p),
                        &mut errors,
                    ),
                    ips: Match::default(),
                    http: HttpOperation {
                        methods: both(&at, "methods", (&to.methods, none), method_of, &mut errors),
                        paths: both(&at, "paths", (&to.paths, none), path_of, &mut errors),
                        hosts: both(&at, "hosts", (&to.hosts, none), host_of, &mut errors),
                        headers: Vec::new(),
                    },
                });
            }
            for (j, c) in rule.when.iter().enumerate() {
                let at = format!("{at}.when[{j}]");
                let Some(name) = header_key(&c.key) else {
                    errors.push((
                        format!("{at}.key"),
                        format!(
                            "{:?}: only request.headers[<name>] is supported in `when` (source \
                             and destination conditions go in from/to)",
                            c.key
                        ),
                    ));
                    continue;
                };
                let values = header_values(&at, &c.values, &c.not_values, &mut errors);
                compiled.when.push(Condition::Operation(Operation {
                    ips: Match::default(),
                    http: HttpOperation {
                        headers: vec![(name, values)],
                        ..HttpOperation::default()
                    },
                    ..Operation::default()
                }));
            }
            if compiled.needs_request() && api.spec.target_refs.is_empty() {
                errors.push((
                    at,
                    "methods, paths, hosts and when are HTTP: only a waypoint can judge them. \
                     Attach the policy to a Service that uses a waypoint with `targetRefs` \
                     (instead of `selector`), or remove these fields"
                        .into(),
                ));
            }
            rules.push(compiled);
        }
        let common = Common {
            namespace: api.metadata.namespace,
            name: api.metadata.name,
            selector: api.spec.selector.map(|s| s.match_labels),
            target_refs: &api.spec.target_refs,
            action: api.spec.action,
            dry_run: api.spec.dry_run,
        };
        Self::assemble(common, rules, errors)
    }

    /// Checks what both shapes share and builds the policy, or returns every
    /// error found, those of the rules (`errors`) first.
    pub fn assemble(
        common: Common<'_>,
        rules: Vec<Rule>,
        mut errors: Vec<FieldError>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut targets = Vec::new();
        for (i, t) in common.target_refs.iter().enumerate() {
            match (t.group.as_str(), t.kind.as_str()) {
                ("" | "core", "Service") => targets.push(Target::Service(t.name.clone())),
                ("gateway.networking.k8s.io", "Gateway") => {
                    targets.push(Target::Gateway(t.name.clone()));
                }
                (group, kind) => errors.push((
                    format!("spec.targetRefs[{i}]"),
                    format!(
                        "group {group:?} kind {kind:?} cannot be a target: use kind Service \
                         (group \"\") or kind Gateway (group gateway.networking.k8s.io)"
                    ),
                )),
            }
        }
        if !targets.is_empty() && common.selector.is_some() {
            errors.push((
                "spec.selector".into(),
                "a policy has either a selector (pods, judged by their node agent) or targetRefs \
                 (requests, judged by a waypoint), not both"
                    .into(),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            namespace: common.namespace.unwrap_or_else(|| "default".into()),
            name: common.name.unwrap_or_default(),
            selector: common.selector.unwrap_or_default(),
            targets,
            action: common.action,
            // An AUDIT policy never decides: it only records what matched.
            dry_run: common.dry_run || common.action == Action::Audit,
            rules,
        })
    }

    /// `namespace/name`, as verdicts and flow records name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this policy applies to `pod` (waypoint policies apply to
    /// requests, never to pods). A policy in a root namespace applies to
    /// the pods of every namespace, as in Istio.
    pub fn selects(&self, pod: &PodInfo) -> bool {
        self.targets.is_empty()
            && (pod.namespace == self.namespace
                || super::MESH_ROOTS.contains(&self.namespace.as_str()))
            && self
                .selector
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// The value patterns of a header condition at `at` (a `when` entry).
pub fn header_values(
    at: &str,
    values: &[String],
    not_values: &[String],
    errors: &mut Vec<FieldError>,
) -> Match<IdentityMatch> {
    if values.is_empty() && not_values.is_empty() {
        errors.push((at.to_owned(), "give values or notValues".into()));
    }
    both(at, "values", (values, not_values), value_of, errors)
}
