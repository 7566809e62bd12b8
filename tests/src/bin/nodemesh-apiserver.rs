//! A stand-in Kubernetes API server for the end-to-end tests: serves the
//! objects of a local config directory through the API server's list and
//! watch protocol (plain HTTP), so an agent run with `--kubernetes` reads
//! the same cluster the local-mode tests describe. Files are re-read every
//! 100 ms; each change is a watch event (ADDED, MODIFIED, DELETED) with its
//! own resourceVersion, and quiet watches get a BOOKMARK every 2 s.
//!
//! Not a real API server: no auth, no pagination (every list is one page),
//! no field or label selectors, watches resume only from versions it has
//! served. That is the protocol surface the agent's watchers use.
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let store = Arc::new(Mutex::new(Store::default()));
    let (changed, _) = watch::channel(0u64);
    let changed = Arc::new(changed);
    reload(&store, &changed, &args.config_dir);
    {
        let (store, changed, dir) = (
            Arc::clone(&store),
            Arc::clone(&changed),
            args.config_dir.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                reload(&store, &changed, &dir);
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
        let (store, changed) = (Arc::clone(&store), Arc::clone(&changed));
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (store, changed) = (Arc::clone(&store), Arc::clone(&changed));
                async move { Ok::<_, Infallible>(answer(&store, &changed, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Re-reads the directory and records what changed as watch events.
fn reload(store: &Mutex<Store>, changed: &watch::Sender<u64>, dir: &Path) {
    let now = read_dir(dir);
    let mut s = store.lock().expect("store");
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
    let _ = changed.send(s.version);
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

fn answer(
    store: &Arc<Mutex<Store>>,
    changed: &Arc<watch::Sender<u64>>,
    req: &Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let from = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        return watch_response(Arc::clone(store), changed.subscribe(), path, from);
    }
    let s = store.lock().expect("store");
    let items: Vec<Value> = s
        .objects
        .get(&path)
        .map(|o| o.values().cloned().collect())
        .unwrap_or_default();
    let list = json!({
        "apiVersion": "v1", "kind": "List",
        "metadata": {"resourceVersion": s.version.to_string()},
        "items": items,
    });
    let mut response = Response::new(full(list.to_string()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("valid"),
    );
    response
}

/// The changes to `path` after version `from`, then each new one as it
/// happens, with a BOOKMARK when quiet.
fn watch_response(
    store: Arc<Mutex<Store>>,
    mut changed: watch::Receiver<u64>,
    path: String,
    from: u64,
) -> Response<Body> {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(16);
    tokio::spawn(async move {
        let mut sent = from;
        loop {
            let (lines, latest) = {
                let s = store.lock().expect("store");
                let lines: Vec<String> = s
                    .log
                    .iter()
                    .filter(|(v, p, _)| *v > sent && *p == path)
                    .map(|(_, _, e)| format!("{e}\n"))
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

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}
