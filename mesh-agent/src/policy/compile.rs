//! Turning a written policy into matchers, reporting every bad field.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use super::api::{Action, AuthorizationPolicy};
use crate::{identity::SpiffeId, state::PodInfo};

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The HTTP part of rule `i`, reporting bad fields into `errors`.
fn http_rule(
    i: usize,
    to: &super::api::ToSpec,
    when: &[super::api::ConditionSpec],
    errors: &mut Vec<FieldError>,
) -> HttpRule {
    let mut http = HttpRule::default();
    for (j, m) in to.methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        if METHODS.contains(&upper.as_str()) {
            http.methods.push(upper);
        } else {
            errors.push((
                format!("spec.rules[{i}].to.methods[{j}]"),
                format!(
                    "{m:?} is not an HTTP method (one of {})",
                    METHODS.join(", ")
                ),
            ));
        }
    }
    for (j, p) in to.paths.iter().enumerate() {
        if p.starts_with('/') || p.starts_with('*') {
            http.paths.push(IdentityMatch::pattern(p));
        } else {
            errors.push((
                format!("spec.rules[{i}].to.paths[{j}]"),
                format!("{p:?}: a path starts with / (or is a pattern like *.html or *)"),
            ));
        }
    }
    http.hosts = to
        .hosts
        .iter()
        .map(|h| IdentityMatch::pattern(&h.to_ascii_lowercase()))
        .collect();
    for (j, c) in when.iter().enumerate() {
        let name = c
            .key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
            .filter(|k| http::HeaderName::try_from(*k).is_ok());
        let Some(name) = name else {
            errors.push((
                format!("spec.rules[{i}].when[{j}].key"),
                format!(
                    "{:?}: only request.headers[<name>] is supported in `when` (source and \
                     destination conditions go in from/to)",
                    c.key
                ),
            ));
            continue;
        };
        if c.values.is_empty() && c.not_values.is_empty() {
            errors.push((
                format!("spec.rules[{i}].when[{j}]"),
                "give values or notValues".into(),
            ));
        }
        let patterns = |v: &[String]| v.iter().map(|t| IdentityMatch::pattern(t)).collect();
        http.headers.push((
            name.to_ascii_lowercase(),
            patterns(&c.values),
            patterns(&c.not_values),
        ));
    }
    http
}

/// A validated AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// Set for waypoint policies: what they attach to (no pod selection).
    pub targets: Vec<Target>,
    pub action: Action,
    pub dry_run: bool,
    pub rules: Vec<Rule>,
}

/// A waypoint policy's attachment, in the policy's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Service(String),
    Gateway(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub identities: Vec<IdentityMatch>,
    pub namespaces: Vec<String>,
    pub ip_blocks: Vec<IpNet>,
    pub ports: Vec<u16>,
    /// HTTP parts, judged only at a waypoint.
    pub http: HttpRule,
}

/// The HTTP conditions of a rule; empty ones match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRule {
    /// Upper case.
    pub methods: Vec<String>,
    pub paths: Vec<IdentityMatch>,
    pub hosts: Vec<IdentityMatch>,
    /// (lower-case header name, values, notValues).
    pub headers: Vec<(String, Vec<IdentityMatch>, Vec<IdentityMatch>)>,
}

impl HttpRule {
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
            && self.paths.is_empty()
            && self.hosts.is_empty()
            && self.headers.is_empty()
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

/// A rule in words: `from identities [..] namespaces [..] ipBlocks [..] to ports [..]`.
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |items: Vec<String>| format!("[{}]", items.join(", "));
        let mut parts = Vec::new();
        if !self.identities.is_empty() {
            parts.push(format!(
                "identities {}",
                list(self.identities.iter().map(ToString::to_string).collect())
            ));
        }
        if !self.namespaces.is_empty() {
            parts.push(format!("namespaces {}", list(self.namespaces.clone())));
        }
        if !self.ip_blocks.is_empty() {
            parts.push(format!(
                "ipBlocks {}",
                list(self.ip_blocks.iter().map(ToString::to_string).collect())
            ));
        }
        let h = &self.http;
        let patterns = |p: &[IdentityMatch]| list(p.iter().map(ToString::to_string).collect());
        if !h.methods.is_empty() {
            parts.push(format!("methods {}", list(h.methods.clone())));
        }
        if !h.paths.is_empty() {
            parts.push(format!("paths {}", patterns(&h.paths)));
        }
        if !h.hosts.is_empty() {
            parts.push(format!("hosts {}", patterns(&h.hosts)));
        }
        for (name, values, not) in &h.headers {
            parts.push(format!(
                "when header {name} in {} not in {}",
                patterns(values),
                patterns(not)
            ));
        }
        let from = if parts.is_empty() {
            "from anyone".to_owned()
        } else {
            format!("from {}", parts.join(" "))
        };
        if self.ports.is_empty() {
            write!(f, "{from} to any port")
        } else {
            write!(
                f,
                "{from} to ports {}",
                list(self.ports.iter().map(ToString::to_string).collect())
            )
        }
    }
}

impl IdentityMatch {
    fn parse(field: String, text: &str) -> Result<Self, FieldError> {
        let pattern = Self::pattern(text);
        if let Self::Exact(id) = &pattern {
            SpiffeId::parse(id).map_err(|e| (field, e.to_string()))?;
        }
        Ok(pattern)
    }

    /// A pattern for a path, host or header value (no SPIFFE check).
    fn pattern(text: &str) -> Self {
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

impl Policy {
    /// Validates a written policy; every problem is reported at once.
    pub fn compile(api: AuthorizationPolicy) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for (i, rule) in api.spec.rules.iter().enumerate() {
            let mut compiled = Rule::default();
            let from = rule.from.clone().unwrap_or_default();
            for (j, text) in from.identities.iter().enumerate() {
                match IdentityMatch::parse(format!("spec.rules[{i}].from.identities[{j}]"), text) {
                    Ok(m) => compiled.identities.push(m),
                    Err(e) => errors.push(e),
                }
            }
            compiled.namespaces = from.namespaces.clone();
            for (j, text) in from.ip_blocks.iter().enumerate() {
                let parsed = text
                    .parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(net) => compiled.ip_blocks.push(net.trunc()),
                    Err(_) => errors.push((
                        format!("spec.rules[{i}].from.ipBlocks[{j}]"),
                        format!("{text:?} is not an address or CIDR block (e.g. 10.1.0.0/16)"),
                    )),
                }
            }
            for (j, port) in rule.to.clone().unwrap_or_default().ports.iter().enumerate() {
                match u16::try_from(*port).ok().filter(|p| *p != 0) {
                    Some(p) => compiled.ports.push(p),
                    None => errors.push((
                        format!("spec.rules[{i}].to.ports[{j}]"),
                        format!("{port} is not a port (1-65535)"),
                    )),
                }
            }
            let to = rule.to.clone().unwrap_or_default();
            compiled.http = http_rule(i, &to, &rule.when, &mut errors);
            if !compiled.http.is_empty() && api.spec.target_refs.is_empty() {
                errors.push((
                    format!("spec.rules[{i}]"),
                    "methods, paths, hosts and when are HTTP: only a waypoint can judge them. \
                     Attach the policy to a Service that uses a waypoint with `targetRefs` \
                     (instead of `selector`), or remove these fields"
                        .into(),
                ));
            }
            rules.push(compiled);
        }
        let mut targets = Vec::new();
        for (i, t) in api.spec.target_refs.iter().enumerate() {
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
        if !targets.is_empty() && api.spec.selector.is_some() {
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
            namespace: api.metadata.namespace.unwrap_or_else(|| "default".into()),
            name: api.metadata.name.unwrap_or_default(),
            selector: api
                .spec
                .selector
                .map(|s| s.match_labels)
                .unwrap_or_default(),
            targets,
            action: api.spec.action,
            dry_run: api.spec.dry_run,
            rules,
        })
    }

    /// `namespace/name`, as verdicts and flow records name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this policy applies to `pod` (waypoint policies apply to
    /// requests, never to pods).
    pub fn selects(&self, pod: &PodInfo) -> bool {
        self.targets.is_empty()
            && pod.namespace == self.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}
