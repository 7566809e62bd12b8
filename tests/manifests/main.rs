//! The Kubernetes manifests in `deploy/`, checked without an API server:
//! every document read into its k8s-openapi type and written back (an
//! unknown or misspelt field, which the typed parse drops, fails by name),
//! the privileges the DaemonSet and the rest hold ([`privileges`]), the
//! admission policy's CEL evaluated on Node updates ([`admission`]), and
//! `kubernetes-validate --strict` against the schemas of several Kubernetes
//! versions (installed by `cargo xtask setup`; `cargo xtask test` runs it).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    Resource,
    api::{
        admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use mesh_agent::crd::typed_round_trip;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

mod admission;
mod privileges;

/// Kubernetes versions the manifests must be valid for: the oldest the
/// manifests' fields need (1.30, where every field used here is GA), the
/// newest `kubernetes-validate` 1.37 bundles, and two between.
const KUBERNETES_VERSIONS: [&str; 4] = ["1.30", "1.32", "1.34", "1.37"];

/// Where `cargo xtask test` says the validator is; else it is looked up on
/// `PATH`.
const VALIDATOR_ENV: &str = "KUBERNETES_VALIDATE";

/// One YAML document of a file in `deploy/`.
pub struct Document {
    /// The file, relative to the repository (`deploy/agent.yaml`).
    pub file: String,
    /// 1-based, as an operator counts the `---`-separated documents.
    pub index: usize,
    pub value: Value,
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// How failures name it: file, document and object.
    pub fn origin(&self) -> String {
        format!(
            "{}, document {} ({} {})",
            self.file,
            self.index,
            self.kind(),
            self.name()
        )
    }

    /// The document as its k8s-openapi type; panics naming it otherwise.
    pub fn typed<T: DeserializeOwned + Serialize>(&self) -> T {
        typed_round_trip(&self.value).unwrap_or_else(|e| panic!("{}: {e}", self.origin()))
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace")
        .to_owned()
}

/// The manifests: the files the kustomization at `deploy/` lists (through
/// nested kustomizations), then the examples.
pub fn manifest_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    kustomization_resources(&repo().join("deploy"), &mut files);
    let examples = repo().join("deploy/examples");
    let mut extra: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap_or_else(|e| panic!("reading {}: {e}", examples.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    extra.sort();
    files.extend(extra);
    files
}

fn kustomization_resources(dir: &Path, files: &mut Vec<PathBuf>) {
    let kustomization: Value = read_yaml(&dir.join("kustomization.yaml"))
        .into_iter()
        .next()
        .expect("a kustomization has one document");
    for resource in kustomization["resources"].as_array().into_iter().flatten() {
        let path = dir.join(resource.as_str().expect("resources are paths"));
        if path.is_dir() {
            kustomization_resources(&path, files);
        } else {
            files.push(path);
        }
    }
}

fn read_yaml(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The one document of `kind` named `name`.
pub fn find(kind: &str, name: &str) -> Document {
    documents()
        .into_iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("deploy/ has no {kind} {name}"))
}

/// Every document of every manifest.
pub fn documents() -> Vec<Document> {
    let repo = repo();
    manifest_files()
        .iter()
        .flat_map(|path| {
            let file = path
                .strip_prefix(&repo)
                .unwrap_or(path)
                .display()
                .to_string();
            read_yaml(path)
                .into_iter()
                .enumerate()
                .map(move |(i, value)| Document {
                    file: file.clone(),
                    index: i + 1,
                    value,
                })
        })
        .collect()
}

/// Reads `value` as `T` when it is a `T` (by apiVersion and kind).
fn as_kind<T: Resource + DeserializeOwned + Serialize>(
    value: &Value,
) -> Option<Result<(), String>> {
    let is = value["apiVersion"] == T::API_VERSION && value["kind"] == T::KIND;
    is.then(|| typed_round_trip::<T>(value).map(drop))
}

/// Every kind `deploy/` may hold, each read by its own type.
fn round_trip(value: &Value) -> Result<(), String> {
    let kinds = [
        as_kind::<Namespace>,
        as_kind::<ServiceAccount>,
        as_kind::<Service>,
        as_kind::<Secret>,
        as_kind::<ConfigMap>,
        as_kind::<ClusterRole>,
        as_kind::<ClusterRoleBinding>,
        as_kind::<Role>,
        as_kind::<RoleBinding>,
        as_kind::<Deployment>,
        as_kind::<DaemonSet>,
        as_kind::<CustomResourceDefinition>,
        as_kind::<ValidatingAdmissionPolicy>,
        as_kind::<ValidatingAdmissionPolicyBinding>,
    ];
    kinds
        .iter()
        .find_map(|read| read(value))
        .unwrap_or_else(|| {
            Err(format!(
                "no typed check for {} {}: add its k8s-openapi type to this test",
                value["apiVersion"], value["kind"]
            ))
        })
}

#[test]
fn every_document_survives_a_typed_round_trip() {
    let documents = documents();
    assert!(
        documents.len() > 10,
        "deploy/ looks empty: {} documents",
        documents.len()
    );
    let failures: Vec<String> = documents
        .iter()
        .filter_map(|d| {
            round_trip(&d.value)
                .err()
                .map(|e| format!("{}: {e}", d.origin()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The round trip can fail: a misspelt field is reported by path.
#[test]
fn a_misspelt_field_fails_the_round_trip_by_name() {
    let mut agent = documents()
        .into_iter()
        .find(|d| d.kind() == "DaemonSet")
        .expect("deploy/ has the agent's DaemonSet");
    agent.value["spec"]["template"]["spec"]["hostNetwrk"] = Value::Bool(true);
    let error = round_trip(&agent.value).unwrap_err();
    assert!(
        error.starts_with("field .spec.template.spec.hostNetwrk is not kept"),
        "{error}"
    );
}

/// No manifest is left out of the kustomization by mistake: every YAML file
/// under `deploy/` is listed by it, or an example, or the kustomization.
#[test]
fn the_kustomization_lists_every_manifest() {
    let listed = manifest_files();
    let mut unlisted = Vec::new();
    let mut pending = vec![repo().join("deploy")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
                && !listed.contains(&path)
            {
                unlisted.push(path.display().to_string());
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "not in deploy/kustomization.yaml: {unlisted:?}"
    );
}

/// The validator: `$KUBERNETES_VALIDATE`, else `kubernetes-validate` on PATH.
fn validator() -> PathBuf {
    if let Some(path) = std::env::var_os(VALIDATOR_ENV) {
        return path.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("kubernetes-validate"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "kubernetes-validate is not installed: `cargo xtask setup` installs it, and \
             `cargo xtask test` runs this test with it (or set {VALIDATOR_ENV} to its path)"
        )
    })
}

#[test]
fn kubernetes_validate_strict_accepts_every_document() {
    let tool = validator();
    let files = manifest_files();
    let count = documents().len();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&tool)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kubernetes-validate --strict for Kubernetes {version} ({}):\n{report}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // It only warns about kinds it has no schema for: each document must
        // really have been checked.
        let passed = report
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(
            passed, count,
            "Kubernetes {version}: not every document was checked:\n{report}"
        );
    }
}
