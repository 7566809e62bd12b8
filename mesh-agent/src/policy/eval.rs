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
//! Dry-run and AUDIT policies never change the decision; what each would
//! have done (for AUDIT: which rule matched) is reported alongside it.
use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{
    api::Action,
    compile::{
        Condition, HttpOperation, IdentityMatch, Operation, Policy, Rule, Source, principal,
    },
};
use crate::identity::SpiffeId;

/// What is known about a connection when it is judged.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The verified peer identity; `None` for plaintext.
    pub source: Option<&'a SpiffeId>,
    pub source_ip: IpAddr,
    /// The address connected to (a pod's, or a Service's at a waypoint).
    pub destination_ip: IpAddr,
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

/// What a dry-run policy would have done, or which rule of an AUDIT policy
/// matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRun {
    pub policy: String,
    pub rule: Option<usize>,
    pub would: Would,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Would {
    Allow,
    Deny,
    /// An AUDIT policy matched: the connection is marked, not judged.
    Audit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub decision: Decision,
    pub reason: Reason,
    pub dry_run: Vec<DryRun>,
}

impl Rule {
    pub fn matches(&self, conn: &Connection<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(conn)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(conn)))
            && self.when.iter().all(|c| match c {
                Condition::Source(s) => s.matches(conn),
                Condition::Operation(o) => o.matches(conn),
            })
    }
}

impl Source {
    fn matches(&self, conn: &Connection<'_>) -> bool {
        let principal = conn.source.map(principal);
        let source_ip = conn.source_ip.to_canonical();
        self.principals
            .matches(principal.as_deref(), |m, id| m.matches(id))
            && self
                .namespaces
                .matches(conn.source.map(SpiffeId::namespace), |m, ns| m.matches(ns))
            && [&self.ip_blocks, &self.remote_ip_blocks]
                .iter()
                .all(|blocks| blocks.matches(Some(&source_ip), |block, ip| block.contains(ip)))
    }
}

impl Operation {
    fn matches(&self, conn: &Connection<'_>) -> bool {
        let destination_ip = conn.destination_ip.to_canonical();
        self.ports.matches(Some(conn.port), |p, port| *p == port)
            && self
                .ips
                .matches(Some(&destination_ip), |block, ip| block.contains(ip))
            && self.http.matches(conn.request)
    }
}

impl HttpOperation {
    /// Without a request (a node agent judging a connection), only an
    /// operation with no HTTP conditions can match.
    fn matches(&self, request: Option<&Request<'_>>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(r) = request else {
            return false;
        };
        let pattern = |m: &IdentityMatch, v: &str| m.matches(v);
        self.methods
            .matches(Some(r.method), |m, method| m == method)
            && self.paths.matches(Some(r.path), pattern)
            && self.hosts.matches(Some(r.host), pattern)
            && self.headers.iter().all(|(name, values)| {
                let value = r.headers.get(name.as_str()).and_then(|v| v.to_str().ok());
                values.matches(value, pattern)
            })
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
        .filter_map(|p| {
            let rule = first_match(p, conn);
            let would = match (p.action, rule.is_some()) {
                (Action::Deny, true) | (Action::Allow, false) => Would::Deny,
                (Action::Deny, false) | (Action::Allow, true) => Would::Allow,
                (Action::Audit, true) => Would::Audit,
                // Istio audits only what an AUDIT rule matches.
                (Action::Audit, false) => return None,
            };
            Some(DryRun {
                policy: p.id(),
                rule,
                would,
            })
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
