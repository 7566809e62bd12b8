//! One connection, one decision — with the rule that made it.
//!
//! Semantics follow Istio's AuthorizationPolicy, so operators' intuition
//! carries over:
//! 1. any matching rule of an enforced DENY policy denies;
//! 2. else, if no enforced ALLOW policy selects the pod, the connection is
//!    allowed;
//! 3. else it is allowed only if a rule of one of those ALLOW policies
//!    matches.
//!
//! Dry-run policies never change the decision; what each would have done
//! is reported alongside it.
use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{
    api::Action,
    compile::{HttpRule, IdentityMatch, Policy, Rule},
};
use crate::identity::SpiffeId;

/// What is known about a connection when it is judged.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The verified peer identity; `None` for plaintext.
    pub source: Option<&'a SpiffeId>,
    pub source_ip: IpAddr,
    pub port: u16,
    /// The HTTP request, when a waypoint judges one.
    pub request: Option<&'a Request<'a>>,
}

/// What a waypoint knows of an HTTP request when it judges it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Lower case, without port.
    pub host: &'a str,
    /// Without the query.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

/// Why the decision was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// No enforced ALLOW policy selects the pod (and no DENY matched).
    NoAllowPolicy,
    AllowedBy {
        policy: String,
        rule: usize,
    },
    DeniedBy {
        policy: String,
        rule: usize,
    },
    /// ALLOW policies select the pod but none of their rules matched.
    NoAllowRuleMatched {
        policies: Vec<String>,
    },
}

/// What a dry-run policy would have done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRun {
    pub policy: String,
    pub rule: Option<usize>,
    pub would: Decision,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub decision: Decision,
    pub reason: Reason,
    pub dry_run: Vec<DryRun>,
}

impl Rule {
    pub fn matches(&self, conn: &Connection<'_>) -> bool {
        let id = conn.source.map(ToString::to_string);
        let identities = self.identities.is_empty()
            || id
                .as_deref()
                .is_some_and(|id| self.identities.iter().any(|m| m.matches(id)));
        let namespaces = self.namespaces.is_empty()
            || conn
                .source
                .is_some_and(|s| self.namespaces.iter().any(|n| n == s.namespace()));
        let source_ip = conn.source_ip.to_canonical();
        let ip_blocks =
            self.ip_blocks.is_empty() || self.ip_blocks.iter().any(|b| b.contains(&source_ip));
        let ports = self.ports.is_empty() || self.ports.contains(&conn.port);
        identities && namespaces && ip_blocks && ports && self.http.matches(conn.request)
    }
}

impl HttpRule {
    /// Without a request (a node agent judging a connection), only a rule
    /// with no HTTP conditions can match.
    fn matches(&self, request: Option<&Request<'_>>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(r) = request else {
            return false;
        };
        let any = |patterns: &[IdentityMatch], value: &str| {
            patterns.is_empty() || patterns.iter().any(|p| p.matches(value))
        };
        let headers = self.headers.iter().all(|(name, values, not)| {
            let value = r.headers.get(name.as_str()).and_then(|v| v.to_str().ok());
            let yes =
                values.is_empty() || value.is_some_and(|v| values.iter().any(|p| p.matches(v)));
            let no = value.is_some_and(|v| not.iter().any(|p| p.matches(v)));
            yes && !no
        });
        (self.methods.is_empty() || self.methods.iter().any(|m| m == r.method))
            && any(&self.paths, r.path)
            && any(&self.hosts, r.host)
            && headers
    }
}

fn first_match(policy: &Policy, conn: &Connection<'_>) -> Option<usize> {
    policy.rules.iter().position(|r| r.matches(conn))
}

/// Judges `conn` against the policies that select its destination pod.
pub fn evaluate(policies: &[&Policy], conn: &Connection<'_>) -> Verdict {
    let dry_run = policies
        .iter()
        .filter(|p| p.dry_run)
        .map(|p| {
            let rule = first_match(p, conn);
            let would = match (p.action, rule.is_some()) {
                (Action::Deny, true) | (Action::Allow, false) => Decision::Deny,
                (Action::Deny, false) | (Action::Allow, true) => Decision::Allow,
            };
            DryRun {
                policy: p.id(),
                rule,
                would,
            }
        })
        .collect();
    let enforced = || policies.iter().filter(|p| !p.dry_run);
    let verdict = |decision, reason| Verdict {
        decision,
        reason,
        dry_run: Vec::new(),
    };
    let mut result = None;
    for p in enforced().filter(|p| p.action == Action::Deny) {
        if let Some(rule) = first_match(p, conn) {
            result = Some(verdict(
                Decision::Deny,
                Reason::DeniedBy {
                    policy: p.id(),
                    rule,
                },
            ));
            break;
        }
    }
    let allows: Vec<&&Policy> = enforced().filter(|p| p.action == Action::Allow).collect();
    let mut result = result.unwrap_or_else(|| {
        if allows.is_empty() {
            return verdict(Decision::Allow, Reason::NoAllowPolicy);
        }
        allows
            .iter()
            .find_map(|p| first_match(p, conn).map(|rule| (p.id(), rule)))
            .map_or_else(
                || {
                    verdict(
                        Decision::Deny,
                        Reason::NoAllowRuleMatched {
                            policies: allows.iter().map(|p| p.id()).collect(),
                        },
                    )
                },
                |(policy, rule)| verdict(Decision::Allow, Reason::AllowedBy { policy, rule }),
            )
    });
    result.dry_run = dry_run;
    result
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Reason::NoAllowPolicy => write!(f, "allowed: no ALLOW policy selects the pod"),
            Reason::AllowedBy { policy, rule } => write!(f, "allowed by {policy} rule {rule}"),
            Reason::DeniedBy { policy, rule } => write!(f, "denied by {policy} rule {rule} (DENY)"),
            Reason::NoAllowRuleMatched { policies } => write!(
                f,
                "denied: no rule of the ALLOW policies {} matched",
                policies.join(", ")
            ),
        }
    }
}
