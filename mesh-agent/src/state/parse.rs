//! Reading local-mode YAML into the [`Snapshot`].
//!
//! Objects are Kubernetes' own types (k8s-openapi), so local mode and a
//! future API-server watcher share one model. YAML is read with
//! `serde_yaml_ng`, the maintained fork of the deprecated `serde_yaml` (same
//! API and behaviour); `serde_path_to_error` turns a type error into the
//! path of the field that caused it.
//!
//! Every bad object becomes a [`ConfigError`] naming file, object and field;
//! it never stops the valid objects from loading.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::core::v1::{Namespace, Pod, Service},
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::Deserialize as _;
use serde_yaml_ng::Value;

use super::{
    super::policy::{
        self, Policy,
        api::{AuthorizationPolicy, PeerAuthentication},
        istio,
        peer_auth::PeerAuth,
    },
    ConfigError,
    gateway::{self, GrpcRoute, HttpRoute},
    keys::{CGROUP_ANNOTATION, NETNS_ANNOTATION},
    model::{Labels, NamespaceInfo, PodInfo, ServiceInfo, ServicePort, Snapshot},
    traffic::TrafficPolicy,
};

/// Every kind local mode reads.
const KINDS: [&str; 8] = [
    "Namespace",
    "Pod",
    "Service",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "HTTPRoute",
    "GRPCRoute",
    "TrafficPolicy",
];

/// The API versions local mode reads `kind` in, nodemesh's own first.
fn api_versions_of(kind: &str) -> Option<&'static [&'static str]> {
    const POLICY: [&str; 3] = [
        policy::API_VERSION,
        istio::API_VERSIONS[0],
        istio::API_VERSIONS[1],
    ];
    match kind {
        "Namespace" | "Pod" | "Service" => Some(&["v1"]),
        "AuthorizationPolicy" | "PeerAuthentication" => Some(&POLICY),
        "TrafficPolicy" => Some(&[policy::API_VERSION]),
        "HTTPRoute" | "GRPCRoute" => Some(&[gateway::API_VERSION]),
        _ => None,
    }
}

/// A directory's worth of objects and what was wrong with the rest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub errors: Vec<ConfigError>,
}

/// Reads every `*.yaml`/`*.yml` file in `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path) -> Loaded {
    let mut loader = Loader::default();
    let origin = |path: &Path| {
        path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    let mut files = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect::<Vec<_>>(),
        Err(e) => {
            loader.error(
                &dir.display().to_string(),
                None,
                None,
                format!("cannot read the config directory: {e}"),
            );
            Vec::new()
        }
    };
    files.sort();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => loader.file(&origin(&file), &text),
            Err(e) => loader.error(&origin(&file), None, None, format!("cannot read: {e}")),
        }
    }
    loader.finish()
}

/// Builds the model from objects, whichever source read them: every check
/// and conversion lives here once.
#[derive(Default)]
pub(super) struct Loader {
    snapshot: Snapshot,
    errors: Vec<ConfigError>,
    /// `Kind ns/name` → where it was declared first.
    seen: BTreeMap<String, String>,
    /// Objects come from the API server: pods do not declare their network
    /// namespace and cgroup (the node finds those), and a pod elsewhere has
    /// none here.
    cluster: bool,
}

/// Identity of one document, for messages.
struct Doc<'a> {
    origin: &'a str,
    object: String,
}

impl Loader {
    /// A loader for the API server's objects.
    pub(super) fn cluster() -> Self {
        Self {
            cluster: true,
            ..Self::default()
        }
    }

    fn error(
        &mut self,
        origin: &str,
        object: Option<String>,
        field: Option<&str>,
        message: String,
    ) {
        self.errors.push(ConfigError {
            origin: origin.to_owned(),
            object,
            field: field.map(str::to_owned),
            message,
        });
    }

    /// The model, in an order that does not depend on the order objects
    /// arrived in (files sorted by name, or watch events).
    pub(super) fn finish(mut self) -> Loaded {
        self.snapshot.normalize();
        Loaded {
            snapshot: self.snapshot,
            errors: self.errors,
        }
    }

    fn file(&mut self, origin: &str, text: &str) {
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = match Value::deserialize(document) {
                Ok(Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    let at = e
                        .location()
                        .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                        .unwrap_or_default();
                    self.error(
                        origin,
                        None,
                        None,
                        format!("invalid YAML{at}: {e}; the rest of this file was skipped"),
                    );
                    return;
                }
            };
            self.document(origin, index + 1, value);
        }
    }

    /// One object (document `index` of `origin`), checked and added.
    pub(super) fn document(&mut self, origin: &str, index: usize, value: Value) {
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let kind = text(&value, "kind");
        let api_version = text(&value, "apiVersion");
        let meta = value.get("metadata").cloned().unwrap_or(Value::Null);
        let name = text(&meta, "name");
        let namespace = text(&meta, "namespace").unwrap_or_else(|| "default".to_owned());
        let object = match (&kind, &name) {
            (Some(k), Some(n)) if k == "Namespace" => format!("Namespace {n}"),
            (Some(k), Some(n)) => format!("{k} {namespace}/{n}"),
            (Some(k), None) => format!("{k} (document {index})"),
            _ => format!("document {index}"),
        };
        let doc = Doc { origin, object };
        let Some(kind) = kind else {
            return self.fail(
                &doc,
                Some("kind"),
                format!("missing: every object needs `kind` ({})", KINDS.join(", ")),
            );
        };
        let Some(expected) = api_versions_of(&kind) else {
            return self.fail(
                &doc,
                Some("kind"),
                format!(
                    "unknown kind {kind:?}: local mode reads {}",
                    KINDS.join(", ")
                ),
            );
        };
        let Some(api_version) = api_version
            .clone()
            .filter(|v| expected.contains(&v.as_str()))
        else {
            let others = expected[1..]
                .iter()
                .map(|v| format!(" or {v}"))
                .collect::<String>();
            return self.fail(
                &doc,
                Some("apiVersion"),
                format!(
                    "{:?} is not supported for {kind}: use `apiVersion: {}`{others}",
                    api_version.unwrap_or_default(),
                    expected[0]
                ),
            );
        };
        let is_istio = istio::API_VERSIONS.contains(&api_version.as_str());
        if name.is_none() {
            return self.fail(
                &doc,
                Some("metadata.name"),
                "missing: every object needs a name".into(),
            );
        }
        if !self.first_sighting(&doc, &api_version) {
            return;
        }
        let result = match (kind.as_str(), is_istio) {
            ("Namespace", _) => typed::<Namespace>(value).map(|ns| self.namespace(ns)),
            ("Pod", _) => typed::<Pod>(value).map(|pod| self.pod(&doc, pod)),
            ("Service", _) => typed::<Service>(value).map(|svc| self.service(&doc, svc)),
            ("AuthorizationPolicy", false) => typed::<AuthorizationPolicy>(without_status(value))
                .map(|p| self.authorization(&doc, Policy::compile(p))),
            ("AuthorizationPolicy", true) => {
                typed::<istio::AuthorizationPolicy>(without_status(value))
                    .map(|p| self.authorization(&doc, istio::authorization(p)))
            }
            ("PeerAuthentication", true) => {
                typed::<istio::PeerAuthentication>(without_status(value))
                    .map(|p| self.peer_auth(&doc, istio::peer_authentication(p)))
            }
            ("HTTPRoute", _) => {
                typed::<HttpRoute>(without_status(value)).map(|r| self.snapshot.http_routes.push(r))
            }
            ("GRPCRoute", _) => {
                typed::<GrpcRoute>(without_status(value)).map(|r| self.snapshot.grpc_routes.push(r))
            }
            ("TrafficPolicy", _) => typed::<TrafficPolicy>(without_status(value))
                .map(|p| self.snapshot.traffic_policies.push(p)),
            _ => typed::<PeerAuthentication>(without_status(value))
                .map(|p| self.peer_auth(&doc, Ok(native(p)))),
        };
        if let Err((field, message)) = result {
            self.fail(&doc, field.as_deref(), message);
        }
    }

    fn fail(&mut self, doc: &Doc<'_>, field: Option<&str>, message: String) {
        self.error(doc.origin, Some(doc.object.clone()), field, message);
    }

    /// False (and an error) when the same object was declared before. The
    /// API group is part of what an object is: nodemesh's and Istio's
    /// AuthorizationPolicy `shop/x` are two objects (versions of one group
    /// are one).
    fn first_sighting(&mut self, doc: &Doc<'_>, api_version: &str) -> bool {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let key = format!("{group} {}", doc.object);
        if let Some(first) = self.seen.get(&key) {
            let message = format!("declared again (first in {first}); this copy is ignored");
            self.fail(doc, None, message);
            return false;
        }
        self.seen.insert(key, doc.origin.to_owned());
        true
    }

    fn namespace(&mut self, ns: Namespace) {
        let name = ns.metadata.name.unwrap_or_default();
        let labels = ns.metadata.labels.unwrap_or_default();
        self.snapshot
            .namespaces
            .insert(name.clone(), NamespaceInfo { name, labels });
    }

    fn pod(&mut self, doc: &Doc<'_>, pod: Pod) {
        if self.cluster && !in_the_mesh_yet(&pod) {
            return;
        }
        match pod_info(pod, self.cluster) {
            Ok(info) => self.snapshot.pods.push(info),
            Err(errors) => {
                for (field, message) in errors {
                    self.fail(doc, Some(&field), message);
                }
            }
        }
    }

    fn authorization(&mut self, doc: &Doc<'_>, compiled: Result<Policy, Vec<FieldError>>) {
        match compiled {
            Ok(policy) => self
                .snapshot
                .policies
                .entry(policy.namespace.clone())
                .or_default()
                .push(policy),
            Err(errors) => {
                for (field, message) in errors {
                    self.fail(doc, Some(&field), message);
                }
            }
        }
    }

    fn peer_auth(&mut self, doc: &Doc<'_>, translated: Result<PeerAuth, Vec<FieldError>>) {
        match translated {
            Ok(p) => self.snapshot.peer_auth.push(p),
            Err(errors) => {
                for (field, message) in errors {
                    self.fail(doc, Some(&field), message);
                }
            }
        }
    }

    fn service(&mut self, doc: &Doc<'_>, svc: Service) {
        match service_info(svc) {
            Ok(info) => self.snapshot.services.push(info),
            Err((field, message)) => self.fail(doc, Some(&field), message),
        }
    }
}

/// Whether an API server's pod is one the mesh can serve: placed on a node
/// (the scheduler has not placed it yet), not ended (its address may
/// already be another pod's) and not on the node's own network (its
/// address is the node's). Such pods are normal in a cluster, not
/// configuration errors, so they are skipped quietly; local YAML declares
/// only pods it means. A pod without an address yet is kept: its sandbox is
/// being set up, and the CNI plugin asks the agent to enrol it before it
/// starts (its addresses come from the CNI result until the kubelet writes
/// them).
fn in_the_mesh_yet(pod: &Pod) -> bool {
    let ended = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let spec = pod.spec.as_ref();
    let placed = spec.is_some_and(|s| s.node_name.is_some());
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    placed && !ended && !host_network
}

/// Controllers write `status` (the CA, on nodemesh's own kinds); a copied
/// object may carry one. It is not configuration, so it is dropped rather
/// than parsed.
fn without_status(mut value: Value) -> Value {
    if let Value::Mapping(map) = &mut value {
        map.remove("status");
    }
    value
}

/// A problem with one field: (path, what is wrong and what to do).
type FieldError = (String, String);

/// A `nodemesh.io/v1alpha1` PeerAuthentication: always namespace-wide (or
/// mesh-wide in the root namespace), always with a mode.
fn native(api: PeerAuthentication) -> PeerAuth {
    PeerAuth {
        namespace: api.metadata.namespace.unwrap_or_else(|| "default".into()),
        name: api.metadata.name.unwrap_or_default(),
        selector: None,
        mode: Some(api.spec.mode),
    }
}

/// Deserializes a typed object, reporting the failing field's path.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        (field, e.into_inner().to_string())
    })
}

fn ip(field: String, text: &str) -> Result<IpAddr, FieldError> {
    text.parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| {
            (
                field,
                format!("{text:?} is not an IP address (expected e.g. 10.1.0.11 or fd00::b)"),
            )
        })
}

/// Builds a pod, reporting every bad field at once. Local YAML must say
/// where each pod's network namespace and cgroup are; the API server's pods
/// (`cluster`) may, and are not checked against this machine.
fn pod_info(pod: Pod, cluster: bool) -> Result<PodInfo, Vec<FieldError>> {
    let mut errors = Vec::new();
    let meta = pod.metadata;
    let annotations = meta.annotations.unwrap_or_default();
    let mut path_annotation = |key: &str, must_exist: bool| -> PathBuf {
        let field = format!("metadata.annotations.{key}");
        let declared = annotations.get(key).map(PathBuf::from);
        if cluster {
            return declared.unwrap_or_default();
        }
        let Some(path) = declared else {
            errors.push((
                field,
                "missing: local mode needs it to find the pod (its network namespace file / \
                 cgroup v2 directory)"
                    .into(),
            ));
            return PathBuf::new();
        };
        if must_exist && !path.exists() {
            errors.push((
                field,
                format!(
                    "{} does not exist: is the pod running, and the path right?",
                    path.display()
                ),
            ));
        }
        path
    };
    let netns = path_annotation(NETNS_ANNOTATION, true);
    let cgroup = path_annotation(CGROUP_ANNOTATION, false);
    let spec = pod.spec.unwrap_or_default();
    if spec.node_name.is_none() {
        errors.push((
            "spec.nodeName".into(),
            "missing: the agent serves only pods placed on its node".into(),
        ));
    }
    let status = pod.status.unwrap_or_default();
    let mut ips = Vec::new();
    let mut keep = |result: Result<IpAddr, FieldError>| match result {
        Ok(ip) => ips.push(ip),
        Err(e) => errors.push(e),
    };
    if let Some(list) = status.pod_ips.filter(|l| !l.is_empty()) {
        for (i, entry) in list.iter().enumerate() {
            keep(ip(format!("status.podIPs[{i}].ip"), &entry.ip));
        }
    } else if let Some(single) = status.pod_ip {
        keep(ip("status.podIP".into(), &single));
    } else if !cluster {
        errors.push((
            "status.podIP".into(),
            "missing: a pod needs an address to be meshed".into(),
        ));
    }
    // Local YAML declares running pods and may leave conditions out; the
    // API server's pods have a Ready condition once the kubelet reports.
    let ready = match status
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
    {
        Some(condition) => condition.status == "True",
        None => !cluster,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PodInfo {
        namespace: meta.namespace.unwrap_or_else(|| "default".into()),
        name: meta.name.unwrap_or_default(),
        node: spec.node_name.unwrap_or_default(),
        service_account: spec
            .service_account_name
            .unwrap_or_else(|| "default".into()),
        ips,
        labels: meta.labels.unwrap_or_default(),
        netns,
        cgroup,
        ready,
    })
}

fn port(field: String, value: i32) -> Result<u16, FieldError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or((field, format!("{value} is not a port (1-65535)")))
}

fn service_info(svc: Service) -> Result<ServiceInfo, FieldError> {
    let meta = svc.metadata;
    let spec = svc.spec.unwrap_or_default();
    let mut cluster_ips = Vec::new();
    let listed = spec.cluster_ips.filter(|l| !l.is_empty());
    let (texts, field): (Vec<String>, &str) = match (listed, spec.cluster_ip) {
        (Some(list), _) => (list, "spec.clusterIPs"),
        (None, Some(one)) => (vec![one], "spec.clusterIP"),
        (None, None) => (Vec::new(), "spec.clusterIP"),
    };
    for (i, text) in texts.iter().enumerate() {
        if text == "None" {
            continue; // headless
        }
        let at = if field == "spec.clusterIPs" {
            format!("{field}[{i}]")
        } else {
            field.to_owned()
        };
        cluster_ips.push(ip(at, text)?);
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().into_iter().enumerate() {
        let number = port(format!("spec.ports[{i}].port"), p.port)?;
        let target_port = match p.target_port {
            None => number,
            Some(IntOrString::Int(t)) => port(format!("spec.ports[{i}].targetPort"), t)?,
            Some(IntOrString::String(name)) => {
                return Err((
                    format!("spec.ports[{i}].targetPort"),
                    format!(
                        "named target port {name:?} is not supported yet: use the container's port number"
                    ),
                ));
            }
        };
        ports.push(ServicePort {
            name: p.name,
            port: number,
            target_port,
        });
    }
    Ok(ServiceInfo {
        namespace: meta.namespace.unwrap_or_else(|| "default".into()),
        name: meta.name.unwrap_or_default(),
        cluster_ips,
        ports,
        selector: spec.selector.unwrap_or_default() as Labels,
        labels: meta.labels.unwrap_or_default(),
    })
}
