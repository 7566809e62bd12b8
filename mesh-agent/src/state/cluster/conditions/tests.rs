//! Status conditions: the decision on its own (table), then the writer
//! against an API server mocked at the HTTP level, watch events and all.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

use super::{report, status_patch};
use crate::state::cluster::{
    mock::{self, Feed},
    resources,
};

const POLICIES: &str = "/apis/nodemesh.io/v1alpha1/authorizationpolicies";

fn policies() -> ApiResource {
    resources()
        .into_iter()
        .find(|w| w.name == "authorizationpolicies.nodemesh.io")
        .unwrap()
        .resource
}

/// A nodemesh AuthorizationPolicy `shop/<name>`; a `typo` spells
/// `namespaces` wrong.
fn policy(name: &str, rv: &str, generation: i64, typo: bool, conditions: Option<Json>) -> Json {
    let from = if typo {
        json!({"namespace": ["legacy"]})
    } else {
        json!({"namespaces": ["legacy"]})
    };
    let mut object = json!({
        "apiVersion": "nodemesh.io/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv,
                     "generation": generation, "uid": format!("uid-{name}")},
        "spec": {"action": "DENY", "rules": [{"from": from}]}});
    if let Some(conditions) = conditions {
        object["status"] = json!({"conditions": conditions});
    }
    object
}

fn dynamic(value: &Json) -> DynamicObject {
    serde_json::from_value(value.clone()).unwrap()
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn accepted(status: &str, reason: &str, message: &str, generation: i64, since: &str) -> Json {
    json!({"type": "Accepted", "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": since})
}

const VALID: &str = "valid; in force in the mesh";

#[test]
fn the_condition_is_written_only_when_it_would_change() {
    let now = at("2025-06-01T12:00:00Z");
    let r = policies();
    let invalid = status_patch(&r, &dynamic(&policy("p", "5", 1, true, None)), now).unwrap();
    assert_eq!(invalid["metadata"]["resourceVersion"], "5");
    let condition = &invalid["status"]["conditions"][0];
    assert_eq!(
        (
            &condition["status"],
            &condition["reason"],
            &condition["observedGeneration"]
        ),
        (&json!("False"), &json!("Invalid"), &json!(1))
    );
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.starts_with("field spec.rules[0].from") && message.contains("`namespace`"),
        "{message}"
    );
    assert_eq!(condition["lastTransitionTime"], "2025-06-01T12:00:00Z");

    // Already said: nothing to write.
    let said = invalid["status"]["conditions"].clone();
    assert_eq!(
        status_patch(
            &r,
            &dynamic(&policy("p", "6", 1, true, Some(said.clone()))),
            now
        ),
        None
    );

    // Fixed (generation 2): True, a new transition time; another
    // controller's condition is kept.
    let other = json!({"type": "Example", "status": "True", "reason": "R", "message": "",
                       "lastTransitionTime": "2025-01-01T00:00:00Z"});
    let mut both = said.as_array().unwrap().clone();
    both.insert(0, other.clone());
    let later = at("2025-06-01T13:00:00Z");
    let fixed = status_patch(
        &r,
        &dynamic(&policy("p", "7", 2, false, Some(json!(both)))),
        later,
    )
    .unwrap();
    assert_eq!(
        fixed["status"]["conditions"],
        json!([
            other,
            accepted("True", "Accepted", VALID, 2, "2025-06-01T13:00:00Z")
        ])
    );

    // Still valid at generation 3: the generation moves, the transition
    // time stays.
    let valid_since = json!([accepted(
        "True",
        "Accepted",
        VALID,
        2,
        "2025-06-01T13:00:00Z"
    )]);
    let edited = status_patch(
        &r,
        &dynamic(&policy("p", "8", 3, false, Some(valid_since))),
        at("2025-06-02T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(
        edited["status"]["conditions"],
        json!([accepted(
            "True",
            "Accepted",
            VALID,
            3,
            "2025-06-01T13:00:00Z"
        )])
    );
}

/// What the mocked API server hands the test: the policies watch's feed,
/// and every status PATCH (path, body) as it arrives.
struct Server {
    feed: mpsc::UnboundedReceiver<Feed>,
    patches: mpsc::UnboundedReceiver<(String, Json)>,
}

/// Lists `bad` (invalid, no status) and `good` (valid, Accepted already
/// said) and nothing else; every watch stays open.
fn api_server() -> (kube::Client, Server) {
    let (feed_tx, feed) = mpsc::unbounded_channel();
    let (patch_tx, patches) = mpsc::unbounded_channel();
    let keep = Arc::new(Mutex::new(Vec::new()));
    let client = mock::client(move |req| {
        let path = req.path.clone();
        let watching = req.uri.contains("watch=true");
        match (&req.method, path.as_str(), watching) {
            (&Method::GET, POLICIES, false) => mock::answer(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "6"},
                "items": [
                    policy("bad", "5", 1, true, None),
                    policy("good", "6", 1, false, Some(json!([
                        accepted("True", "Accepted", VALID, 1, "2025-01-01T00:00:00Z")]))),
                ]}),
            ),
            (&Method::GET, POLICIES, true) => {
                let (tx, body) = mock::stream();
                let _ = feed_tx.send(tx);
                http::Response::new(body)
            }
            (&Method::GET, _, false) => mock::answer(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
                        "items": []}),
            ),
            (&Method::GET, _, true) => {
                let (tx, body) = mock::stream();
                keep.lock().unwrap().push(tx);
                http::Response::new(body)
            }
            (&Method::PATCH, _, _) => {
                assert_eq!(
                    req.content_type.as_deref(),
                    Some("application/merge-patch+json")
                );
                let _ = patch_tx.send((path.clone(), req.body.clone()));
                mock::answer(
                    StatusCode::OK,
                    &json!({"apiVersion": "nodemesh.io/v1alpha1", "kind": "AuthorizationPolicy",
                            "metadata": {"name": "x", "namespace": "shop"}}),
                )
            }
            (method, _, _) => panic!("unexpected {method} {}", req.uri),
        }
    });
    (client, Server { feed, patches })
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} within 20 s"))
        .unwrap()
}

async fn send(feed: &mut Feed, kind: &str, object: &Json) {
    let line = format!("{}\n", json!({"type": kind, "object": object}));
    feed.send_data(bytes::Bytes::from(line)).await.unwrap();
}

#[tokio::test]
async fn invalid_objects_are_marked_then_accepted_once_fixed_and_nothing_is_rewritten() {
    let (client, mut server) = api_server();
    let task = tokio::spawn(report(client));
    let status_path = "/apis/nodemesh.io/v1alpha1/namespaces/shop/authorizationpolicies/bad/status";

    let (path, invalid) = next(&mut server.patches, "the invalid policy's condition").await;
    assert_eq!(
        path, status_path,
        "only bad is written: good already says Accepted"
    );
    let conditions = invalid["status"]["conditions"].clone();
    assert_eq!(conditions[0]["reason"], "Invalid");
    assert_eq!(invalid["metadata"]["resourceVersion"], "5");

    // The write comes back as a watch event: judged again, nothing to say.
    // Then the user fixes the policy.
    let mut feed = next(&mut server.feed, "the policies watch").await;
    send(
        &mut feed,
        "MODIFIED",
        &policy("bad", "7", 1, true, Some(conditions)),
    )
    .await;
    let fixed = policy(
        "bad",
        "8",
        2,
        false,
        Some(invalid["status"]["conditions"].clone()),
    );
    send(&mut feed, "MODIFIED", &fixed).await;
    // Patches arrive in the order events are judged: had the echo been
    // rewritten, that write would come first.
    let (path, accepted) = next(&mut server.patches, "the fixed policy's condition").await;
    assert_eq!(path, status_path);
    assert_eq!(accepted["metadata"]["resourceVersion"], "8");
    let condition = &accepted["status"]["conditions"][0];
    assert_eq!(
        (
            &condition["status"],
            &condition["reason"],
            &condition["observedGeneration"]
        ),
        (&json!("True"), &json!("Accepted"), &json!(2))
    );
    assert!(server.patches.try_recv().is_err());
    task.abort();
}
