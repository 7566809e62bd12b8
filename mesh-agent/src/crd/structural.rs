//! schemars' JSON Schema → a Kubernetes structural schema.
//!
//! The API server accepts a CRD's schema only in "structural" form: every
//! node says its type, nothing is shared by `$ref`, `null` is a `nullable`
//! flag rather than a type, an object either lists its properties or types
//! its values (never `additionalProperties: false` beside `properties`), and
//! alternatives (`oneOf`/`anyOf`) may not introduce types or properties.
//! schemars emits what JSON Schema allows; this rewrites the shapes our
//! types produce into that form and refuses, by path, anything else, so a
//! new field with no structural form fails `mesh-agent crds` and its test
//! instead of shipping a CRD the API server rejects.
use serde_json::{Map, Value};

use super::CrdError;

/// Formats the API server knows for numbers; schemars' `uint*` are
/// replaced by bounds.
const NUMBER_FORMATS: [&str; 4] = ["int32", "int64", "float", "double"];

/// Rewrites `schema` (of `kind`'s spec) in place.
pub(super) fn rewrite(kind: &str, schema: &mut Value) -> Result<(), CrdError> {
    node(schema, "spec").map_err(|(path, message)| CrdError {
        kind: kind.to_owned(),
        path,
        message,
    })
}

type Failure = (String, String);

fn node(schema: &mut Value, path: &str) -> Result<(), Failure> {
    let Value::Object(map) = schema else {
        return Err((
            path.to_owned(),
            format!("expected a schema object, got {schema}"),
        ));
    };
    for annotation in ["$schema", "title"] {
        map.remove(annotation);
    }
    if map.contains_key("$ref") {
        return Err((
            path.to_owned(),
            "a `$ref` is left: Kubernetes allows no shared definitions (is the type recursive?)"
                .into(),
        ));
    }
    // A merged branch may bring alternatives of its own (an `Option` of a
    // documented enum): merge until none is left.
    while let Some(key) = ["anyOf", "oneOf"]
        .into_iter()
        .find(|k| map.contains_key(*k))
    {
        let Some(Value::Array(branches)) = map.remove(key) else {
            return Err((path.to_owned(), format!("`{key}` is not a list")));
        };
        merge_alternatives(map, branches).map_err(|m| (path.to_owned(), format!("{key}: {m}")))?;
    }
    if let Some(value) = map.remove("const") {
        map.insert("enum".into(), Value::Array(vec![value]));
    }
    nullable_type(map);
    for key in ["allOf", "not", "if", "then", "else"] {
        if map.contains_key(key) {
            return Err((
                path.to_owned(),
                format!("`{key}` has no structural form here: give the field a plain type"),
            ));
        }
    }
    // A default is kept only for a choice among values (the API server
    // then stores and shows it, e.g. in the Action column); empty lists,
    // maps and `false` mean what absence means, and would only bloat stored
    // objects.
    if !map.contains_key("enum") {
        map.remove("default");
    }
    // Kubernetes refuses `uniqueItems: true`; lists keep their order and
    // duplicates are harmless to every list here.
    map.remove("uniqueItems");
    integer_format(map);
    match map.remove("additionalProperties") {
        // Closed objects: the API server drops unknown fields anyway, and
        // refuses `false` beside `properties`.
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            map.insert(
                "x-kubernetes-preserve-unknown-fields".into(),
                Value::Bool(true),
            );
        }
        Some(mut values) => {
            node(&mut values, &format!("{path}.*"))?;
            map.insert("additionalProperties".into(), values);
        }
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            node(property, &format!("{path}.{name}"))?;
        }
    }
    if let Some(items) = map.get_mut("items") {
        node(items, &format!("{path}[]"))?;
    }
    if !map.contains_key("type") && !map.contains_key("x-kubernetes-preserve-unknown-fields") {
        return Err((path.to_owned(), "no `type`: every field needs one".into()));
    }
    Ok(())
}

/// `type: [T, "null"]` → `type: T, nullable: true`.
fn nullable_type(map: &mut Map<String, Value>) {
    let Some(Value::Array(types)) = map.get("type") else {
        return;
    };
    let (nulls, others): (Vec<&Value>, Vec<&Value>) =
        types.iter().partition(|t| t.as_str() == Some("null"));
    if let ([_], [only]) = (nulls.as_slice(), others.as_slice()) {
        let only = (*only).clone();
        map.insert("type".into(), only);
        map.insert("nullable".into(), Value::Bool(true));
    }
}

/// The two shapes of alternatives our types produce: an `Option` of a
/// schema (`[T, null]`), and an enum some of whose variants carry doc
/// comments (branches of string constants), which becomes one `enum` with
/// the variants' descriptions joined into the field's.
fn merge_alternatives(map: &mut Map<String, Value>, branches: Vec<Value>) -> Result<(), String> {
    let is_null = |b: &Value| {
        b.get("type").and_then(Value::as_str) == Some("null")
            || b.get("enum") == Some(&Value::Array(vec![Value::Null]))
    };
    let (nulls, others): (Vec<Value>, Vec<Value>) = branches.into_iter().partition(is_null);
    if !nulls.is_empty() {
        map.insert("nullable".into(), Value::Bool(true));
    }
    if let [only] = others.as_slice() {
        let Value::Object(only) = only.clone() else {
            return Err(format!("expected a schema object, got {only}"));
        };
        for (key, value) in only {
            map.entry(key).or_insert(value);
        }
        return Ok(());
    }
    // schemars gives each documented variant a branch of its own and puts
    // the undocumented ones together in one.
    let mut values = Vec::new();
    let mut described = Vec::new();
    for branch in &others {
        let constants = match (branch.get("const"), branch.get("enum")) {
            (Some(one), None) => vec![one.clone()],
            (None, Some(Value::Array(several))) => several.clone(),
            _ => Vec::new(),
        };
        if constants.is_empty() || !constants.iter().all(Value::is_string) {
            return Err(format!("a branch that is not string constants: {branch}"));
        }
        if let Some(doc) = branch.get("description").and_then(Value::as_str) {
            let names: Vec<String> = constants
                .iter()
                .map(|c| format!("`{}`", c.as_str().unwrap_or_default()))
                .collect();
            described.push(format!("{}: {doc}", names.join(", ")));
        }
        values.extend(constants);
    }
    map.insert("type".into(), Value::String("string".into()));
    map.insert("enum".into(), Value::Array(values));
    if !described.is_empty() {
        let mut description = map
            .get("description")
            .and_then(Value::as_str)
            .map(|d| format!("{d}\n\n"))
            .unwrap_or_default();
        description.push_str(&described.join("\n"));
        map.insert("description".into(), Value::String(description));
    }
    Ok(())
}

/// schemars marks unsigned integers with formats the API server does not
/// know (`uint32`); their meaning is kept as bounds instead.
fn integer_format(map: &mut Map<String, Value>) {
    let Some(format) = map.get("format").and_then(Value::as_str).map(str::to_owned) else {
        return;
    };
    if NUMBER_FORMATS.contains(&format.as_str()) {
        return;
    }
    let maximum = match format.as_str() {
        "uint8" => Some(u64::from(u8::MAX)),
        "uint16" => Some(u64::from(u16::MAX)),
        "uint32" => Some(u64::from(u32::MAX)),
        _ => None,
    };
    map.remove("format");
    if let Some(maximum) = maximum {
        map.entry("maximum").or_insert(Value::from(maximum));
    }
    if format.starts_with("uint") {
        map.entry("minimum").or_insert(Value::from(0));
    }
}
