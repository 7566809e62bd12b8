//! The receiving end of HBONE. The peer is who its verified certificate
//! says, never what a header claims; each CONNECT target is judged by the
//! caller's [`Handler`] (so this module cannot become an open relay), and
//! the answers match ztunnel's: 200 tunnel up, 400 not CONNECT or bad
//! target, 401 denied, 503 upstream connect failed.
use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::{body::Incoming, service::service_fn, upgrade::Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::TunnelError;
use crate::{identity::SpiffeId, proxy::relay::Stream};

/// A CONNECT request's header block larger than this is refused (400) and
/// logged. A CONNECT needs a few dozen bytes; 8 KiB is generous.
pub const MAX_HEADER_BYTES: usize = 8 << 10;

/// The verified far end of an HBONE connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// From its certificate chain, verified against the trust bundle.
    pub identity: SpiffeId,
    /// The TCP source of the HBONE connection.
    pub addr: SocketAddr,
    /// The negotiated TLS version, e.g. `TLSv1.3`.
    pub tls_version: &'static str,
}

/// Why a CONNECT is not served.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

/// The application bytes of one accepted CONNECT.
pub type Tunnel = TokioIo<Upgraded>;

/// What runs once a CONNECT was answered 200: given the tunnel stream (or
/// why it never came), it carries the connection to its end.
pub type Session = Box<
    dyn FnOnce(Result<Tunnel, hyper::Error>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send,
>;

/// The policy side of the server, supplied by the caller.
pub trait Handler: Send + Sync + 'static {
    /// Decides on a well-formed CONNECT to `target` and, if it is served,
    /// connects upstream and returns the session to run.
    fn open(
        &self,
        peer: Peer,
        target: SocketAddr,
    ) -> impl Future<Output = Result<Session, Refusal>> + Send;

    /// A request refused before reaching [`Handler::open`] (not CONNECT, a
    /// bad authority, oversized headers): for the caller's records.
    fn rejected(&self, peer: &Peer, request: &str, refusal: &Refusal);
}

impl Stream for Tunnel {
    fn prepare_reset(&self) {
        // Nothing to arm: dropping a tunnel stream that was not finished
        // makes HTTP/2 send RST_STREAM, which the far side sees as a reset.
    }
}

/// Serves the CONNECT streams of a connection whose TLS handshake
/// ([`super::tls::accept`]) established `peer`, until the peer closes.
pub async fn serve<H: Handler>(
    tls: TlsStream<TcpStream>,
    peer: Peer,
    handler: Arc<H>,
) -> Result<(), TunnelError> {
    let service = service_fn(move |req| handle(req, peer.clone(), Arc::clone(&handler)));
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONNECTION_WINDOW)
        .max_frame_size(super::MAX_FRAME)
        .max_header_list_size(super::H2_MAX_HEADER_LIST)
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

fn status(code: StatusCode) -> Result<Response<Empty<Bytes>>, Infallible> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    Ok(response)
}

/// HPACK's accounting (RFC 7541 §4.1): name + value + 32 per field.
fn header_bytes(req: &Request<Incoming>) -> usize {
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    fields + req.uri().to_string().len() + req.method().as_str().len()
}

/// Checks what can be checked without the handler: method, size, target.
fn parse(req: &Request<Incoming>) -> Result<SocketAddr, Refusal> {
    if req.method() != Method::CONNECT {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "method {} is not served: HBONE accepts only CONNECT",
                req.method()
            ),
        ));
    }
    let size = header_bytes(req);
    if size > MAX_HEADER_BYTES {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("request headers are {size} bytes, more than the {MAX_HEADER_BYTES} allowed"),
        ));
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    authority.parse::<SocketAddr>().map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("CONNECT authority {authority:?} is not an ip:port"),
        )
    })
}

async fn handle<H: Handler>(
    mut req: Request<Incoming>,
    peer: Peer,
    handler: Arc<H>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let target = match parse(&req) {
        Ok(target) => target,
        Err(refusal) => {
            let request = format!("{} {}", req.method(), truncated(&req.uri().to_string()));
            handler.rejected(&peer, &request, &refusal);
            return status(refusal.status);
        }
    };
    match handler.open(peer, target).await {
        Err(refusal) => status(refusal.status),
        Ok(session) => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move { session(upgrade.await.map(TokioIo::new)).await });
            status(StatusCode::OK)
        }
    }
}

/// Keeps hostile input out of log lines at a readable length.
fn truncated(text: &str) -> String {
    const MAX: usize = 128;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
        None => text.to_owned(),
    }
}
