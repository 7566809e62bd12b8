//! Istio's `security.istio.io` AuthorizationPolicy and PeerAuthentication,
//! translated into the compiled [`Policy`] and [`PeerAuth`] the one
//! evaluator judges.
//!
//! What the translation relies on, from Istio's reference pages
//! (authorization-policy, conditions, peer_authentication):
//! - a policy's `from` entries are alternatives, so are its `to` entries;
//!   `when` entries must all hold; inside a source or an operation every
//!   field set must match, a list by any of its values, and a `not*` list by
//!   none of them;
//! - ALLOW with no rules (absent or `[]`) matches nothing, so it denies every
//!   selected workload; `rules: [{}]` matches everything;
//! - principals are `<trust domain>/ns/<ns>/sa/<sa>`, with exact, `prefix*`,
//!   `*suffix` and `*` matches, as are namespaces, hosts, paths and header
//!   values; ports are strings;
//! - AUDIT records what matched and never decides; CUSTOM delegates to an
//!   external authorizer;
//! - PeerAuthentication: a workload selector beats the namespace-wide object,
//!   which beats the mesh-wide one in the root namespace (where a selector is
//!   ignored); UNSET inherits. In ambient mode (a node proxy, as here) DISABLE
//!   is not available: traffic between meshed pods is always mTLS, so DISABLE
//!   can only mean "accept plaintext", which is PERMISSIVE.
//!
//! Nothing is dropped silently: a field nodemesh cannot honour is an error
//! naming it and what to do instead.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::{
    ISTIO_ROOT_NAMESPACE,
    // The selector and `when` entries have the same shape in both APIs.
    api::{Action, ConditionSpec, Mode, Selector, TargetRef},
    compile::{
        Common, Condition, FieldError, HttpOperation, Operation, Policy, Rule, Source, both,
        header_key, header_values, host_of, ip_block_of, method_of, path_of, port_of, principal_of,
        value_of,
    },
    peer_auth::PeerAuth,
};

/// Istio's API group; `v1` and `v1beta1` share one schema.
pub const API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Istio's annotation that makes a policy dry-run.
const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

const NEEDS_L7: &str = "needs L7: the node agent judges connections, not HTTP requests; attach the \
                        policy to a waypoint with targetRefs (instead of selector), or remove the \
                        field";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub action: IstioAction,
    /// Only meaningful for CUSTOM, which is refused; read so the error is
    /// about CUSTOM rather than an unknown field.
    #[serde(default)]
    pub provider: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub rules: Vec<IstioRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum IstioAction {
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    #[serde(rename = "AUDIT")]
    Audit,
    #[serde(rename = "CUSTOM")]
    Custom,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioRule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    #[serde(default)]
    pub source: IstioSource,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioSource {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT principals: read to be refused by name.
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub operation: IstioOperation,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioOperation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Strings in Istio (`"8080"`).
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

fn port_text(field: String, text: &String) -> Result<u16, FieldError> {
    let number = text
        .parse::<u32>()
        .map_err(|_| (field.clone(), format!("{text:?} is not a port number")))?;
    port_of(field, number)
}

fn source(at: &str, s: &IstioSource, errors: &mut Vec<FieldError>) -> Source {
    for (field, list) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
    ] {
        if !list.is_empty() {
            errors.push((
                format!("{at}.{field}"),
                "JWT request principals need RequestAuthentication, which nodemesh does not do: \
                 match the peer's mTLS identity with principals instead"
                    .into(),
            ));
        }
    }
    Source {
        principals: both(
            at,
            "principals",
            (&s.principals, &s.not_principals),
            principal_of,
            errors,
        ),
        namespaces: both(
            at,
            "namespaces",
            (&s.namespaces, &s.not_namespaces),
            value_of,
            errors,
        ),
        ip_blocks: both(
            at,
            "ipBlocks",
            (&s.ip_blocks, &s.not_ip_blocks),
            ip_block_of,
            errors,
        ),
        remote_ip_blocks: both(
            at,
            "remoteIpBlocks",
            (&s.remote_ip_blocks, &s.not_remote_ip_blocks),
            ip_block_of,
            errors,
        ),
    }
}

/// `l4_only`: a selector policy, whose HTTP fields are errors.
fn operation(
    at: &str,
    o: &IstioOperation,
    l4_only: bool,
    errors: &mut Vec<FieldError>,
) -> Operation {
    if l4_only {
        for (field, list) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            if !list.is_empty() {
                errors.push((format!("{at}.{field}"), NEEDS_L7.into()));
            }
        }
    }
    Operation {
        ports: both(at, "ports", (&o.ports, &o.not_ports), port_text, errors),
        // Istio's operation has no addresses: `when destination.ip` only.
        ips: Default::default(),
        http: HttpOperation {
            methods: both(
                at,
                "methods",
                (&o.methods, &o.not_methods),
                method_of,
                errors,
            ),
            paths: both(at, "paths", (&o.paths, &o.not_paths), path_of, errors),
            hosts: both(at, "hosts", (&o.hosts, &o.not_hosts), host_of, errors),
            headers: Vec::new(),
        },
    }
}

/// One `when` entry as a source or operation constraint.
fn condition(
    at: &str,
    c: &ConditionSpec,
    l4_only: bool,
    errors: &mut Vec<FieldError>,
) -> Option<Condition> {
    if c.values.is_empty() && c.not_values.is_empty() {
        errors.push((at.to_owned(), "give values or notValues".into()));
        return None;
    }
    let lists = (c.values.as_slice(), c.not_values.as_slice());
    let source = |s: Source| Some(Condition::Source(s));
    match c.key.as_str() {
        "source.ip" => source(Source {
            ip_blocks: both(at, "values", lists, ip_block_of, errors),
            ..Source::default()
        }),
        "remote.ip" => source(Source {
            remote_ip_blocks: both(at, "values", lists, ip_block_of, errors),
            ..Source::default()
        }),
        "source.namespace" => source(Source {
            namespaces: both(at, "values", lists, value_of, errors),
            ..Source::default()
        }),
        "source.principal" => source(Source {
            principals: both(at, "values", lists, principal_of, errors),
            ..Source::default()
        }),
        "destination.port" => Some(Condition::Operation(Operation {
            ports: both(at, "values", lists, port_text, errors),
            ..Operation::default()
        })),
        "destination.ip" => Some(Condition::Operation(Operation {
            ips: both(at, "values", lists, ip_block_of, errors),
            ..Operation::default()
        })),
        key => match header_key(key) {
            Some(_) if l4_only => {
                errors.push((format!("{at}.key"), NEEDS_L7.into()));
                None
            }
            Some(name) => Some(Condition::Operation(Operation {
                http: HttpOperation {
                    headers: vec![(name, header_values(at, &c.values, &c.not_values, errors))],
                    ..HttpOperation::default()
                },
                ..Operation::default()
            })),
            None => {
                errors.push((
                    format!("{at}.key"),
                    format!(
                        "{key:?} is not supported: use source.ip, remote.ip, source.namespace, \
                         source.principal, destination.port, or (waypoint policies) \
                         request.headers[<name>]"
                    ),
                ));
                None
            }
        },
    }
}

/// Translates an Istio AuthorizationPolicy; every problem is reported at
/// once, with its field path.
pub fn authorization(api: AuthorizationPolicy) -> Result<Policy, Vec<FieldError>> {
    let mut errors = Vec::new();
    let spec = &api.spec;
    let l4_only = spec.target_refs.is_empty();
    let action = match spec.action {
        IstioAction::Allow => Action::Allow,
        IstioAction::Deny => Action::Deny,
        IstioAction::Audit => Action::Audit,
        IstioAction::Custom => {
            errors.push((
                "spec.action".into(),
                "CUSTOM (an external authorizer) is not supported: write the rules as ALLOW or \
                 DENY policies"
                    .into(),
            ));
            Action::Deny
        }
    };
    if spec.provider.is_some() && spec.action != IstioAction::Custom {
        errors.push((
            "spec.provider".into(),
            "a provider is only for action CUSTOM: remove it".into(),
        ));
    }
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let from = rule
            .from
            .iter()
            .enumerate()
            .map(|(j, f)| source(&format!("{at}.from[{j}].source"), &f.source, &mut errors));
        let from = from.collect();
        let to = rule.to.iter().enumerate().map(|(j, t)| {
            operation(
                &format!("{at}.to[{j}].operation"),
                &t.operation,
                l4_only,
                &mut errors,
            )
        });
        let to = to.collect();
        let when =
            rule.when.iter().enumerate().filter_map(|(j, c)| {
                condition(&format!("{at}.when[{j}]"), c, l4_only, &mut errors)
            });
        let when = when.collect();
        rules.push(Rule { from, to, when });
    }
    let dry_run = api
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        .is_some_and(|v| v == "true");
    let common = Common {
        namespace: api.metadata.namespace,
        name: api.metadata.name,
        selector: api.spec.selector.map(|s| s.match_labels),
        target_refs: &api.spec.target_refs,
        action,
        dry_run,
    };
    Policy::assemble(common, rules, errors)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Read to be refused by name.
    #[serde(default)]
    pub port_level_mtls: Option<BTreeMap<String, MutualTls>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: IstioMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum IstioMode {
    #[default]
    #[serde(rename = "UNSET")]
    Unset,
    #[serde(rename = "DISABLE")]
    Disable,
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    #[serde(rename = "STRICT")]
    Strict,
}

/// Translates an Istio PeerAuthentication.
pub fn peer_authentication(api: PeerAuthentication) -> Result<PeerAuth, Vec<FieldError>> {
    let mut errors = Vec::new();
    let namespace = api.metadata.namespace.unwrap_or_else(|| "default".into());
    if api.spec.port_level_mtls.is_some() {
        errors.push((
            "spec.portLevelMtls".into(),
            "per-port modes are not supported: the mode applies to every port of the selected \
             pods; give the pods that need another mode their own workload-level \
             PeerAuthentication (with a selector)"
                .into(),
        ));
    }
    if api.spec.selector.is_some() && namespace == ISTIO_ROOT_NAMESPACE {
        errors.push((
            "spec.selector".into(),
            format!(
                "Istio ignores a selector in the root namespace {ISTIO_ROOT_NAMESPACE}: remove it \
                 for a mesh-wide mode, or move the object to the pods' namespace"
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mode = match api.spec.mtls.unwrap_or_default().mode {
        IstioMode::Unset => None,
        IstioMode::Disable | IstioMode::Permissive => Some(Mode::Permissive),
        IstioMode::Strict => Some(Mode::Strict),
    };
    Ok(PeerAuth {
        namespace,
        name: api.metadata.name.unwrap_or_default(),
        selector: api.spec.selector.map(|s| s.match_labels),
        mode,
    })
}
