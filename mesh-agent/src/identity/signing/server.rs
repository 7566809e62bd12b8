//! The CA's side of signing: authenticate the node, check the pod is on it,
//! sign the CSR as the pod's identity.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::net::TcpStream;

use super::{PATH, SignError, SignRequest, SignResponse, node_of};
use crate::{
    identity::{SpiffeId, ca::MeshCa, verify::TrustBundle},
    tunnel::{TunnelError, tls},
};

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
    pub lifetime: Duration,
}

/// Serves one agent connection until it closes.
pub async fn serve_connection(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    config: Arc<ServerConfig>,
    signer: Arc<Signer>,
) -> Result<(), TunnelError> {
    let (tls, peer) = tls::accept(tcp, peer_addr, config, &signer.bundle).await?;
    let service = service_fn(move |req| {
        let (signer, peer) = (Arc::clone(&signer), peer.clone());
        async move { Ok::<_, Infallible>(handle(req, &peer, &signer).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(serde_json::to_vec(body).expect("serializes")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    );
    response
}

fn refuse(status: StatusCode, error: String) -> Response<Full<Bytes>> {
    json(status, &SignError { error })
}

async fn handle(req: Request<Incoming>, peer: &SpiffeId, signer: &Signer) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH || req.method() != Method::POST {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("the CA serves only POST {PATH}"),
        );
    }
    let Some(node) = node_of(peer) else {
        tracing::warn!(%peer, "certificate request refused: not a node agent");
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{peer} is not a node agent; only node identities may request certificates"),
        );
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("reading the request: {e}")),
    };
    let request: SignRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("request is not a SignRequest: {e}"),
            );
        }
    };
    let Some((pod_node, id)) = (signer.lookup)(&request.pod) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("pod {} is not known to the CA", request.pod),
        );
    };
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
    match signer.ca.sign_csr(&id, &request.csr, signer.lifetime) {
        Ok(issued) => {
            tracing::info!(node, pod = %request.pod, identity = %id, "certificate issued");
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
