//! Lifting the taint against an API server mocked at the HTTP level: what
//! the agent reads and what exactly it writes.
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use serde_json::{Value as Json, json};

use super::{Removal, TAINT_KEY, remove};
use crate::state::cluster::mock::{self, Seen};

const NODE_PATH: &str = "/api/v1/nodes/n1";

fn taint(key: &str, effect: &str) -> Json {
    json!({"key": key, "value": "true", "effect": effect})
}

fn node(rv: &str, taints: &[Json]) -> Json {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": "n1", "resourceVersion": rv},
           "spec": {"taints": taints}})
}

/// A mock serving Node n1 as each GET finds it (`versions` in turn, the
/// last one repeated) and answering PATCHes with `patch_statuses` in turn
/// (200 after them); returns every request seen.
fn api_server(
    versions: Vec<Json>,
    patch_statuses: Vec<StatusCode>,
) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let (mut gets, mut patches) = (0, 0);
    let client = mock::client(move |req| {
        log.lock().unwrap().push(req.clone());
        assert_eq!(req.path, NODE_PATH);
        match req.method {
            Method::GET => {
                let version = &versions[gets.min(versions.len() - 1)];
                gets += 1;
                mock::answer(StatusCode::OK, version)
            }
            Method::PATCH => {
                let status = patch_statuses
                    .get(patches)
                    .copied()
                    .unwrap_or(StatusCode::OK);
                patches += 1;
                match status {
                    StatusCode::OK => mock::answer(status, &versions[gets - 1]),
                    StatusCode::CONFLICT => mock::status_error(
                        status,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest \
                         version and try again",
                    ),
                    _ => mock::status_error(status, "Forbidden", "nodes \"n1\" is forbidden"),
                }
            }
            other => panic!("unexpected {other} {}", req.uri),
        }
    });
    (client, seen)
}

fn patches(seen: &Mutex<Vec<Seen>>) -> Vec<Seen> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == Method::PATCH)
        .cloned()
        .collect()
}

#[tokio::test]
async fn only_our_taint_is_removed_on_condition_the_node_is_unchanged() {
    let others = [
        taint("node.kubernetes.io/unschedulable", "NoSchedule"),
        taint("example.com/gpu", "NoExecute"),
    ];
    let (client, seen) = api_server(
        vec![node(
            "10",
            &[
                others[0].clone(),
                taint(TAINT_KEY, "NoExecute"),
                others[1].clone(),
            ],
        )],
        vec![],
    );
    assert_eq!(remove(&client, "n1").await.unwrap(), Removal::Removed);
    let patches = patches(&seen);
    assert_eq!(patches.len(), 1, "{patches:#?}");
    let patch = &patches[0];
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        patch.body,
        json!({"metadata": {"resourceVersion": "10"}, "spec": {"taints": others}})
    );
}

#[tokio::test]
async fn no_patch_when_the_taint_is_absent() {
    let (client, seen) = api_server(
        vec![node("10", &[taint("example.com/gpu", "NoExecute")])],
        vec![],
    );
    assert_eq!(remove(&client, "n1").await.unwrap(), Removal::Absent);
    assert!(patches(&seen).is_empty());
    let (client, seen) = api_server(
        vec![json!({"apiVersion": "v1", "kind": "Node",
                     "metadata": {"name": "n1", "resourceVersion": "3"}, "spec": {}})],
        vec![],
    );
    assert_eq!(remove(&client, "n1").await.unwrap(), Removal::Absent);
    assert!(patches(&seen).is_empty());
}

#[tokio::test]
async fn a_conflict_reads_again_and_keeps_the_taint_added_meanwhile() {
    let added = taint("example.com/maintenance", "NoSchedule");
    let (client, seen) = api_server(
        vec![
            node("10", &[taint(TAINT_KEY, "NoExecute")]),
            // Someone tainted the node between our read and our write.
            node("11", &[taint(TAINT_KEY, "NoExecute"), added.clone()]),
        ],
        vec![StatusCode::CONFLICT],
    );
    assert_eq!(remove(&client, "n1").await.unwrap(), Removal::Removed);
    let patches = patches(&seen);
    assert_eq!(patches.len(), 2, "{patches:#?}");
    assert_eq!(patches[0].body["metadata"]["resourceVersion"], "10");
    assert_eq!(
        patches[1].body,
        json!({"metadata": {"resourceVersion": "11"}, "spec": {"taints": [added]}})
    );
}

#[tokio::test]
async fn endless_conflicts_and_refusals_are_errors_that_say_so() {
    let (client, _) = api_server(
        vec![node("10", &[taint(TAINT_KEY, "NoExecute")])],
        vec![StatusCode::CONFLICT; 10],
    );
    let err = remove(&client, "n1").await.unwrap_err().to_string();
    assert!(
        err.contains("changed under every one of 5 attempts"),
        "{err}"
    );

    let (client, _) = api_server(
        vec![node("10", &[taint(TAINT_KEY, "NoExecute")])],
        vec![StatusCode::FORBIDDEN],
    );
    let err = remove(&client, "n1").await.unwrap_err().to_string();
    assert!(err.contains("may the agent patch nodes?"), "{err}");
}
