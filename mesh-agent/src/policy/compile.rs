//! Turning a written policy into matchers, reporting every bad field.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use super::api::{Action, AuthorizationPolicy};
use crate::{identity::SpiffeId, state::PodInfo};

/// A validated AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub action: Action,
    pub dry_run: bool,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub identities: Vec<IdentityMatch>,
    pub namespaces: Vec<String>,
    pub ip_blocks: Vec<IpNet>,
    pub ports: Vec<u16>,
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
        Ok(if text == "*" {
            Self::Any
        } else if let Some(prefix) = text.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else {
            SpiffeId::parse(text).map_err(|e| (field, e.to_string()))?;
            Self::Exact(text.to_owned())
        })
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
            rules.push(compiled);
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
            action: api.spec.action,
            dry_run: api.spec.dry_run,
            rules,
        })
    }

    /// `namespace/name`, as verdicts and flow records name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this policy applies to `pod`.
    pub fn selects(&self, pod: &PodInfo) -> bool {
        pod.namespace == self.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}
