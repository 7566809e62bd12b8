//! The receiving end of HBONE. The peer is who its verified certificate
//! says, never what a header claims; each CONNECT target is checked by the
//! caller's `connect` (so this module cannot become an open relay), and the
//! answers match ztunnel's: 200 tunnel up, 400 not CONNECT or bad target,
//! 401 denied, 503 upstream connect failed.
use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::{body::Incoming, service::service_fn, upgrade::Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::net::TcpStream;

use super::TunnelError;
use crate::{
    identity::{SpiffeId, verify::TrustBundle},
    proxy::relay::{Stream, relay},
};

/// Why a CONNECT is not served.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Stream for TokioIo<Upgraded> {
    fn prepare_reset(&self) {
        // Nothing to arm: dropping a tunnel stream that was not finished
        // makes HTTP/2 send RST_STREAM, which the far side sees as a reset.
    }
}

/// Serves one HBONE connection until the peer closes it.
pub async fn serve_connection<F, Fut>(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    tls: Arc<ServerConfig>,
    bundle: Arc<TrustBundle>,
    connect: F,
) -> Result<(), TunnelError>
where
    F: Fn(SpiffeId, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<TcpStream, Refusal>> + Send + 'static,
{
    let (tls, peer) = super::tls::accept(tcp, peer_addr, tls, &bundle).await?;
    let service = service_fn(move |req| handle(req, peer.clone(), connect.clone()));
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

fn status(code: StatusCode) -> Result<Response<Empty<Bytes>>, Infallible> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    Ok(response)
}

async fn handle<F, Fut>(
    mut req: Request<Incoming>,
    peer: SpiffeId,
    connect: F,
) -> Result<Response<Empty<Bytes>>, Infallible>
where
    F: Fn(SpiffeId, SocketAddr) -> Fut,
    Fut: Future<Output = Result<TcpStream, Refusal>>,
{
    if req.method() != Method::CONNECT {
        tracing::warn!(%peer, method = %req.method(), "HBONE request refused: only CONNECT is served");
        return status(StatusCode::BAD_REQUEST);
    }
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        tracing::warn!(%peer, uri = %req.uri(), "HBONE CONNECT refused: authority is not ip:port");
        return status(StatusCode::BAD_REQUEST);
    };
    match connect(peer.clone(), target).await {
        Err(refusal) => {
            tracing::info!(%peer, %target, status = refusal.status.as_u16(), reason = %refusal.reason, "HBONE CONNECT refused");
            status(refusal.status)
        }
        Ok(upstream) => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(stream) = upgrade.await {
                    relay(TokioIo::new(stream), upstream).await;
                }
            });
            status(StatusCode::OK)
        }
    }
}
