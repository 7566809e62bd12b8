use std::{collections::BTreeSet, path::Path};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::{Value, json};

use super::{REGENERATE, definitions, typed_round_trip, yaml};
use crate::{
    policy::{
        self,
        api::{AuthorizationPolicy, PeerAuthentication},
    },
    state::{self, traffic::TrafficPolicy},
};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[test]
fn committed_crds_are_what_the_types_generate() {
    let path = Path::new(REPO).join("deploy/crds.yaml");
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}; run `{REGENERATE}`", path.display()));
    let generated = yaml().expect("the CRDs generate");
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "deploy/crds.yaml is not what the Rust types generate (first difference at line {}): \
             run `{REGENERATE}`",
            line + 1
        );
    }
}

#[test]
fn each_kind_has_its_names_columns_and_status() {
    let crds = definitions().unwrap();
    let kinds: Vec<&str> = crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["AuthorizationPolicy", "PeerAuthentication", "TrafficPolicy"]
    );
    for crd in &crds {
        let version = &crd.spec.versions[0];
        assert_eq!(
            format!("{}/{}", crd.spec.group, version.name),
            policy::API_VERSION
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["nodemesh".to_owned()][..])
        );
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns.last(), Some(&"Age"), "{}", crd.spec.names.kind);
        let conditions = &schema(crd).properties.as_ref().unwrap()["status"]
            .properties
            .as_ref()
            .unwrap()["conditions"];
        assert_eq!(conditions.x_kubernetes_list_type.as_deref(), Some("map"));
    }
    let peer_auth = &crds[1].spec.versions[0];
    assert!(
        peer_auth
            .additional_printer_columns
            .iter()
            .flatten()
            .any(|c| c.name == "Mode" && c.json_path == ".spec.mode")
    );
}

/// Every `nodemesh.io` object the docs show (README.md's YAML blocks, the
/// here-documents of docs/by-hand.md) loads without a complaint and fits its
/// CRD's schema: nothing a user is told to write would be refused or pruned
/// by the API server.
#[test]
fn documented_objects_load_and_fit_their_schemas() {
    let crds = definitions().unwrap();
    let mut seen = BTreeSet::new();
    for (origin, object) in documented_objects() {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let crd = crds
            .iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap_or_else(|| panic!("{origin}: {kind} is not one of nodemesh's kinds"));
        let errors = violations(schema(crd), &object, "");
        assert!(errors.is_empty(), "{origin}: {kind}: {errors:#?}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("object.yaml"),
            serde_yaml_ng::to_string(&object).unwrap(),
        )
        .unwrap();
        let loaded = state::load_dir(dir.path());
        assert!(loaded.errors.is_empty(), "{origin}: {:#?}", loaded.errors);
        seen.insert(kind);
    }
    assert_eq!(
        seen,
        BTreeSet::from(
            ["AuthorizationPolicy", "PeerAuthentication", "TrafficPolicy"].map(String::from)
        ),
        "the docs should show every kind"
    );
}

/// The other direction: an object that sets every field of the schema is
/// accepted by the parser, whose types refuse unknown fields, so the schema
/// offers nothing the agent would refuse.
#[test]
fn an_object_with_every_schema_field_parses() {
    for crd in definitions().unwrap() {
        let kind = crd.spec.names.kind.clone();
        let spec = &schema(&crd).properties.as_ref().unwrap()["spec"];
        let object = json!({
            "apiVersion": policy::API_VERSION,
            "kind": kind,
            "metadata": {"name": "full", "namespace": "shop"},
            "spec": full(spec),
        });
        assert_eq!(violations(schema(&crd), &object, ""), Vec::<String>::new());
        let parsed = match kind.as_str() {
            "AuthorizationPolicy" => {
                serde_json::from_value::<AuthorizationPolicy>(object).map(drop)
            }
            "PeerAuthentication" => serde_json::from_value::<PeerAuthentication>(object).map(drop),
            "TrafficPolicy" => serde_json::from_value::<TrafficPolicy>(object).map(drop),
            other => panic!("no parser named for {other}"),
        };
        if let Err(e) = parsed {
            panic!("{kind} with every schema field does not parse: {e}");
        }
    }
}

/// The schema check itself can fail: a misspelt field or a value outside
/// an enum is reported by path.
#[test]
fn misspelt_fields_and_unknown_values_violate_the_schema() {
    let crds = definitions().unwrap();
    let object = json!({
        "apiVersion": policy::API_VERSION,
        "kind": "TrafficPolicy",
        "metadata": {"name": "x"},
        "spec": {
            "targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"},
            "rateLimit": {"perSorce": {"requestsPerUnit": 1, "unit": "Second"}},
        },
    });
    assert_eq!(
        violations(schema(&crds[2]), &object, ""),
        [".spec.rateLimit.perSorce: not in the schema"]
    );
    let object = json!({
        "apiVersion": policy::API_VERSION,
        "kind": "PeerAuthentication",
        "metadata": {"name": "x"},
        "spec": {"mode": "DISABLE"},
    });
    assert_eq!(
        violations(schema(&crds[1]), &object, ""),
        [".spec.mode: \"DISABLE\" is not one of [\"PERMISSIVE\",\"STRICT\"]"]
    );
}

#[test]
fn a_typed_round_trip_names_what_the_type_would_drop() {
    let kept = json!({"type": "integer", "minimum": 0, "maximum": 65535});
    assert!(typed_round_trip::<JSONSchemaProps>(&kept).is_ok());
    let dropped =
        json!({"type": "object", "properties": {"a": {"type": "string", "readOnly": true}}});
    let error = typed_round_trip::<JSONSchemaProps>(&dropped).unwrap_err();
    assert!(
        error.starts_with("field .properties.a.readOnly is not kept"),
        "{error}"
    );
    let mistyped = json!({"type": "object", "required": "a"});
    let error = typed_round_trip::<JSONSchemaProps>(&mistyped).unwrap_err();
    assert!(error.starts_with("field required: "), "{error}");
}

fn schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every version has a schema")
}

/// The `nodemesh.io` objects in the YAML of README.md and docs/by-hand.md,
/// with where each was found.
fn documented_objects() -> Vec<(String, Value)> {
    let mut objects = Vec::new();
    for file in ["README.md", "docs/by-hand.md"] {
        let text = std::fs::read_to_string(Path::new(REPO).join(file)).unwrap();
        for (line, block) in yaml_texts(&text) {
            for document in serde_yaml_ng::Deserializer::from_str(&block) {
                let origin = format!("{file}, YAML from line {line}");
                let value: Value = serde::Deserialize::deserialize(document)
                    .unwrap_or_else(|e| panic!("{origin}: {e}"));
                if value["apiVersion"] == policy::API_VERSION {
                    objects.push((origin, value));
                }
            }
        }
    }
    objects
}

/// The YAML of a Markdown file: its ```yaml blocks and the here-documents
/// (`<<'EOF'` … `EOF`) of its other blocks, each with its first line's number.
fn yaml_texts(markdown: &str) -> Vec<(usize, String)> {
    let mut texts = Vec::new();
    let mut fence: Option<(bool, usize, String)> = None;
    let mut heredoc: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let number = i + 1;
        if line.starts_with("```") {
            match fence.take() {
                Some((true, start, text)) => texts.push((start, text)),
                Some(_) => {}
                None => fence = Some((line == "```yaml", number + 1, String::new())),
            }
            continue;
        }
        let Some((is_yaml, _, text)) = fence.as_mut() else {
            continue;
        };
        if *is_yaml {
            text.push_str(line);
            text.push('\n');
        } else if let Some((start, body)) = heredoc.as_mut() {
            if line == "EOF" {
                texts.push((*start, std::mem::take(body)));
                heredoc = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
        } else if line.ends_with("<<'EOF'") {
            heredoc = Some((number + 1, String::new()));
        }
    }
    texts
}

/// Where `value` does not fit `schema` the way the API server reads a
/// structural schema: unknown fields (which it would prune), types, enums,
/// required fields, bounds. `metadata` is the API server's own.
fn violations(schema: &JSONSchemaProps, value: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    if value.is_null() {
        if schema.nullable != Some(true) {
            out.push(format!("{path}: null, and the field is not nullable"));
        }
        return out;
    }
    let fits = match schema.type_.as_deref() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !fits {
        out.push(format!("{path}: {value} is not of type {:?}", schema.type_));
        return out;
    }
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        let allowed: Vec<&Value> = allowed.iter().map(|a| &a.0).collect();
        out.push(format!(
            "{path}: {value} is not one of {}",
            serde_json::to_string(&allowed).unwrap()
        ));
    }
    if let Some(n) = value.as_f64()
        && (schema.minimum.is_some_and(|min| n < min) || schema.maximum.is_some_and(|max| n > max))
    {
        out.push(format!("{path}: {n} is out of bounds"));
    }
    if let Value::Array(items) = value
        && let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items
    {
        for (i, v) in items.iter().enumerate() {
            out.extend(violations(item, v, &format!("{path}[{i}]")));
        }
    }
    if let Value::Object(fields) = value {
        for required in schema.required.iter().flatten() {
            if !fields.contains_key(required) {
                out.push(format!("{path}.{required}: required, and missing"));
            }
        }
        for (name, v) in fields {
            let at = format!("{path}.{name}");
            let property = schema.properties.as_ref().and_then(|p| p.get(name));
            match (property, &schema.additional_properties) {
                _ if at == ".metadata" => {}
                (Some(property), _) => out.extend(violations(property, v, &at)),
                (None, Some(JSONSchemaPropsOrBool::Schema(values))) => {
                    out.extend(violations(values, v, &at));
                }
                _ if schema.x_kubernetes_preserve_unknown_fields == Some(true) => {}
                _ => out.push(format!("{at}: not in the schema")),
            }
        }
    }
    out
}

/// A value that sets every field `schema` describes.
fn full(schema: &JSONSchemaProps) -> Value {
    if let Some(first) = schema.enum_.as_ref().and_then(|e| e.first()) {
        return first.0.clone();
    }
    match schema.type_.as_deref() {
        Some("object") => match (&schema.properties, &schema.additional_properties) {
            (Some(properties), _) => properties
                .iter()
                .map(|(name, property)| (name.clone(), full(property)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            (None, Some(JSONSchemaPropsOrBool::Schema(values))) => json!({"key": full(values)}),
            _ => json!({}),
        },
        Some("array") => match &schema.items {
            Some(JSONSchemaPropsOrArray::Schema(item)) => json!([full(item)]),
            _ => json!([]),
        },
        Some("integer") => json!(1),
        Some("number") => json!(0.5),
        Some("boolean") => json!(true),
        _ => json!("x"),
    }
}
