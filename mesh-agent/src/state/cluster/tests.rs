//! The Kubernetes source against an API server mocked at the HTTP level: the
//! real kube client and watchers, real list/watch requests and JSON bodies.
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use kube::Client;
use serde_json::{Value as Json, json};
use tokio::sync::{mpsc, oneshot};

use super::{
    DIRECTORY, Scope, SourceStatus,
    mock::{Feed, MockBody, full, stream},
    watch,
};
use crate::state::tests::pod_names;

fn list(kind: &str, rv: &str, next: &str, items: &[Json]) -> Json {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": rv, "continue": next}, "items": items})
}

fn namespace(name: &str) -> Json {
    json!({"metadata": {"name": name, "resourceVersion": "1",
           "labels": {"nodemesh.io/dataplane": "enabled"}}})
}

fn pod(name: &str, ip: &str, rv: &str) -> Json {
    json!({"metadata": {"name": name, "namespace": "shop", "resourceVersion": rv,
                        "labels": {"app": name}},
           "spec": {"nodeName": "n1", "serviceAccountName": format!("{name}-sa"),
                    "containers": [{"name": "app", "image": "app"}]},
           "status": {"podIP": ip}})
}

fn policy(name: &str) -> Json {
    json!({"metadata": {"name": name, "namespace": "shop", "resourceVersion": "3"},
           "spec": {"action": "DENY", "rules": [{"from": {"namespaces": ["legacy"]}}]}})
}

/// Watch events, one JSON object per line, as the API server streams them.
fn events(lines: &[Json]) -> MockBody {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    full_text(text)
}

fn full_text(text: String) -> MockBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

/// A watch that stays open and quiet; its sender is kept by the server.
fn open_watch(keep: &Mutex<Vec<Feed>>) -> MockBody {
    let (tx, body) = stream();
    keep.lock().unwrap().push(tx);
    body
}

/// What the mock saw and lets the test hold back.
struct Server {
    /// Every request's path and query, in arrival order.
    seen: Arc<Mutex<Vec<String>>>,
    /// Answers the pods relist (the one after `410 Gone`) when sent.
    release_relist: Option<oneshot::Sender<()>>,
    /// Tells the test the relist was asked for.
    relist_asked: mpsc::UnboundedReceiver<()>,
}

/// An API server with two namespaces (listed over two pages), pods `a` and
/// then `b`, a DENY policy, nothing else; its pods watch adds `b`, sends a
/// bookmark, then `410 Gone`, and the relist that follows has only `b`.
fn api_server() -> (Client, Server) {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (asked_tx, asked_rx) = mpsc::unbounded_channel();
    let server = Server {
        seen: Arc::clone(&seen),
        release_relist: Some(release_tx),
        relist_asked: asked_rx,
    };
    tokio::spawn(async move {
        let keep = Arc::new(Mutex::new(Vec::new()));
        let mut release = Some(release_rx);
        let mut pod_lists = 0;
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            seen.lock().unwrap().push(format!("{path}?{query}"));
            let watching = query.contains("watch=true");
            let response = match (path.as_str(), watching) {
                ("/api/v1/namespaces", false) if query.contains("continue=page2") => {
                    full(&list("Namespace", "7", "", &[namespace("legacy")]))
                }
                ("/api/v1/namespaces", false) => {
                    full(&list("Namespace", "7", "page2", &[namespace("shop")]))
                }
                ("/api/v1/pods", false) => {
                    pod_lists += 1;
                    if pod_lists == 1 {
                        full(&list("Pod", "10", "", &[pod("a", "10.1.0.11", "5")]))
                    } else {
                        // The relist: held until the test has looked at
                        // the model served meanwhile; `a` was deleted while
                        // the watch was down.
                        let _ = asked_tx.send(());
                        if let Some(release) = release.take() {
                            let _ = release.await;
                        }
                        full(&list("Pod", "30", "", &[pod("b", "10.1.0.12", "11")]))
                    }
                }
                ("/api/v1/pods", true) if query.contains("resourceVersion=10") => events(&[
                    json!({"type": "ADDED", "object": pod("b", "10.1.0.12", "11")}),
                    json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"resourceVersion": "20"}}}),
                    json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status",
                           "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                           "message": "too old resource version: 20 (30)"}}),
                ]),
                ("/apis/nodemesh.io/v1alpha1/authorizationpolicies", false) => full(&list(
                    "AuthorizationPolicy",
                    "3",
                    "",
                    &[policy("deny-legacy")],
                )),
                // This cluster has no GRPCRoute CRD.
                ("/apis/gateway.networking.k8s.io/v1/grpcroutes", _) => {
                    let mut response = Response::new(full(&json!({
                        "apiVersion": "v1", "kind": "Status", "metadata": {},
                        "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": "the server could not find the requested resource"})));
                    *response.status_mut() = http::StatusCode::NOT_FOUND;
                    send.send_response(response);
                    continue;
                }
                (_, false) => full(&list("Any", "1", "", &[])),
                (_, true) => open_watch(&keep),
            };
            send.send_response(Response::new(response));
        }
    });
    (Client::new(service, "default"), server)
}

#[tokio::test]
async fn lists_pages_watches_and_relists_after_410_without_dropping_what_serves() {
    let (client, mut server) = api_server();
    let status = Arc::new(Mutex::new(SourceStatus::default()));
    let (mut model, task) = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        watch(client, Arc::clone(&status), Scope::Cluster),
    )
    .await
    .expect("the first model, once every resource is listed");

    let first = model.borrow_and_update().clone();
    let not_served = status.lock().unwrap().not_served.clone();
    assert_eq!(
        not_served.iter().collect::<Vec<_>>(),
        ["grpcroutes.gateway.networking.k8s.io"],
        "a resource the API server does not serve is read as empty, not waited for"
    );
    let namespaces: Vec<&String> = first.snapshot.namespaces.keys().collect();
    assert_eq!(
        namespaces,
        ["legacy", "shop"],
        "both pages of the namespace list"
    );
    assert_eq!(first.snapshot.policies["shop"][0].name, "deny-legacy");
    assert!(first.errors.is_empty(), "{:#?}", first.errors);

    // The watch adds b; then 410 Gone: a relist is asked for, and until it
    // is answered the last good model (a and b) keeps serving.
    server
        .relist_asked
        .recv()
        .await
        .expect("a relist after 410 Gone");
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while pod_names(&model.borrow_and_update()) != ["a", "b"] {
            model.changed().await.unwrap();
        }
    })
    .await
    .expect("the watched ADDED of b served while the relist is held");
    {
        let s = status.lock().unwrap().clone();
        assert!(!s.connected, "{s:?}");
        assert!(s.serving_last_good, "{s:?}");
        assert!(
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("410") || e.contains("too old")),
            "{s:?}"
        );
    }
    server.release_relist.take().unwrap().send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            model.changed().await.unwrap();
            if pod_names(&model.borrow()) == ["b"] {
                return;
            }
        }
    })
    .await
    .expect("the relist prunes pod a, deleted while the watch was down");
    let s = status.lock().unwrap().clone();
    assert!(
        s.connected && s.last_error.is_none() && !s.serving_last_good,
        "{s:?}"
    );

    let seen = server.seen.lock().unwrap().clone();
    let has = |wanted: &str| seen.iter().any(|r| r.contains(wanted));
    assert!(
        has("/api/v1/namespaces?") && has("continue=page2"),
        "{seen:#?}"
    );
    assert!(
        has("allowWatchBookmarks=true"),
        "watches ask for bookmarks: {seen:#?}"
    );
    task.abort();
}

/// A node agent's source: the API server's pods of its node only (a field
/// selector), and the other nodes' from a feed (the CA's directory), which
/// must be listed before the first model is served.
#[tokio::test]
async fn a_node_scoped_source_watches_its_node_and_reads_the_rest_from_the_feed() {
    use futures::{SinkExt as _, StreamExt as _};
    use kube::{api::DynamicObject, runtime::watcher::Event};
    let (client, server) = api_server();
    let (mut others, feed) = futures::channel::mpsc::channel(8);
    let status = Arc::new(Mutex::new(SourceStatus::default()));
    let scope = Scope::Node {
        node: "n1".into(),
        others: feed.boxed(),
    };
    let watching = tokio::spawn(watch(client, Arc::clone(&status), scope));
    // Everything else is listed; the directory is not yet.
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while status.lock().unwrap().unsynced != [DIRECTORY] {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("only the directory left unlisted");
    assert!(
        !watching.is_finished(),
        "a model served before the directory was listed"
    );
    let mut remote = pod("r", "10.1.0.21", "1");
    remote["spec"]["nodeName"] = json!("n2");
    let remote: DynamicObject = serde_json::from_value(remote).unwrap();
    for event in [Event::Init, Event::InitApply(remote), Event::InitDone] {
        others.send(Ok(event)).await.unwrap();
    }
    let (model, task) = tokio::time::timeout(std::time::Duration::from_secs(20), watching)
        .await
        .expect("the first model once the directory is listed")
        .unwrap();
    let first = model.borrow().clone();
    let names = pod_names(&first);
    assert!(names.contains(&"a") && names.contains(&"r"), "{names:?}");
    let seen = server.seen.lock().unwrap().clone();
    let pods: Vec<&String> = seen
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods?"))
        .collect();
    assert!(
        !pods.is_empty()
            && pods
                .iter()
                .all(|r| r.contains("fieldSelector=spec.nodeName%3Dn1")),
        "every pod list and watch is scoped to the node: {pods:#?}"
    );
    task.abort();
}
