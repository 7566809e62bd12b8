//! The CustomResourceDefinitions of nodemesh's own kinds
//! (`nodemesh.io/v1alpha1` AuthorizationPolicy, PeerAuthentication,
//! TrafficPolicy), generated from the very types that parse them: the spec
//! schemas come from their `JsonSchema` derives, rewritten into Kubernetes'
//! structural form ([`structural`]). `mesh-agent crds` prints them; the
//! result is committed as `deploy/crds.yaml`, and a test fails when the two
//! differ.
//!
//! The `CustomResourceDefinition` is built here around the schema rather
//! than by kube's `#[derive(CustomResource)]`, which would make a root type
//! of its own beside the ones the loader parses. Sits above `policy` and
//! `state` (it reads both); nothing in the agent imports it.
use std::collections::BTreeMap;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
        CustomResourceDefinitionSpec, CustomResourceDefinitionVersion,
        CustomResourceSubresourceStatus, CustomResourceSubresources, CustomResourceValidation,
        JSONSchemaProps,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use schemars::{JsonSchema, generate::SchemaSettings};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    policy::{
        self,
        api::{AuthorizationPolicySpec, PeerAuthenticationSpec},
    },
    state::{cluster, traffic::TrafficPolicySpec},
};

mod structural;

#[cfg(test)]
mod tests;

/// The command that regenerates the committed file.
pub const REGENERATE: &str = "cargo run -p mesh-agent --bin mesh-agent -- crds > deploy/crds.yaml";

/// A spec type that has no structural schema (a programming error, caught by
/// the `crd` tests).
#[derive(Debug, thiserror::Error)]
#[error("the {kind} CRD's schema at {path}: {message}")]
pub struct CrdError {
    pub kind: String,
    pub path: String,
    pub message: String,
}

impl CrdError {
    /// A problem with `kind`'s CRD as a whole, not one field of its schema.
    fn whole(kind: &str, message: String) -> Self {
        Self {
            kind: kind.to_owned(),
            path: "/".into(),
            message,
        }
    }
}

/// What differs between nodemesh's kinds.
struct Kind {
    kind: &'static str,
    short_names: &'static [&'static str],
    description: &'static str,
    /// The spec type's schema, as schemars emits it.
    spec: fn() -> Value,
    /// Extra `kubectl get` columns (Age is added to each).
    columns: &'static [Column],
}

struct Column {
    name: &'static str,
    /// The column's type as `kubectl` knows them (`string`, `boolean`, …).
    type_: &'static str,
    json_path: &'static str,
    description: &'static str,
}

const KINDS: [Kind; 3] = [
    Kind {
        kind: "AuthorizationPolicy",
        short_names: &["nmauthz"],
        description: "Who may connect to the selected pods (L4), or send which \
                      requests through a waypoint (L7): nodemesh's native shape.",
        spec: schema_of::<AuthorizationPolicySpec>,
        columns: &[
            Column {
                name: "Action",
                type_: "string",
                json_path: ".spec.action",
                description: "ALLOW, DENY or AUDIT",
            },
            Column {
                name: "Dry-Run",
                type_: "boolean",
                json_path: ".spec.dryRun",
                description: "Evaluated and recorded, not enforced",
            },
        ],
    },
    Kind {
        kind: "PeerAuthentication",
        short_names: &["nmpeerauth"],
        description: "Whether the pods of a namespace (all namespaces, in \
                      nodemesh-system) accept plaintext from outside the mesh.",
        spec: schema_of::<PeerAuthenticationSpec>,
        columns: &[Column {
            name: "Mode",
            type_: "string",
            json_path: ".spec.mode",
            description: "STRICT or PERMISSIVE",
        }],
    },
    Kind {
        kind: "TrafficPolicy",
        short_names: &["nmtp"],
        description: "Local rate limits and fault injection for one HTTPRoute, \
                      or one named rule of it, enforced by waypoints.",
        spec: schema_of::<TrafficPolicySpec>,
        columns: &[
            Column {
                name: "Route",
                type_: "string",
                json_path: ".spec.targetRef.name",
                description: "The HTTPRoute",
            },
            Column {
                name: "Rule",
                type_: "string",
                json_path: ".spec.targetRef.sectionName",
                description: "The rule's name; empty: all rules",
            },
        ],
    },
];

/// Every CRD, in a fixed order.
pub fn definitions() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    KINDS.iter().map(definition).collect()
}

/// Every CRD as one multi-document YAML, as `deploy/crds.yaml` holds them.
pub fn yaml() -> Result<String, CrdError> {
    let mut out = format!(
        "# Generated from the Rust types that parse these objects (mesh-agent/src/crd).\n\
         # Do not edit: run `{REGENERATE}`.\n"
    );
    for crd in definitions()? {
        let text = serde_yaml_ng::to_string(&crd).map_err(|e| {
            CrdError::whole(
                &crd.spec.names.kind,
                format!("cannot be written as YAML: {e}"),
            )
        })?;
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(out)
}

fn schema_of<T: JsonSchema>() -> Value {
    // Everything inlined: structural schemas cannot share definitions.
    let settings = SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

fn definition(kind: &Kind) -> Result<CustomResourceDefinition, CrdError> {
    let fail = |message: String| CrdError::whole(kind.kind, message);
    let (group, version) = policy::API_VERSION
        .split_once('/')
        .ok_or_else(|| fail(format!("{} is not group/version", policy::API_VERSION)))?;
    // The plural the agent watches the kind by: one list of resources for
    // the watchers and the CRDs.
    let plural = cluster::resources()
        .into_iter()
        .find(|w| w.resource.group == group && w.resource.kind == kind.kind)
        .map(|w| w.resource.plural)
        .ok_or_else(|| {
            fail(format!(
                "not among the resources the agent watches ({group})"
            ))
        })?;
    let mut spec = (kind.spec)();
    structural::rewrite(kind.kind, &mut spec)?;
    let root = json!({
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status_schema(kind.kind),
        },
    });
    let schema = typed_schema(kind.kind, root)?;
    let mut columns: Vec<CustomResourceColumnDefinition> = kind
        .columns
        .iter()
        .map(|c| CustomResourceColumnDefinition {
            name: c.name.into(),
            type_: c.type_.into(),
            json_path: c.json_path.into(),
            description: Some(c.description.into()),
            ..Default::default()
        })
        .collect();
    columns.push(CustomResourceColumnDefinition {
        name: "Age".into(),
        type_: "date".into(),
        json_path: ".metadata.creationTimestamp".into(),
        ..Default::default()
    });
    Ok(CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{group}")),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "nodemesh".to_owned(),
            )])),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: group.into(),
            scope: "Namespaced".into(),
            names: CustomResourceDefinitionNames {
                kind: kind.kind.into(),
                list_kind: Some(format!("{}List", kind.kind)),
                plural: plural.clone(),
                singular: Some(kind.kind.to_lowercase()),
                short_names: Some(kind.short_names.iter().map(|s| (*s).to_owned()).collect()),
                categories: Some(vec!["nodemesh".into()]),
            },
            versions: vec![CustomResourceDefinitionVersion {
                name: version.into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(json!({}))),
                    ..Default::default()
                }),
                additional_printer_columns: Some(columns),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    })
}

/// `status.conditions` in the shape of Kubernetes' `metav1.Condition`, where
/// the CA reports an invalid object.
fn status_schema(kind: &str) -> Value {
    json!({
        "type": "object",
        "description": format!("What nodemesh found wrong with this {kind}, if anything."),
        "properties": {
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status", "lastTransitionTime", "reason", "message"],
                    "properties": {
                        "type": {
                            "type": "string",
                            "maxLength": 316,
                            "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                        },
                        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                        "reason": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 1024,
                            "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                        },
                        "message": {"type": "string", "maxLength": 32768},
                    },
                },
            },
        },
    })
}

/// The schema as k8s-openapi's type, refusing any keyword that type (and so
/// the API server) does not know, rather than dropping it unseen.
fn typed_schema(kind: &str, schema: Value) -> Result<JSONSchemaProps, CrdError> {
    typed_round_trip(&schema).map_err(|e| CrdError::whole(kind, format!("in the schema, {e}")))
}

/// `value` read as the typed Kubernetes object `T`, or what `T` would not
/// keep: a field it does not know (misspelt, or not in this API version)
/// is silently dropped by the typed parse, so the object is written back
/// and compared with `value`. The manifests' tests read `deploy/` with it.
pub fn typed_round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let typed: T = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("field {}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("cannot be written back: {e}"))?;
    match first_difference(value, &back, "") {
        Some(path) => Err(format!(
            "field {path} is not kept by the typed object: unknown, misspelt or misplaced?"
        )),
        None => Ok(typed),
    }
}

/// The path of the first place where `ours` differs from `theirs`, if any.
/// Numbers compare by value: k8s-openapi keeps bounds as floats.
fn first_difference(ours: &Value, theirs: &Value, path: &str) -> Option<String> {
    match (ours, theirs) {
        (Value::Number(a), Value::Number(b)) => (a.as_f64() != b.as_f64()).then(|| path.to_owned()),
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .find_map(|(k, v)| {
                let at = format!("{path}.{k}");
                match b.get(k) {
                    None => Some(at),
                    Some(w) => first_difference(v, w, &at),
                }
            })
            .or_else(|| {
                b.keys()
                    .find(|k| !a.contains_key(*k))
                    .map(|k| format!("{path}.{k}"))
            }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        _ => (ours != theirs).then(|| path.to_owned()),
    }
}
