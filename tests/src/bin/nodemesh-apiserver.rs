//! A stand-in Kubernetes API server for the end-to-end tests: serves the
//! objects of a local config directory through the API server's list and
//! watch protocol (plain HTTP), so an agent run with `--kubernetes` reads
//! the same cluster the local-mode tests describe. Files are re-read every
//! 100 ms; each change is a watch event (ADDED, MODIFIED, DELETED) with its
//! own resourceVersion, and quiet watches get a BOOKMARK every 2 s.
//!
//! Beyond list/watch, what the agent and the CA write and ask: a single
//! object's GET (the agent's own Node), merge-patch PATCH with the
//! `metadata.resourceVersion` precondition (409 Conflict), on objects and
//! their `/status` (the node taint, the CA's status conditions), and
//! TokenReview for the tokens given with `--token`. Every PATCH and
//! TokenReview is reported on stdout as a JSON line, for the test to
//! follow. A patch lasts: it is applied again over the file's object at
//! every re-read.
//!
//! Lists and watches of pods honour the field selector `spec.nodeName=NODE`
//! (as node agents ask), a watch turning a pod that leaves the selection
//! into DELETED as the API server does; any other field selector is
//! refused (400), never ignored. Each list and watch is reported on stdout
//! (`{"event": "list"|"watch", "path", "fieldSelector"}`).
//!
//! Not a real API server: no auth, no pagination (every list is one page),
//! no label selectors, no generations, watches resume only from versions it
//! has served. That is the protocol surface nodemesh uses.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, channel::Channel, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Deserialize as _;
use serde_json::{Value, json};
use tokio::sync::watch;

#[derive(Parser)]
struct Args {
    /// The local-mode directory whose objects are served.
    #[arg(long)]
    config_dir: PathBuf,
    #[arg(long)]
    listen: SocketAddr,
    /// A token TokenReview accepts: `TOKEN=USERNAME`,
    /// `TOKEN=USERNAME@NODE` (the node bound into it, as the
    /// `authentication.kubernetes.io/node-name` extra) or
    /// `TOKEN=USERNAME@NODE/POD` (and the pod's name, as
    /// `authentication.kubernetes.io/pod-name`). Other tokens are not
    /// authenticated.
    #[arg(long = "token", value_parser = parse_token)]
    tokens: Vec<(String, Known)>,
}

/// Who a `--token` is.
#[derive(Clone, Debug)]
struct Known {
    username: String,
    node: Option<String>,
    pod: Option<String>,
}

fn parse_token(text: &str) -> Result<(String, Known), String> {
    let (token, user) = text
        .split_once('=')
        .ok_or("expected TOKEN=USERNAME[@NODE[/POD]]")?;
    let (username, bound) = match user.split_once('@') {
        Some((u, b)) => (u, Some(b)),
        None => (user, None),
    };
    let (node, pod) = match bound.map(|b| b.split_once('/')) {
        None => (None, None),
        Some(None) => (bound.map(str::to_owned), None),
        Some(Some((n, p))) => (Some(n.to_owned()), Some(p.to_owned())),
    };
    Ok((
        token.to_owned(),
        Known {
            username: username.to_owned(),
            node,
            pod,
        },
    ))
}

type Body = BoxBody<Bytes, Infallible>;

/// Objects by resource path (`/api/v1/pods`), then `namespace/name`.
type Objects = BTreeMap<String, BTreeMap<String, Value>>;

#[derive(Default)]
struct Store {
    version: u64,
    objects: Objects,
    /// Every change: (version, resource path, watch event).
    log: Vec<(u64, String, Value)>,
    /// Merge patches received, by (resource path, `namespace/name`),
    /// applied over the directory's objects at every re-read.
    patches: BTreeMap<(String, String), Value>,
}

/// What the server needs to answer.
struct Server {
    /// Shared with the watches' tasks.
    store: Arc<Mutex<Store>>,
    changed: watch::Sender<u64>,
    dir: PathBuf,
    tokens: BTreeMap<String, Known>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let server = Arc::new(Server {
        store: Arc::default(),
        changed: watch::channel(0u64).0,
        dir: args.config_dir.clone(),
        tokens: args.tokens.into_iter().collect(),
    });
    reload(&server);
    {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                reload(&server);
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    println!(
        "{}",
        json!({"event": "listening", "addr": args.listen.to_string()})
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let server = Arc::clone(&server);
                async move { Ok::<_, Infallible>(answer(&server, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Re-reads the directory (with the patches received over it) and records
/// what changed as watch events.
fn reload(server: &Server) {
    let mut now = read_dir(&server.dir);
    let mut s = server.store.lock().expect("store");
    for ((path, key), patch) in &s.patches {
        if let Some(object) = now.get_mut(path).and_then(|held| held.get_mut(key)) {
            merge(object, patch);
        }
    }
    let mut events = Vec::new();
    let paths: std::collections::BTreeSet<String> =
        s.objects.keys().chain(now.keys()).cloned().collect();
    for path in paths {
        let empty = BTreeMap::new();
        let before = s.objects.get(&path).unwrap_or(&empty);
        let after = now.get(&path).unwrap_or(&empty);
        for (key, object) in after {
            match before.get(key) {
                None => events.push((path.clone(), key.clone(), "ADDED", object.clone())),
                Some(old) if without_version(old) != *object => {
                    events.push((path.clone(), key.clone(), "MODIFIED", object.clone()));
                }
                Some(_) => {}
            }
        }
        for (key, object) in before {
            if !after.contains_key(key) {
                events.push((path.clone(), key.clone(), "DELETED", object.clone()));
            }
        }
    }
    if events.is_empty() {
        return;
    }
    for (path, key, kind, mut object) in events {
        s.version += 1;
        let version = s.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let held = s.objects.entry(path.clone()).or_default();
        if kind == "DELETED" {
            held.remove(&key);
        } else {
            held.insert(key, object.clone());
        }
        s.log
            .push((version, path, json!({"type": kind, "object": object})));
    }
    let _ = server.changed.send(s.version);
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().expect("made an object above");
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn without_version(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    copy
}

/// Every object of the directory's YAML files, by resource path.
fn read_dir(dir: &Path) -> Objects {
    let mut objects = Objects::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let Ok(object) = Value::deserialize(doc) else {
                break;
            };
            let Some(path) = resource_path(&object) else {
                continue;
            };
            let meta = &object["metadata"];
            let key = format!(
                "{}/{}",
                meta["namespace"].as_str().unwrap_or_default(),
                meta["name"].as_str().unwrap_or_default()
            );
            objects.entry(path).or_default().insert(key, object);
        }
    }
    objects
}

/// Where the object is served: the path of the resource the agent watches
/// for its group and kind (`/api/v1/pods`,
/// `/apis/security.istio.io/v1/authorizationpolicies`), in any version of
/// that group, as an API server serves every version of a resource.
fn resource_path(object: &Value) -> Option<String> {
    let (api_version, kind) = (object["apiVersion"].as_str()?, object["kind"].as_str()?);
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    // Nodes: the agent reads and patches its own, not watched.
    if (group, kind) == ("", "Node") {
        return Some("/api/v1/nodes".to_owned());
    }
    let r = mesh_agent::state::cluster::resources()
        .into_iter()
        .map(|w| w.resource)
        .find(|r| r.group == group && r.kind == kind)?;
    Some(if r.group.is_empty() {
        format!("/api/{}/{}", r.version, r.plural)
    } else {
        format!("/apis/{}/{}/{}", r.group, r.version, r.plural)
    })
}

/// Where a single object's path points: (resource path, `namespace/name`,
/// whether it is the `/status` subresource).
fn object_of(path: &str) -> Option<(String, String, bool)> {
    let (path, status) = match path.strip_suffix("/status") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    match rest {
        [plural, name] => Some((format!("{prefix}/{plural}"), format!("/{name}"), status)),
        ["namespaces", ns, plural, name] => {
            Some((format!("{prefix}/{plural}"), format!("{ns}/{name}"), status))
        }
        _ => None,
    }
}

async fn answer(server: &Server, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let body: Value = match body.collect().await {
        Ok(bytes) => serde_json::from_slice(&bytes.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    match parts.method {
        http::Method::POST if path == "/apis/authentication.k8s.io/v1/tokenreviews" => {
            return token_review(server, body);
        }
        http::Method::PATCH => return patch(server, &path, &body),
        _ => {}
    }
    let selector = match query.get("fieldSelector").filter(|f| !f.is_empty()) {
        None => None,
        Some(text) => match NodeSelector::parse(&path, text) {
            Ok(selector) => Some(selector),
            Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", &message),
        },
    };
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    println!(
        "{}",
        json!({"event": if watching { "watch" } else { "list" }, "path": path,
               "fieldSelector": query.get("fieldSelector")})
    );
    if watching {
        let from = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        return watch_response(server, path, from, selector);
    }
    let s = server.store.lock().expect("store");
    if let Some((resource, key, _)) = object_of(&path)
        && !s.objects.contains_key(&path)
    {
        return match s.objects.get(&resource).and_then(|held| held.get(&key)) {
            Some(object) => json_response(StatusCode::OK, object),
            None => status_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{path} not found"),
            ),
        };
    }
    let items: Vec<Value> = s
        .objects
        .get(&path)
        .map(|o| {
            o.values()
                .filter(|o| selector.as_ref().is_none_or(|s| s.matches(o)))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let list = json!({
        "apiVersion": "v1", "kind": "List",
        "metadata": {"resourceVersion": s.version.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &list)
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("valid"),
    );
    response
}

fn status_error(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "reason": reason, "code": code.as_u16(), "message": message}),
    )
}

/// A merge patch on an object (its `status` only, for `/status`), on
/// condition of the resourceVersion it names.
fn patch(server: &Server, path: &str, body: &Value) -> Response<Body> {
    let Some((resource, key, status)) = object_of(path) else {
        return status_error(StatusCode::NOT_FOUND, "NotFound", path);
    };
    {
        let mut s = server.store.lock().expect("store");
        let Some(current) = s.objects.get(&resource).and_then(|held| held.get(&key)) else {
            return status_error(StatusCode::NOT_FOUND, "NotFound", path);
        };
        let wanted = &body["metadata"]["resourceVersion"];
        if !wanted.is_null() && *wanted != current["metadata"]["resourceVersion"] {
            return status_error(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version \
                 and try again",
            );
        }
        let mut change = body.clone();
        if let Some(meta) = change["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        let change = if status {
            json!({"status": body["status"]})
        } else {
            change
        };
        merge(
            s.patches
                .entry((resource.clone(), key.clone()))
                .or_default(),
            &change,
        );
    }
    reload(server);
    let s = server.store.lock().expect("store");
    let object = s.objects[&resource][&key].clone();
    println!(
        "{}",
        json!({"event": "patched", "path": path, "object": object})
    );
    json_response(StatusCode::OK, &object)
}

/// Authenticates the tokens given with `--token`, for any audience asked.
fn token_review(server: &Server, mut review: Value) -> Response<Body> {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let status = match server.tokens.get(token) {
        Some(known) => {
            let mut extra = json!({});
            if let Some(node) = &known.node {
                extra["authentication.kubernetes.io/node-name"] = json!([node]);
            }
            if let Some(pod) = &known.pod {
                extra["authentication.kubernetes.io/pod-name"] = json!([pod]);
            }
            json!({"authenticated": true, "audiences": review["spec"]["audiences"],
                   "user": {"username": known.username, "extra": extra}})
        }
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    println!(
        "{}",
        json!({"event": "tokenreview", "audiences": review["spec"]["audiences"],
               "status": status})
    );
    review["status"] = status;
    json_response(StatusCode::CREATED, &review)
}

/// The field selector this server understands: pods by `spec.nodeName`.
struct NodeSelector(String);

impl NodeSelector {
    fn parse(path: &str, text: &str) -> Result<Self, String> {
        match text.strip_prefix("spec.nodeName=") {
            Some(node) if path == "/api/v1/pods" => Ok(Self(node.to_owned())),
            _ => Err(format!(
                "field selector {text:?} on {path} is not supported by this stand-in (only \
                 spec.nodeName=NODE on pods)"
            )),
        }
    }

    fn matches(&self, object: &Value) -> bool {
        object["spec"]["nodeName"].as_str() == Some(self.0.as_str())
    }
}

/// The changes to `path` after version `from` (those `selector` selects),
/// then each new one as it happens, with a BOOKMARK when quiet.
fn watch_response(
    server: &Server,
    path: String,
    from: u64,
    selector: Option<NodeSelector>,
) -> Response<Body> {
    let mut changed = server.changed.subscribe();
    let store = Arc::clone(&server.store);
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(16);
    tokio::spawn(async move {
        let mut sent = from;
        // What the watcher holds (what it listed): an object leaving the
        // selection is DELETED for it, one entering it ADDED.
        let mut visible: std::collections::BTreeSet<String> = {
            let s = store.lock().expect("store");
            s.objects
                .get(&path)
                .map(|held| {
                    held.iter()
                        .filter(|(_, o)| selector.as_ref().is_some_and(|sel| sel.matches(o)))
                        .map(|(key, _)| key.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        loop {
            let (lines, latest) = {
                let s = store.lock().expect("store");
                let lines: Vec<String> = s
                    .log
                    .iter()
                    .filter(|(v, p, _)| *v > sent && *p == path)
                    .filter_map(|(_, _, e)| match &selector {
                        None => Some(e.clone()),
                        Some(selector) => selected(selector, &mut visible, e),
                    })
                    .map(|e| format!("{e}\n"))
                    .collect();
                (lines, s.version)
            };
            sent = latest;
            for line in lines {
                if tx.send_data(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
            let quiet = tokio::time::timeout(Duration::from_secs(2), changed.changed()).await;
            match quiet {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "apiVersion": "v1", "kind": "Bookmark",
                        "metadata": {"resourceVersion": sent.to_string()}}});
                    if tx
                        .send_data(Bytes::from(format!("{bookmark}\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let mut response = Response::new(body.boxed());
    *response.status_mut() = StatusCode::OK;
    response
}

/// A watch event as a watcher with `selector` sees it (`None`: not at all).
fn selected(
    selector: &NodeSelector,
    visible: &mut std::collections::BTreeSet<String>,
    event: &Value,
) -> Option<Value> {
    let object = &event["object"];
    let key = format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    );
    let was = visible.contains(&key);
    let is = event["type"] != "DELETED" && selector.matches(object);
    let kind = match (was, is) {
        (false, false) => return None,
        (false, true) => "ADDED",
        (true, true) => "MODIFIED",
        (true, false) => "DELETED",
    };
    if is {
        visible.insert(key);
    } else {
        visible.remove(&key);
    }
    Some(json!({"type": kind, "object": object}))
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}
