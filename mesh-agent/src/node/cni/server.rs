//! The agent's side of the CNI socket: decides whether a new sandbox's pod
//! belongs in the mesh and, if it does, answers only once the pod is
//! enrolled (listeners open, capture in place), so it never starts
//! uncaptured.
use std::{path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    sync::{mpsc, oneshot, watch},
};

use super::protocol::{Command, Reply, Request};
use crate::{node::whereabouts::Located, state::Loaded};

/// How long an ADD waits for the API server's view of its pod to reach the
/// agent (the pod object is created before its sandbox, but the watch may
/// lag). The plugin waits a little longer than this for the answer.
pub const POD_WAIT: Duration = Duration::from_secs(20);

/// Where the agent answers from.
pub struct Site {
    /// This agent's node.
    pub node: String,
    /// The host's `/proc` as the agent sees it (`--host-proc`).
    pub host_proc: std::path::PathBuf,
}

impl Site {
    /// A runtime that pins nothing (cri-dockerd) names the sandbox's
    /// namespace as `/proc/<pid>/ns/net` in the host's PID namespace, which
    /// the agent sees under `--host-proc`.
    fn seen_here(&self, netns: &Path) -> std::path::PathBuf {
        match netns.strip_prefix("/proc") {
            Ok(rest) => self.host_proc.join(rest),
            Err(_) => netns.to_owned(),
        }
    }
}

/// A request the node's enrolment loop must act on; it answers on `reply`.
#[derive(Debug)]
pub enum Event {
    /// Enrol `pod` at `located`; `Err` says why it could not be.
    Located {
        pod: String,
        located: Located,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The sandbox `sandbox` of `pod` is gone; unenrol it.
    Gone {
        pod: String,
        sandbox: String,
        reply: oneshot::Sender<()>,
    },
    /// Whether `pod` is enrolled.
    Enrolled {
        pod: String,
        reply: oneshot::Sender<bool>,
    },
}

/// Serves the CNI socket at `path` (mode 0600: only root, as the runtime
/// that runs the plugin, may ask).
pub fn serve(
    path: &Path,
    site: Site,
    config: watch::Receiver<Arc<Loaded>>,
    events: mpsc::Sender<Event>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = crate::admin::api::bind_root_only(path)?;
    let site = Arc::new(site);
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (site, config, events) =
                        (Arc::clone(&site), config.clone(), events.clone());
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &site, config, &events).await {
                            tracing::warn!("CNI socket: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!("CNI socket accept: {e}"),
            }
        }
    }))
}

async fn answer(
    stream: UnixStream,
    site: &Site,
    config: watch::Receiver<Arc<Loaded>>,
    events: &mpsc::Sender<Event>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let reply = handle(&request, site, config, events).await;
            let pod = request.pod();
            if reply.ok {
                tracing::info!(%pod, command = ?request.command, "CNI: {}", reply.message);
            } else {
                tracing::warn!(%pod, command = ?request.command, "CNI refused: {}", reply.message);
            }
            reply
        }
        Err(e) => refuse(format!("unreadable request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply).expect("a reply always serializes");
    out.push(b'\n');
    write.write_all(&out).await
}

fn accept(message: impl Into<String>) -> Reply {
    Reply {
        ok: true,
        message: message.into(),
    }
}

fn refuse(message: impl Into<String>) -> Reply {
    Reply {
        ok: false,
        message: message.into(),
    }
}

const LOOP_GONE: &str = "the agent is shutting down";

async fn handle(
    request: &Request,
    site: &Site,
    config: watch::Receiver<Arc<Loaded>>,
    events: &mpsc::Sender<Event>,
) -> Reply {
    let pod = request.pod();
    let node = site.node.as_str();
    match request.command {
        Command::Add => {
            match meshed(&request.namespace, &request.name, node, config, POD_WAIT).await {
                Membership::Outside(why) => accept(format!("not in the mesh: {why}")),
                Membership::Unknown(why) => refuse(why),
                Membership::Meshed => {
                    let netns = site.seen_here(&request.netns);
                    if !netns.exists() {
                        return refuse(format!(
                            "the sandbox's network namespace {} is not visible to the agent \
                             (looked at {}): mount the host's /var/run/netns at the same path \
                             and its /proc at --host-proc",
                            request.netns.display(),
                            netns.display()
                        ));
                    }
                    let located = Located {
                        netns,
                        cgroup: None,
                        ips: request.ips.clone(),
                        sandbox: Some(request.sandbox.clone()),
                    };
                    let event = |reply| Event::Located {
                        pod: pod.clone(),
                        located,
                        reply,
                    };
                    match ask(events, event).await {
                        Some(Ok(())) => accept("enrolled: listeners open and capture in place"),
                        Some(Err(why)) => refuse(format!("enrolling {pod} failed: {why}")),
                        None => refuse(LOOP_GONE),
                    }
                }
            }
        }
        Command::Del => {
            let event = |reply| Event::Gone {
                pod,
                sandbox: request.sandbox.clone(),
                reply,
            };
            // A DEL succeeds even when nothing is left to undo.
            ask(events, event).await;
            accept("unenrolled (if it was)")
        }
        Command::Check => {
            match meshed(
                &request.namespace,
                &request.name,
                node,
                config,
                Duration::ZERO,
            )
            .await
            {
                Membership::Meshed => {
                    let event = |reply| Event::Enrolled {
                        pod: pod.clone(),
                        reply,
                    };
                    match ask(events, event).await {
                        Some(true) => accept("enrolled"),
                        Some(false) => {
                            refuse(format!("{pod} belongs in the mesh but is not enrolled"))
                        }
                        None => refuse(LOOP_GONE),
                    }
                }
                Membership::Outside(why) => accept(format!("not in the mesh: {why}")),
                Membership::Unknown(why) => refuse(why),
            }
        }
    }
}

/// Hands an event to the node's enrolment loop and waits for its answer;
/// `None` when the loop is gone (the agent is stopping).
async fn ask<T>(
    events: &mpsc::Sender<Event>,
    event: impl FnOnce(oneshot::Sender<T>) -> Event,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    events.send(event(reply)).await.ok()?;
    answer.await.ok()
}

/// Whether a pod belongs in this node's mesh, by the model.
#[derive(Debug, PartialEq, Eq)]
enum Membership {
    Meshed,
    Outside(String),
    /// The model cannot tell yet (or says something impossible).
    Unknown(String),
}

/// Decides from the model, waiting up to `wait` for it to learn the pod.
async fn meshed(
    namespace: &str,
    name: &str,
    node: &str,
    mut config: watch::Receiver<Arc<Loaded>>,
    wait: Duration,
) -> Membership {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let answer = decide(&config.borrow_and_update(), namespace, name, node);
        if let Some(answer) = answer {
            return answer;
        }
        let changed = tokio::time::timeout_at(deadline, config.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            return Membership::Unknown(format!(
                "the agent does not know pod {namespace}/{name} (waited {wait:?} for the API \
                 server's view of it; is the agent's watch connected? `meshctl status`)"
            ));
        }
    }
}

/// `None` while the model does not know the namespace or the pod.
fn decide(loaded: &Loaded, namespace: &str, name: &str, node: &str) -> Option<Membership> {
    let snapshot = &loaded.snapshot;
    let ns = snapshot.namespaces.get(namespace)?;
    if !snapshot.namespace_enrolled(&ns.name) {
        return Some(Membership::Outside(format!(
            "namespace {namespace} is not labelled nodemesh.io/dataplane=enabled"
        )));
    }
    let pod = snapshot.pod(&format!("{namespace}/{name}"))?;
    Some(if pod.node != node {
        Membership::Unknown(format!(
            "the API server places pod {namespace}/{name} on node {:?}, but this agent serves \
             node {node:?} (is the agent's --node right?)",
            pod.node
        ))
    } else if snapshot.enrolled(pod) {
        Membership::Meshed
    } else {
        Membership::Outside(
            "the pod opts out (nodemesh.io/dataplane=disabled) or is a waypoint".into(),
        )
    })
}
