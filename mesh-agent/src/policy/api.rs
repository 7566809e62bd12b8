//! The policy objects as users write them. Unknown fields are errors: a
//! misspelt `namespace` must not silently widen a policy.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Pods of the policy's namespace it applies to; absent: all of them.
    #[serde(default)]
    pub selector: Option<Selector>,
    /// Instead of a selector: the Services (or the waypoint Gateway) whose
    /// HTTP requests the waypoint judges by this policy (Istio's
    /// `targetRefs`). Only such policies may use HTTP fields.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub action: Action,
    /// Evaluate and record, but do not enforce.
    #[serde(default)]
    pub dry_run: bool,
    /// Absent or empty: the policy matches no connection (an ALLOW policy
    /// without rules therefore denies everything to its pods).
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
pub enum Action {
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    /// Istio's AUDIT: matching connections are recorded, never judged.
    #[serde(rename = "AUDIT")]
    Audit,
}

/// A rule matches when every field it sets matches (`from` AND `to`); a
/// field with several values matches any of them. `{}` matches everything.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub from: Option<FromSpec>,
    #[serde(default)]
    pub to: Option<ToSpec>,
    /// Conditions on the request (HTTP, so waypoint policies only).
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

/// What a waypoint policy attaches to.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// `""` for a Service, `gateway.networking.k8s.io` for a Gateway.
    #[serde(default)]
    pub group: String,
    /// `Service` or `Gateway` (the waypoint).
    pub kind: String,
    pub name: String,
}

/// `key` is `request.headers[<name>]`; it holds when the header's value is
/// one of `values` (patterns like paths: exact, `prefix*`, `*suffix`, `*`)
/// and none of `notValues`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionSpec {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromSpec {
    /// SPIFFE IDs: exact, `prefix*`, `*suffix`, or `*` (any authenticated peer).
    #[serde(default)]
    pub identities: Vec<String>,
    /// Namespaces of authenticated peers (from their SPIFFE ID).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Source addresses, CIDR (`10.1.0.0/16`) or single (`10.1.0.11`).
    #[serde(default)]
    pub ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToSpec {
    #[serde(default)]
    pub ports: Vec<u32>,
    /// HTTP methods (waypoint policies only).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request paths: exact, `prefix*`, `*suffix` or `*` (waypoint only).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Request hosts (`:authority` without port), same patterns (waypoint
    /// only).
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
pub enum Mode {
    /// Plaintext from outside the mesh is accepted (and marked as such).
    #[default]
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// Only mutually authenticated, tunnelled traffic is delivered.
    #[serde(rename = "STRICT")]
    Strict,
}
