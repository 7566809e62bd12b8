//! The Kubernetes source of the model: one watch (list, then watch, with
//! bookmarks; a relist after `410 Gone` or a reconnect) per resource the
//! model reads, feeding the [`Index`], whose model goes out on the same
//! channel the local directory's does.
//!
//! The model is published only once every resource has been listed, and
//! while the API server is unreachable the last good one keeps serving:
//! losing the API server never unenrols a pod or drops a policy. What the
//! source is doing is in [`SourceStatus`].
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt as _, stream::select_all};
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

/// Events arriving closer together than this are applied as one change.
const SETTLE: Duration = Duration::from_millis(50);

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

/// What the source is doing, for `meshctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// Every resource listed and its watch running.
    pub connected: bool,
    /// Resources not listed yet (at start, or since a relist began).
    pub unsynced: Vec<String>,
    /// Resources whose watch failed and has not delivered since.
    pub failing: BTreeSet<String>,
    /// The latest watch error, kept until the watches recover.
    pub last_error: Option<String>,
    /// The serving model was built from objects as the API server last
    /// listed them; when disconnected it is the last good one.
    pub serving_last_good: bool,
}

/// Watches the API server through `client`, waits until every resource has
/// been listed once, and returns the model then; the task updates it as
/// objects change, until every receiver is gone.
pub async fn watch(
    client: Client,
    status: Arc<Mutex<SourceStatus>>,
) -> (watch::Receiver<Arc<Loaded>>, JoinHandle<()>) {
    let watched = resources();
    let mut index = Index::default();
    for w in &watched {
        index.expect(&w.name);
    }
    let streams = watched.into_iter().map(|w| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &w.resource);
        let Watched { name, resource } = w;
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |event| (name.clone(), resource.clone(), event))
            .boxed()
    });
    let mut events = select_all(streams);
    let (tx, rx) = watch::channel(Arc::new(Loaded::default()));
    let mut published = false;
    let task = async move {
        loop {
            let Some(first) = events.next().await else {
                return;
            };
            apply(&mut index, &status, first);
            // Let a burst (a relist, a kubectl apply of many objects)
            // settle into one model.
            while let Ok(Some(more)) = tokio::time::timeout(SETTLE, events.next()).await {
                apply(&mut index, &status, more);
            }
            report(&index, &status, published);
            if !index.ready() {
                continue;
            }
            let loaded = index.load();
            if !published || **tx.borrow() != loaded {
                super::watch::report(&loaded);
                if !published {
                    published = true;
                    report(&index, &status, published);
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

fn apply(index: &mut Index, status: &Mutex<SourceStatus>, (name, resource, event): Event) {
    let change = match event {
        Ok(watcher::Event::Apply(o)) => Change::Apply(object(&resource, o)),
        Ok(watcher::Event::Delete(o)) => Change::Delete(object(&resource, o)),
        Ok(watcher::Event::Init) => Change::Init,
        Ok(watcher::Event::InitApply(o)) => Change::InitApply(object(&resource, o)),
        Ok(watcher::Event::InitDone) => {
            tracing::debug!(resource = %name, "listed");
            Change::InitDone
        }
        Err(e) => {
            tracing::warn!(
                resource = %name,
                "watch failed: {e}; serving the last good model, retrying with backoff"
            );
            let mut s = status.lock().expect("source status");
            s.last_error = Some(format!("{name}: {e}"));
            s.failing.insert(name);
            return;
        }
    };
    // A watch that delivers again has recovered (bookmarks are not seen
    // here, so a quiet resource recovers at its next change or relist).
    if matches!(
        change,
        Change::Apply(_) | Change::Delete(_) | Change::InitDone
    ) {
        status.lock().expect("source status").failing.remove(&name);
    }
    index.change(&name, change);
}

fn report(index: &Index, status: &Mutex<SourceStatus>, published: bool) {
    let unsynced: Vec<String> = index.unsynced().into_iter().map(str::to_owned).collect();
    let mut s = status.lock().expect("source status");
    s.connected = unsynced.is_empty() && s.failing.is_empty();
    if s.connected {
        s.last_error = None;
    }
    s.serving_last_good = published && !s.connected;
    s.unsynced = unsynced;
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

#[cfg(test)]
mod tests;
