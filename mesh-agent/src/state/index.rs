//! The objects a watching source holds, kept per resource as its watch
//! reports them, and made into the model by the same [`Loader`] that reads
//! local YAML: one model, two sources, no check or conversion twice.
//!
//! A relist (a watch's `Init` … `InitDone`) is gathered aside and replaces
//! the resource's objects only once it is complete, so objects deleted
//! while the source was disconnected are pruned then, and until then the
//! last good objects keep serving: a lost API server never unenrols a pod
//! or drops a policy.
use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;

use super::{Loaded, parse::Loader};

/// Where [`ConfigError`](super::ConfigError)s of watched objects say they
/// came from.
pub const ORIGIN: &str = "api-server";

/// What a watch reports for one resource (kube-runtime's `watcher::Event`).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Added or modified.
    Apply(Value),
    Delete(Value),
    /// A (re)list starts: its objects follow, then [`Change::InitDone`].
    Init,
    InitApply(Value),
    InitDone,
}

/// Objects by resource (e.g. `pods`, `authorizationpolicies.nodemesh.io`),
/// then by `namespace/name`.
#[derive(Debug, Default)]
pub struct Index {
    resources: BTreeMap<String, Resource>,
}

#[derive(Debug, Default)]
struct Resource {
    objects: BTreeMap<String, Value>,
    /// A relist under way.
    relist: Option<BTreeMap<String, Value>>,
    /// A relist has completed at least once.
    synced: bool,
}

impl Index {
    /// Expects `resource`: the model is not [`Index::ready`] until it has
    /// been listed once.
    pub fn expect(&mut self, resource: &str) {
        self.resources.entry(resource.to_owned()).or_default();
    }

    pub fn change(&mut self, resource: &str, change: Change) {
        let r = self.resources.entry(resource.to_owned()).or_default();
        match change {
            Change::Apply(object) => {
                r.objects.insert(key(&object), object);
            }
            Change::Delete(object) => {
                r.objects.remove(&key(&object));
            }
            Change::Init => r.relist = Some(BTreeMap::new()),
            Change::InitApply(object) => {
                r.relist
                    .get_or_insert_default()
                    .insert(key(&object), object);
            }
            Change::InitDone => {
                // Without a relist under way there is nothing to replace
                // the objects with: keep them.
                if let Some(listed) = r.relist.take() {
                    r.objects = listed;
                }
                r.synced = true;
            }
        }
    }

    /// True once every expected resource was listed: before that the model
    /// would lack objects (pods without their namespaces, policies missing)
    /// and must not replace the one serving.
    pub fn ready(&self) -> bool {
        self.resources.values().all(|r| r.synced)
    }

    /// Resources not listed yet, for status and logs.
    pub fn unsynced(&self) -> Vec<&str> {
        self.resources
            .iter()
            .filter(|(_, r)| !r.synced)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The model of every object held. An object two resources hold (a
    /// pod passing from the workload directory to the node's own watch) is
    /// read once.
    pub fn load(&self) -> Loaded {
        let mut loader = Loader::cluster();
        let mut seen = BTreeSet::new();
        for (i, object) in self
            .resources
            .values()
            .flat_map(|r| r.objects.iter())
            .filter(|(key, object)| {
                let text = |field: &str| object.get(field).and_then(Value::as_str);
                seen.insert((text("apiVersion"), text("kind"), *key))
            })
            .map(|(_, object)| object)
            .enumerate()
        {
            loader.document(ORIGIN, i + 1, object.clone());
        }
        loader.finish()
    }
}

/// What is wrong with one watched object, checked by the same loader as
/// the model (empty: it is valid).
pub fn problems(object: Value) -> Vec<super::ConfigError> {
    let mut loader = Loader::cluster();
    loader.document(ORIGIN, 1, object);
    loader.finish().errors
}

/// `namespace/name` (`/name` for cluster-scoped objects).
fn key(object: &Value) -> String {
    let meta = object.get("metadata");
    let text = |field: &str| {
        meta.and_then(|m| m.get(field))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    format!("{}/{}", text("namespace"), text("name"))
}
