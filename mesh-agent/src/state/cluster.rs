//! The Kubernetes source of the model: one watch (list, then watch, with
//! bookmarks; a relist after `410 Gone` or a reconnect) per resource the
//! model reads, feeding the [`Index`], whose model goes out on the same
//! channel the local directory's does.
//!
//! The model is published only once every resource has been listed, and
//! while the API server is unreachable the last good one keeps serving:
//! losing the API server never unenrols a pod or drops a policy. What the
//! source is doing is in [`SourceStatus`].
//!
//! [`conditions`] reports back on nodemesh.io objects what the model made
//! of them (the CA runs it).
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{
    StreamExt as _,
    stream::{BoxStream, select_all},
};
use kube::{
    Client,
    api::{Api, ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    Loaded,
    index::{Change, Index},
};

/// Events arriving closer together than this are applied as one change…
const SETTLE: Duration = Duration::from_millis(50);
/// …but a model goes out at least this often under steady churn.
const MAX_BATCH: Duration = Duration::from_millis(500);
/// A watch that has not failed for this long counts as recovered: kube's
/// watcher resumes a broken watch silently (no event says so), retrying at
/// most every 30 s (its default backoff's ceiling) while it keeps failing.
const FAILING_FOR: Duration = Duration::from_secs(40);
/// How often the status is refreshed when nothing happens.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// One resource the model reads.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Its name in the index and in status, e.g. `pods` or
    /// `authorizationpolicies.security.istio.io`.
    pub name: String,
    pub resource: ApiResource,
}

/// Every resource the model reads: the kinds local YAML reads, in every
/// API version it reads them in.
pub fn resources() -> Vec<Watched> {
    const ALL: [(&str, &str, &str, &str); 10] = [
        ("", "v1", "Namespace", "namespaces"),
        ("", "v1", "Pod", "pods"),
        ("", "v1", "Service", "services"),
        (
            "nodemesh.io",
            "v1alpha1",
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
        (
            "nodemesh.io",
            "v1alpha1",
            "PeerAuthentication",
            "peerauthentications",
        ),
        (
            "nodemesh.io",
            "v1alpha1",
            "TrafficPolicy",
            "trafficpolicies",
        ),
        (
            "security.istio.io",
            "v1",
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
        (
            "security.istio.io",
            "v1",
            "PeerAuthentication",
            "peerauthentications",
        ),
        ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
        ("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
    ];
    ALL.iter()
        .map(|&(group, version, kind, plural)| Watched {
            name: if group.is_empty() {
                plural.to_owned()
            } else {
                format!("{plural}.{group}")
            },
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind),
                plural,
            ),
        })
        .collect()
}

/// Which pods the source watches.
pub enum Scope {
    /// Every pod (the CA, waypoints, a node agent without a CA).
    Cluster,
    /// `node`'s pods only (a field selector on `spec.nodeName`); the other
    /// nodes' come from `others`, the CA's workload directory
    /// ([`super::directory`]).
    Node { node: String, others: Feed },
}

/// Watch events from somewhere other than the API server.
pub type Feed = BoxStream<'static, Result<watcher::Event<DynamicObject>, watcher::Error>>;

/// What the other nodes' pods are called in status and logs.
pub const DIRECTORY: &str = "pods of other nodes (the CA's directory)";

/// What the source is doing, for `meshctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// Every resource listed and its watch running.
    pub connected: bool,
    /// Resources not listed yet (at start, or since a relist began).
    pub unsynced: Vec<String>,
    /// Resources whose watch failed within the last 40 s and has not
    /// delivered since.
    pub failing: BTreeSet<String>,
    /// Resources this API server does not serve (404: their CRD is not
    /// installed), read as empty until they appear.
    pub not_served: BTreeSet<String>,
    /// The latest watch error, kept until the watches recover.
    pub last_error: Option<String>,
    /// The serving model was built from objects as the API server last
    /// listed them; when disconnected it is the last good one.
    pub serving_last_good: bool,
}

impl SourceStatus {
    /// What keeps the source from being connected, in words (empty when
    /// nothing does).
    pub fn trouble(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.unsynced.is_empty() {
            why.push(format!("not listed yet: {}", self.unsynced.join(", ")));
        }
        if !self.failing.is_empty() {
            let failing: Vec<&str> = self.failing.iter().map(String::as_str).collect();
            why.push(format!("watches failing: {}", failing.join(", ")));
        }
        if let Some(e) = &self.last_error {
            why.push(format!("last error: {e}"));
        }
        why
    }
}

/// Watches the API server through `client`, waits until every resource has
/// been listed once, and returns the model then; the task updates it as
/// objects change, until every receiver is gone.
pub async fn watch(
    client: Client,
    status: Arc<Mutex<SourceStatus>>,
    scope: Scope,
) -> (watch::Receiver<Arc<Loaded>>, JoinHandle<()>) {
    let watched = resources();
    let mut index = Index::default();
    for w in &watched {
        index.expect(&w.name);
    }
    let (pods, others) = match scope {
        Scope::Cluster => (watcher::Config::default(), None),
        Scope::Node { node, others } => (
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            Some(others),
        ),
    };
    let pods_resource = watched
        .iter()
        .find(|w| w.name == "pods")
        .expect("pods are watched")
        .resource
        .clone();
    let mut streams: Vec<BoxStream<'static, Event>> = watched
        .into_iter()
        .map(|w| {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &w.resource);
            let config = if w.name == "pods" {
                pods.clone()
            } else {
                watcher::Config::default()
            };
            let Watched { name, resource } = w;
            watcher(api, config)
                .default_backoff()
                .map(move |event| (name.clone(), resource.clone(), event))
                .boxed()
        })
        .collect();
    if let Some(others) = others {
        index.expect(DIRECTORY);
        streams.push(
            others
                .map(move |event| (DIRECTORY.to_owned(), pods_resource.clone(), event))
                .boxed(),
        );
    }
    let mut events = select_all(streams);
    let (tx, rx) = watch::channel(Arc::new(Loaded::default()));
    let mut published = false;
    let task = async move {
        let mut health = Health::default();
        let mut tick = tokio::time::interval(STATUS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                event = events.next() => match event {
                    Some(event) => event,
                    None => return,
                },
                _ = tick.tick() => {
                    health.report(&index, &status, published);
                    continue;
                }
            };
            health.apply(&mut index, first);
            // Let a burst (a relist, a kubectl apply of many objects)
            // settle into one model, within a bound.
            let deadline = Instant::now() + MAX_BATCH;
            loop {
                let wait = SETTLE.min(deadline.saturating_duration_since(Instant::now()));
                match tokio::time::timeout(wait, events.next()).await {
                    Ok(Some(more)) => health.apply(&mut index, more),
                    Ok(None) | Err(_) => break,
                }
            }
            health.report(&index, &status, published);
            if !index.ready() {
                continue;
            }
            let loaded = index.load();
            if !published || **tx.borrow() != loaded {
                super::watch::report(&loaded);
                if !published {
                    published = true;
                    health.report(&index, &status, published);
                }
                if tx.send(Arc::new(loaded)).is_err() {
                    return;
                }
            }
        }
    };
    let mut first = rx.clone();
    let task = tokio::spawn(task);
    // The first model: every resource listed.
    let _ = first.changed().await;
    (rx, task)
}

type Event = (
    String,
    ApiResource,
    Result<watcher::Event<DynamicObject>, watcher::Error>,
);

/// What the watches have said about themselves.
#[derive(Default)]
struct Health {
    /// When each failing resource last failed.
    failing: BTreeMap<String, Instant>,
    last_error: Option<String>,
    not_served: BTreeSet<String>,
}

impl Health {
    fn apply(&mut self, index: &mut Index, (name, resource, event): Event) {
        let change = match event {
            Ok(watcher::Event::Apply(o)) => Change::Apply(object(&resource, o)),
            Ok(watcher::Event::Delete(o)) => Change::Delete(object(&resource, o)),
            Ok(watcher::Event::Init) => Change::Init,
            Ok(watcher::Event::InitApply(o)) => Change::InitApply(object(&resource, o)),
            Ok(watcher::Event::InitDone) => {
                tracing::debug!(resource = %name, "listed");
                self.not_served.remove(&name);
                Change::InitDone
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 404 => {
                // Not an outage: this cluster has no such resource (e.g.
                // Istio's CRDs are not installed). Read it as empty, so the
                // rest of the model serves; the watcher keeps retrying and
                // lists it once it appears.
                if self.not_served.insert(name.clone()) {
                    tracing::warn!(
                        resource = %name,
                        "not served by the API server (is its CRD installed?); read as empty \
                         until it is"
                    );
                }
                index.change(&name, Change::Init);
                index.change(&name, Change::InitDone);
                return;
            }
            Err(e) => {
                tracing::warn!(
                    resource = %name,
                    "watch failed: {e}; serving the last good model, retrying with backoff"
                );
                self.last_error = Some(format!("{name}: {e}"));
                self.failing.insert(name, Instant::now());
                return;
            }
        };
        // A watch that delivers again has recovered.
        if matches!(
            change,
            Change::Apply(_) | Change::Delete(_) | Change::InitDone
        ) {
            self.failing.remove(&name);
        }
        index.change(&name, change);
    }

    fn report(&mut self, index: &Index, status: &Mutex<SourceStatus>, published: bool) {
        self.failing.retain(|_, at| at.elapsed() < FAILING_FOR);
        let unsynced: Vec<String> = index.unsynced().into_iter().map(str::to_owned).collect();
        let connected = unsynced.is_empty() && self.failing.is_empty();
        if connected {
            self.last_error = None;
        }
        *status.lock().expect("source status") = SourceStatus {
            connected,
            unsynced,
            failing: self.failing.keys().cloned().collect(),
            not_served: self.not_served.clone(),
            last_error: self.last_error.clone(),
            serving_last_good: published && !connected,
        };
    }
}

/// An object as the loader reads it: list items carry no `apiVersion` and
/// `kind`, so they are set from the resource watched.
fn object(resource: &ApiResource, object: DynamicObject) -> Value {
    let mut value = serde_yaml_ng::to_value(&object).unwrap_or(Value::Null);
    if let Value::Mapping(map) = &mut value {
        map.insert("apiVersion".into(), resource.api_version.clone().into());
        map.insert("kind".into(), resource.kind.clone().into());
    }
    value
}

pub mod conditions;

#[cfg(test)]
pub(crate) mod mock;
#[cfg(test)]
mod tests;
