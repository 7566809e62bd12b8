//! Telling users, on the object itself, what the mesh made of their
//! nodemesh.io objects: a status condition `Accepted` — `True` when the
//! object is valid, `False` with reason `Invalid` and the loader's message
//! naming the field when it is not — with the generation it judged, as
//! `kubectl get` and `kubectl describe` show it.
//!
//! Written by the CA (one replica, so one writer) through the `/status`
//! subresource, only when the condition would change, so that its own
//! writes, which come back as watch events, end there. Only nodemesh.io
//! objects: Istio's and the Gateway API's belong to their own controllers.
//!
//! Its own watches, apart from the model's: a status write never makes a
//! new model, and the judge sees each object's current status.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures::{StreamExt as _, stream::select_all};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Client,
    api::{Api, ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value as Json, json};

use super::resources;
use crate::state::index::problems;

pub const ACCEPTED: &str = "Accepted";
/// The group whose objects are ours to judge.
const GROUP: &str = "nodemesh.io";
/// metav1.Condition's limit on `message`.
const MAX_MESSAGE: usize = 32 * 1024;
/// How often writes that failed are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// The `status` merge patch that brings `object`'s Accepted condition up
/// to date as of `now`, or `None` when it already says what it should.
/// Other conditions are kept; the patch carries the object's
/// resourceVersion, so a status written meanwhile by anyone else is never
/// overwritten (the write fails with a conflict, and the newer object is
/// judged again).
pub fn status_patch(
    resource: &ApiResource,
    object: &DynamicObject,
    now: Timestamp,
) -> Option<Json> {
    let errors = problems(super::object(resource, object.clone()));
    let (status, reason, message) = if errors.is_empty() {
        ("True", ACCEPTED, "valid; in force in the mesh".to_owned())
    } else {
        let all: Vec<String> = errors.iter().map(|e| e.on_the_object()).collect();
        ("False", "Invalid", truncate(all.join("; ")))
    };
    let generation = object.metadata.generation;
    let mut conditions: Vec<Condition> = object
        .data
        .pointer("/status/conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let current = conditions.iter().position(|c| c.type_ == ACCEPTED);
    let transition = match current.map(|i| &conditions[i]) {
        Some(c)
            if c.status == status
                && c.reason == reason
                && c.message == message
                && c.observed_generation == generation =>
        {
            return None;
        }
        // The same verdict on a newer generation (or in other words) has
        // not transitioned.
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let accepted = Condition {
        type_: ACCEPTED.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    };
    match current {
        Some(i) => conditions[i] = accepted,
        None => conditions.push(accepted),
    }
    Some(json!({
        "metadata": {"resourceVersion": object.metadata.resource_version},
        "status": {"conditions": conditions},
    }))
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// Keeps every nodemesh.io object's Accepted condition up to date, until
/// the process ends.
pub async fn report(client: Client) {
    let ours: Vec<ApiResource> = resources()
        .into_iter()
        .map(|w| w.resource)
        .filter(|r| r.group == GROUP)
        .collect();
    let streams = ours.into_iter().map(|resource| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |event| (resource.clone(), event))
            .boxed()
    });
    let mut events = select_all(streams);
    // The newest copy of each object whose condition could not be
    // written, by resource plural and namespace/name.
    let mut pending: BTreeMap<(String, String), (ApiResource, DynamicObject)> = BTreeMap::new();
    // Resources whose watch is failing, warned about once.
    let mut failing: BTreeSet<String> = BTreeSet::new();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some((resource, Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)))) => {
                    failing.remove(&resource.plural);
                    let key = key_of(&resource, &o);
                    pending.remove(&key);
                    if !judge(&client, &resource, &o).await {
                        pending.insert(key, (resource, o));
                    }
                }
                Some((resource, Ok(watcher::Event::Delete(o)))) => {
                    pending.remove(&key_of(&resource, &o));
                }
                Some((_, Ok(watcher::Event::Init | watcher::Event::InitDone))) => {}
                Some((resource, Err(e))) => {
                    // Once per failing spell: a missing permission or CRD
                    // must show, without a line per retry.
                    if failing.insert(resource.plural.clone()) {
                        tracing::warn!(
                            resource = %resource.plural,
                            "status conditions: watch failing, no conditions are written for \
                             these objects until it recovers: {e}"
                        );
                    } else {
                        tracing::debug!(resource = %resource.plural, "status conditions: watch: {e}");
                    }
                }
                None => return,
            },
            _ = retry.tick() => {
                let again = std::mem::take(&mut pending);
                let mut failed = BTreeSet::new();
                for (key, (resource, o)) in &again {
                    if !judge(&client, resource, o).await {
                        failed.insert(key.clone());
                    }
                }
                pending = again.into_iter().filter(|(k, _)| failed.contains(k)).collect();
            }
        }
    }
}

fn key_of(resource: &ApiResource, object: &DynamicObject) -> (String, String) {
    let meta = &object.metadata;
    (
        resource.plural.clone(),
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
    )
}

/// Writes `object`'s condition if it changed; false when the write should
/// be tried again (a conflict is not: the newer object is on its way).
async fn judge(client: &Client, resource: &ApiResource, object: &DynamicObject) -> bool {
    let Some(patch) = status_patch(resource, object, Timestamp::now()) else {
        return true;
    };
    let (Some(namespace), Some(name)) = (&object.metadata.namespace, &object.metadata.name) else {
        return true;
    };
    let shown = format!("{} {namespace}/{name}", resource.kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            let condition = &patch["status"]["conditions"];
            let accepted = condition
                .as_array()
                .and_then(|l| l.iter().find(|c| c["type"] == ACCEPTED))
                .cloned()
                .unwrap_or_default();
            if accepted["status"] == "True" {
                tracing::info!(object = %shown, "status: Accepted");
            } else {
                tracing::warn!(
                    object = %shown,
                    "status: not Accepted (Invalid): {}",
                    accepted["message"].as_str().unwrap_or_default()
                );
            }
            true
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::debug!(object = %shown, "status write conflicted; judging the newer object");
            true
        }
        Err(e) => {
            tracing::warn!(
                object = %shown,
                "cannot write its status condition: {e} (may the CA patch {}/status in {}?); \
                 retrying",
                resource.plural,
                resource.group
            );
            false
        }
    }
}

#[cfg(test)]
mod tests;
