//! The CA's side of signing: authenticate the node (by its certificate, or
//! by a service-account token for its own credentials), check the pod is on
//! it, sign the CSR as the pod's identity.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::net::TcpStream;

use super::{
    DIRECTORY_PATH, NODE_PATH, NodeRequest, PATH, SignError, SignRequest, SignResponse,
    WORKLOAD_PATH, ca_identity, directory, node_identity, node_of, token_review::TokenReviewer,
};
use crate::{
    identity::{SpiffeId, ca::MeshCa, verify::TrustBundle},
    state::{Loaded, keys::WAYPOINT_POD_LABEL},
    tunnel::{TunnelError, tls},
};

/// An answer: a JSON body, or the directory's stream.
pub type Reply = Response<BoxBody<Bytes, Infallible>>;

/// The CA's view of the cluster: for `namespace/name`, the node the pod is
/// on and the identity it should have.
pub type Lookup = Arc<dyn Fn(&str) -> Option<(String, SpiffeId)> + Send + Sync>;

/// A CSR and its JSON wrapper are small; anything bigger is not a request.
const MAX_BODY: usize = 64 * 1024;

/// What the CA needs to answer requests.
pub struct Signer {
    pub ca: MeshCa,
    pub bundle: TrustBundle,
    pub lookup: Lookup,
    /// Of pods' and nodes' certificates alike.
    pub lifetime: Duration,
    /// Checks node agents' tokens (Kubernetes); without it, nodes come
    /// with credentials from `ca issue-node`. With it, the TLS
    /// configuration must let clients come without a certificate
    /// ([`tls::server_config_optional_clients`]).
    pub tokens: Option<TokenReviewer>,
    /// The CA's model, whose pods it serves to node agents as the workload
    /// directory.
    pub model: tokio::sync::watch::Receiver<Arc<Loaded>>,
}

/// Serves one agent connection until it closes.
pub async fn serve_connection(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    config: Arc<ServerConfig>,
    signer: Arc<Signer>,
) -> Result<(), TunnelError> {
    let (tls, peer) = tls::accept_optional(tcp, peer_addr, config, &signer.bundle).await?;
    let service = service_fn(move |req| {
        let (signer, peer) = (Arc::clone(&signer), peer.clone());
        async move { Ok::<_, Infallible>(handle(req, &peer, &signer).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Reply {
    let body = Full::from(serde_json::to_vec(body).expect("serializes")).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    );
    response
}

fn refuse(status: StatusCode, error: String) -> Reply {
    json(status, &SignError { error })
}

async fn handle(req: Request<Incoming>, peer: &Option<SpiffeId>, signer: &Signer) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::POST, PATH) => pod_certificate(req, peer.as_ref(), signer).await,
        (&Method::POST, NODE_PATH) => node_credentials(req, signer).await,
        (&Method::POST, WORKLOAD_PATH) => workload_credentials(req, signer).await,
        (&Method::GET, DIRECTORY_PATH) => match node_agent(peer.as_ref(), "the workload directory")
        {
            Ok(node) => directory::serve(node, signer.model.clone()),
            Err((status, why)) => refuse(status, why),
        },
        _ => refuse(
            StatusCode::NOT_FOUND,
            format!(
                "the CA serves only POST {PATH}, POST {NODE_PATH}, POST {WORKLOAD_PATH} and GET \
                 {DIRECTORY_PATH}"
            ),
        ),
    }
}

/// The node a request's client certificate speaks for, or why `what` is
/// refused to anyone but a node agent (the answer's status and message).
fn node_agent<'a>(peer: Option<&'a SpiffeId>, what: &str) -> Result<&'a str, (StatusCode, String)> {
    let Some(peer) = peer else {
        tracing::warn!("{what} refused: no client certificate");
        return Err((
            StatusCode::UNAUTHORIZED,
            format!(
                "no client certificate: {what} is for node agents, which connect with their \
                 node credentials"
            ),
        ));
    };
    node_of(peer).ok_or_else(|| {
        tracing::warn!(%peer, "{what} refused: not a node agent");
        (
            StatusCode::FORBIDDEN,
            format!("{peer} is not a node agent; only node identities may ask for {what}"),
        )
    })
}

/// A request's JSON body, or the answer refusing it.
async fn body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    what: &str,
) -> Result<T, Reply> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("reading the request: {e}"),
            ));
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("request is not a {what}: {e}"),
        )
    })
}

async fn pod_certificate(
    req: Request<Incoming>,
    peer: Option<&SpiffeId>,
    signer: &Signer,
) -> Reply {
    let node = match node_agent(peer, "a pod certificate") {
        Ok(node) => node,
        Err((status, why)) => return refuse(status, why),
    };
    let request: SignRequest = match body(req, "SignRequest").await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let Some((pod_node, id)) = (signer.lookup)(&request.pod) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("pod {} is not known to the CA", request.pod),
        );
    };
    if let Err(why) = not_reserved(signer, &request.pod, &id) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    if pod_node != node {
        tracing::warn!(
            node,
            pod = %request.pod,
            pod_node,
            "certificate request refused: the pod runs on another node"
        );
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "node {node} may not obtain {id}: pod {} runs on node {pod_node}",
                request.pod
            ),
        );
    }
    let answer = sign(signer, &id, &request.csr);
    if answer.status() == StatusCode::OK {
        tracing::info!(node, pod = %request.pod, identity = %id, "certificate issued");
    }
    answer
}

/// A node agent's own credentials, for the node its token is bound to.
async fn node_credentials(req: Request<Incoming>, signer: &Signer) -> Reply {
    let (reviewer, token, request) =
        match token_request::<NodeRequest>(req, signer, "node credentials", "NodeRequest").await {
            Ok(parts) => parts,
            Err(refused) => return refused,
        };
    let node = match reviewer.node_of(&token).await {
        Ok(node) => node,
        Err(e) => {
            tracing::warn!("node credentials refused: {e}");
            return refuse(e.status(), e.to_string());
        }
    };
    let id = match node_identity(signer.ca.trust_domain(), &node) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(node, "node credentials refused: {e}");
            return refuse(
                StatusCode::FORBIDDEN,
                format!("node {node:?} cannot be named in an identity: {e}"),
            );
        }
    };
    let answer = sign(signer, &id, &request.csr);
    if answer.status() == StatusCode::OK {
        tracing::info!(node, identity = %id, "node credentials issued");
    }
    answer
}

/// What a token-authenticated request (`what`) brings: the CA's reviewer,
/// the bearer token and the JSON body (`kind`), or the answer refusing it.
async fn token_request<'a, T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    signer: &'a Signer,
    what: &str,
    kind: &str,
) -> Result<(&'a TokenReviewer, String, T), Reply> {
    let Some(reviewer) = &signer.tokens else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "this CA takes no tokens (it runs without --kubernetes): give credentials from \
             `mesh-agent ca issue-node` (--credentials)"
                .into(),
        ));
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let Some(token) = token else {
        tracing::warn!("{what} refused: no bearer token");
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "no bearer token: credentials are issued for a service-account token \
             (--ca-token-file)"
                .into(),
        ));
    };
    Ok((reviewer, token, body(req, kind).await?))
}

/// A pod whose service account makes it look like the mesh itself (a node
/// agent, or the CA) never gets that identity: whoever may create such a
/// service account in nodemesh-system must not gain a node's or the CA's
/// powers through a pod.
fn not_reserved(signer: &Signer, pod: &str, id: &SpiffeId) -> Result<(), String> {
    let reserved =
        node_of(id).is_some() || ca_identity(signer.ca.trust_domain()).is_ok_and(|ca| ca == *id);
    if reserved {
        tracing::warn!(pod, identity = %id, "certificate request refused: reserved identity");
        return Err(format!(
            "pod {pod} would be {id}, an identity reserved for the mesh's own node agents and \
             CA: give it another service account"
        ));
    }
    Ok(())
}

/// A workload's own certificate (a waypoint's, in its own pod), for the pod
/// its token is bound to, with the identity the CA's view gives that pod.
async fn workload_credentials(req: Request<Incoming>, signer: &Signer) -> Reply {
    let (reviewer, token, request) = match token_request::<SignRequest>(
        req,
        signer,
        "workload credentials",
        "SignRequest",
    )
    .await
    {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    let workload = match reviewer.workload_of(&token).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(pod = %request.pod, "workload credentials refused: {e}");
            return refuse(e.status(), e.to_string());
        }
    };
    let forbid = |why: String| {
        tracing::warn!(pod = %request.pod, "workload credentials refused: {why}");
        refuse(StatusCode::FORBIDDEN, why)
    };
    let tokens_pod = format!("{}/{}", workload.namespace, workload.pod);
    if tokens_pod != request.pod {
        return forbid(format!(
            "the token is pod {tokens_pod}'s; it cannot obtain pod {}'s identity",
            request.pod
        ));
    }
    let Some((pod_node, id)) = (signer.lookup)(&request.pod) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "pod {} is not known to the CA (yet): it asks again",
                request.pod
            ),
        );
    };
    if (id.namespace(), id.service_account())
        != (
            workload.namespace.as_str(),
            workload.service_account.as_str(),
        )
    {
        return forbid(format!(
            "the token is service account {}/{}'s, but the CA sees pod {} as {id}",
            workload.namespace, workload.service_account, request.pod
        ));
    }
    if let Some(node) = workload.node.as_ref().filter(|n| **n != pod_node) {
        return forbid(format!(
            "the token was bound on node {node}, but the CA sees pod {} on node {pod_node}",
            request.pod
        ));
    }
    if let Err(why) = not_reserved(signer, &request.pod, &id) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    // Other pods' keys stay with their node agent: a pod holding its own
    // could speak HBONE to any pod directly, around its agent's plan and
    // any waypoint's L7 policy.
    let waypoint = signer
        .model
        .borrow()
        .snapshot
        .pod(&request.pod)
        .is_some_and(|p| p.labels.contains_key(WAYPOINT_POD_LABEL));
    if !waypoint {
        return forbid(format!(
            "pod {} is not a waypoint's (no label {WAYPOINT_POD_LABEL}): only waypoints get \
             their own certificate; other pods' certificates stay with their node agent",
            request.pod
        ));
    }
    let answer = sign(signer, &id, &request.csr);
    if answer.status() == StatusCode::OK {
        tracing::info!(pod = %request.pod, identity = %id, "workload credentials issued");
    }
    answer
}

/// Signs `csr` as `id`, answering with the certificate and the bundle.
fn sign(signer: &Signer, id: &SpiffeId, csr: &str) -> Reply {
    match signer.ca.sign_csr(id, csr, signer.lifetime) {
        Ok(issued) => {
            let not_after_unix = issued
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            json(
                StatusCode::OK,
                &SignResponse {
                    identity: id.to_string(),
                    certificate: issued.pem,
                    bundle: signer.ca.root_pem().to_owned(),
                    not_after_unix,
                },
            )
        }
        Err(e) => refuse(
            StatusCode::BAD_REQUEST,
            format!("cannot sign this CSR: {e}"),
        ),
    }
}

/// The CA's view of pods, from the newest local config: a pod's node and
/// the identity its namespace and service account give it.
pub fn lookup_from(
    config: tokio::sync::watch::Receiver<Arc<crate::state::Loaded>>,
    trust_domain: String,
) -> Lookup {
    Arc::new(move |pod: &str| {
        let loaded = config.borrow();
        let info = loaded.snapshot.pod(pod)?;
        let id = info.identity(&trust_domain).ok()?;
        Some((info.node.clone(), id))
    })
}

/// Accepts agent connections until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    signer: Arc<Signer>,
) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let (config, signer) = (Arc::clone(&config), Arc::clone(&signer));
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(tcp, peer, config, signer).await {
                        tracing::warn!(%peer, "CA connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("CA accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
