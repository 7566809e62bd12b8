//! The admin API: JSON over HTTP/1.1, on a unix socket (`<run-dir>/admin.sock`,
//! mode 0600, so only root asks) and optionally on a localhost TCP port.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | `ok` while the agent runs |
//! | `GET /readyz`, `/healthz/ready` | `ok` once the first config was applied (node agent: capture attached, CNI socket up, the node's pods enrolled), else 503 |
//! | `GET /status` | the status document (capture proof, counters, certs, tunnel) |
//! | `GET /flows?<filter>` | open and recent closed [`FlowRecord`]s, oldest first |
//! | `GET /flows/follow?<filter>` | closed flows as they end, one JSON object per line |
//! | `GET /workloads` | pods: node, addresses, identity, enrolment |
//! | `GET /services` | services: addresses, ports, selector |
//! | `GET /policies` | authorization policies and peer authentication |
//! | `GET /certs` | this node's pod certificates |
//! | `GET /config` | all of the above views plus config errors |
//! | `GET /why?from=<pod>&to=<ip:port>` | the dry-run decision ([`Why`]) |
//! | `GET /metrics` | Prometheus text |
//!
//! Filters are [`Filter`] query strings. Shapes only grow: fields are added,
//! never renamed or removed.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{Either, Full, channel::Channel};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{metrics::Metrics, status::Status, why::why};
use crate::{
    flows::Filter,
    policy::api::{Action, Mode},
    proxy::mesh::Mesh,
    state::{Snapshot, cluster::SourceStatus},
};

/// The socket's file name in the agent's run directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// What the API serves from.
pub struct Admin {
    pub mesh: Arc<Mesh>,
    pub metrics: Arc<Metrics>,
    /// The newest status document.
    pub status: Mutex<Option<Status>>,
    pub ready: AtomicBool,
    /// The API server watches' state, in Kubernetes mode.
    source: Option<Arc<Mutex<SourceStatus>>>,
}

type Body = Either<Full<Bytes>, Channel<Bytes>>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkloadView {
    pub pod: String,
    pub node: String,
    pub ips: Vec<std::net::IpAddr>,
    pub service_account: String,
    /// Only enrolled pods have one: nobody issues a certificate to the rest.
    pub identity: Option<String>,
    pub enrolled: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceView {
    pub service: String,
    pub cluster_ips: Vec<std::net::IpAddr>,
    /// `port→targetPort` (and name).
    pub ports: Vec<String>,
    pub selector: std::collections::BTreeMap<String, String>,
    /// Pods the selector picks.
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyView {
    pub policy: String,
    /// `AuthorizationPolicy` or `PeerAuthentication`.
    pub kind: String,
    pub action: Option<Action>,
    pub mode: Option<Mode>,
    pub dry_run: bool,
    pub selector: std::collections::BTreeMap<String, String>,
    /// Each rule in words.
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigDump {
    pub config_errors: Vec<String>,
    pub workloads: Vec<WorkloadView>,
    pub services: Vec<ServiceView>,
    pub policies: Vec<PolicyView>,
}

impl Admin {
    pub fn new(
        mesh: Arc<Mesh>,
        metrics: Arc<Metrics>,
        source: Option<Arc<Mutex<SourceStatus>>>,
    ) -> Self {
        Self {
            mesh,
            metrics,
            status: Mutex::new(None),
            ready: AtomicBool::new(false),
            source,
        }
    }

    /// The API server watches' state now (`None` in local mode).
    pub fn source_status(&self) -> Option<SourceStatus> {
        self.source
            .as_ref()
            .map(|s| s.lock().expect("source status").clone())
    }

    fn trust_domain(&self) -> Option<&str> {
        self.mesh.identity.as_ref().map(|i| i.bundle.trust_domain())
    }

    fn workloads(&self, s: &Snapshot) -> Vec<WorkloadView> {
        s.pods
            .iter()
            .map(|p| {
                let enrolled = s.enrolled(p);
                WorkloadView {
                    pod: p.key(),
                    node: p.node.clone(),
                    ips: p.ips.clone(),
                    service_account: p.service_account.clone(),
                    identity: self
                        .trust_domain()
                        .filter(|_| enrolled)
                        .and_then(|td| p.identity(td).ok())
                        .map(|id| id.to_string()),
                    enrolled,
                    labels: p.labels.clone(),
                }
            })
            .collect()
    }

    fn services(s: &Snapshot) -> Vec<ServiceView> {
        s.services
            .iter()
            .map(|svc| ServiceView {
                service: format!("{}/{}", svc.namespace, svc.name),
                cluster_ips: svc.cluster_ips.clone(),
                ports: svc
                    .ports
                    .iter()
                    .map(|p| {
                        let name = p
                            .name
                            .as_deref()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default();
                        format!("{}→{}{name}", p.port, p.target_port)
                    })
                    .collect(),
                selector: svc.selector.clone(),
                endpoints: s.endpoints(svc).map(|p| p.key()).collect(),
            })
            .collect()
    }

    fn policies(s: &Snapshot) -> Vec<PolicyView> {
        let authz = s.policies.values().flatten().map(|p| PolicyView {
            policy: p.id(),
            kind: "AuthorizationPolicy".into(),
            action: Some(p.action),
            mode: None,
            dry_run: p.dry_run,
            selector: p.selector.clone(),
            rules: p.rules.iter().map(ToString::to_string).collect(),
        });
        let peer = s.peer_auth.iter().map(|p| PolicyView {
            policy: format!("{}/{}", p.namespace, p.name),
            kind: "PeerAuthentication".into(),
            action: None,
            mode: p.mode,
            dry_run: false,
            selector: p.selector.clone().unwrap_or_default(),
            rules: Vec::new(),
        });
        authz.chain(peer).collect()
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the admin API only answers GET\n",
            );
        }
        let query = req.uri().query().unwrap_or("");
        let loaded = self.mesh.snapshot();
        let snapshot = &loaded.snapshot;
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" | "/healthz/ready" if self.ready.load(Ordering::Relaxed) => {
                text(StatusCode::OK, "ok\n")
            }
            "/readyz" | "/healthz/ready" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: config not applied yet\n",
            ),
            "/status" => json(&*self.status.lock().expect("status")),
            "/flows" => match Filter::from_query(query) {
                Ok(filter) => json(&self.mesh.flows.list(&filter)),
                Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            },
            "/flows/follow" => match Filter::from_query(query) {
                Ok(filter) => self.follow(filter),
                Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            },
            "/workloads" => json(&self.workloads(snapshot)),
            "/services" => json(&Self::services(snapshot)),
            "/policies" => json(&Self::policies(snapshot)),
            "/certs" => json(
                &self
                    .mesh
                    .identity
                    .as_ref()
                    .map(|i| i.certs.status())
                    .unwrap_or_default(),
            ),
            "/config" => json(&ConfigDump {
                config_errors: loaded.errors.iter().map(ToString::to_string).collect(),
                workloads: self.workloads(snapshot),
                services: Self::services(snapshot),
                policies: Self::policies(snapshot),
            }),
            "/why" => {
                let mut from = None;
                let mut to = None;
                for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                    match k.as_ref() {
                        "from" => from = Some(v.into_owned()),
                        "to" => to = Some(v.into_owned()),
                        _ => {}
                    }
                }
                let (Some(from), Some(to)) = (from, to) else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "why needs ?from=<pod>&to=<ip:port>\n",
                    );
                };
                match why(snapshot, &from, &to, self.trust_domain()) {
                    Ok(answer) => json(&answer),
                    Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
                }
            }
            "/metrics" => metrics(&self.metrics),
            other => text(
                StatusCode::NOT_FOUND,
                &format!(
                    "no {other} here; see the admin API table in mesh-agent's admin::api docs\n"
                ),
            ),
        }
    }

    /// Streams closed flows matching `filter` until the client goes away.
    fn follow(&self, filter: Filter) -> Response<Body> {
        let mut feed = self.mesh.flows.follow();
        let (mut tx, body) = Channel::new(16);
        tokio::spawn(async move {
            loop {
                let record = match feed.recv().await {
                    Ok(r) => r,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("a flow follower fell {n} flows behind; they were skipped");
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if !filter.matches(&record) {
                    continue;
                }
                let mut line = serde_json::to_vec(&*record).expect("flow records serialize");
                line.push(b'\n');
                if tx.send_data(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
        });
        let mut response = Response::new(Either::Right(body));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, "application/jsonl".parse().expect("valid"));
        response
    }
}

/// The Prometheus exposition of the agent's metrics.
pub fn metrics(metrics: &Metrics) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(metrics.encode()))));
    response.headers_mut().insert(
        CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
            .parse()
            .expect("valid"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body.to_owned()))));
    *response.status_mut() = status;
    response
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).expect("API views serialize");
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().expect("valid"));
    response
}

/// Serves one HTTP/1.1 connection with `route`.
async fn connection<S, F, Fut>(io: S, route: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send,
{
    let service = service_fn(move |req| {
        let route = route.clone();
        async move { Ok::<_, Infallible>(route(req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        tracing::debug!("admin connection: {e}");
    }
}

/// A unix socket at `path` that only root may use (mode 0600), replacing a
/// stale one: the admin API's and the CNI plugin's.
pub fn bind_root_only(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the admin API on a unix socket at `path` ([`bind_root_only`]).
pub fn serve_unix(admin: Arc<Admin>, path: &std::path::Path) -> std::io::Result<()> {
    let listener = bind_root_only(path)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let admin = Arc::clone(&admin);
                    tokio::spawn(connection(stream, move |req| Arc::clone(&admin).route(req)));
                }
                Err(e) => tracing::warn!("admin socket accept: {e}"),
            }
        }
    });
    Ok(())
}

/// What a TCP listener of the admin API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Everything (keep it on localhost: no authentication).
    Admin,
    /// Only `/metrics`, for Prometheus.
    Metrics,
    /// Only `/healthz/ready`, for the kubelet's probes.
    Readiness,
}

impl Exposure {
    fn serves(self, path: &str) -> bool {
        match self {
            Self::Admin => true,
            Self::Metrics => path == "/metrics",
            Self::Readiness => path == "/healthz/ready",
        }
    }
}

/// Serves `route` on a TCP address, limited to what `exposure` allows.
pub async fn serve_tcp(
    admin: Arc<Admin>,
    addr: SocketAddr,
    exposure: Exposure,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let admin = Arc::clone(&admin);
                    tokio::spawn(connection(stream, move |req| {
                        let admin = Arc::clone(&admin);
                        async move {
                            if !exposure.serves(req.uri().path()) {
                                text(StatusCode::NOT_FOUND, "not served on this port\n")
                            } else {
                                admin.route(req).await
                            }
                        }
                    }));
                }
                Err(e) => tracing::warn!(%addr, "accept: {e}"),
            }
        }
    });
    Ok(())
}
