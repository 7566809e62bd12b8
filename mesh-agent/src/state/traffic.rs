//! nodemesh's `TrafficPolicy` (`nodemesh.io/v1alpha1`), in the shape users
//! write it: local rate limits and fault injection attached to one HTTPRoute
//! (or one named rule of it) by Gateway API policy attachment (GEP-713).
//! Unknown fields are errors, so a misspelt `perSource` cannot silently
//! drop a limit; what the numbers *mean* (rates, units, percentages,
//! durations) is checked by the waypoint that enforces them, which reports
//! problems per object and field.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: PolicyMeta,
    pub spec: TrafficPolicySpec,
}

/// The metadata a policy's meaning depends on; the rest of Kubernetes'
/// `ObjectMeta` (labels, annotations, …) is accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMeta {
    pub name: String,
    pub namespace: Option<String>,
}

impl TrafficPolicy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    pub target_ref: PolicyTargetRef,
    pub rate_limit: Option<RateLimit>,
    pub fault: Option<Fault>,
}

/// GEP-713 `LocalPolicyTargetReferenceWithSectionName`: an object in the
/// policy's own namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// `gateway.networking.k8s.io`.
    pub group: String,
    /// `HTTPRoute`.
    pub kind: String,
    pub name: String,
    /// The `name` of one rule of the route; absent: all of its rules.
    pub section_name: Option<String>,
}

/// Local token buckets, kept by each waypoint process on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// One bucket shared by every request to the target.
    pub route: Option<TokenBucket>,
    /// One bucket per source SPIFFE identity.
    pub per_source: Option<TokenBucket>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBucket {
    pub requests_per_unit: u32,
    /// `Second`, `Minute` or `Hour`.
    pub unit: String,
    /// Capacity: requests admitted at once after a quiet spell (default
    /// `requestsPerUnit`).
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Gateway API duration (`100ms`, `1s`).
    pub fixed: String,
    /// Share of requests delayed (default all).
    pub percent: Option<Percent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status answered instead of forwarding.
    pub status: u32,
    /// Share of requests aborted (default all).
    pub percent: Option<Percent>,
}

/// A percentage as written, fractions allowed (`0.5`). Equal when the bits
/// are: that keeps `Eq` lawful even for a NaN a user might write, so
/// snapshots still compare (the watcher publishes only changes).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Percent(pub f64);

impl PartialEq for Percent {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Percent {}
