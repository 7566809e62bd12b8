//! The receiving end of HBONE. The peer is who its verified certificate
//! says, never what a header claims; each CONNECT target is judged by the
//! caller's [`Handler`] (so this module cannot become an open relay), and
//! the answers match ztunnel's: 200 tunnel up, 400 not CONNECT or bad
//! target, 401 denied, 503 upstream connect failed.
use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::{TunnelError, stream::H2Stream};
use crate::identity::SpiffeId;

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
    /// Sent to the client as [`super::VERDICT_HEADER`].
    pub verdict: Option<String>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            verdict: None,
        }
    }

    /// Tells the client the policy decision behind the refusal.
    pub fn with_verdict(mut self, verdict: String) -> Self {
        self.verdict = Some(verdict);
        self
    }
}

/// The application bytes of one accepted CONNECT.
pub type Tunnel = H2Stream;

/// What runs once a CONNECT was answered 200: given the tunnel stream (or
/// why it never came), it carries the connection to its end.
pub type Session =
    Box<dyn FnOnce(Result<Tunnel, TunnelError>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The policy side of the server, supplied by the caller.
pub trait Handler: Send + Sync + 'static {
    /// Decides on a well-formed CONNECT to `target` and, if it is served,
    /// connects upstream and returns the session to run.
    /// `service` is the client's [`super::SERVICE_HEADER`], unchecked.
    fn open(
        &self,
        peer: Peer,
        target: SocketAddr,
        service: Option<String>,
    ) -> impl Future<Output = Result<Session, Refusal>> + Send;

    /// A request refused before reaching [`Handler::open`] (not CONNECT, a
    /// bad authority, oversized headers): for the caller's records.
    fn rejected(&self, peer: &Peer, request: &str, refusal: &Refusal);
}

/// Serves the CONNECT streams of a connection whose TLS handshake
/// ([`super::tls::accept`]) established `peer`, until the peer closes.
pub async fn serve<H: Handler>(
    tls: TlsStream<TcpStream>,
    peer: Peer,
    handler: Arc<H>,
) -> Result<(), TunnelError> {
    let mut connection = h2::server::Builder::new()
        .initial_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONNECTION_WINDOW)
        .max_frame_size(super::MAX_FRAME)
        .max_header_list_size(super::H2_MAX_HEADER_LIST)
        .handshake(tls)
        .await?;
    while let Some(stream) = connection.accept().await {
        let (request, respond) = stream?;
        tokio::spawn(handle(request, respond, peer.clone(), Arc::clone(&handler)));
    }
    Ok(())
}

/// Answers `status` (with `verdict` as [`super::VERDICT_HEADER`]) and no
/// body, and ends the stream.
fn answer(respond: &mut SendResponse<Bytes>, status: StatusCode, verdict: Option<&str>) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    // A value that is not a valid header is left out, never sent mangled.
    if let Some(value) = verdict.and_then(|v| HeaderValue::from_str(v).ok()) {
        response.headers_mut().insert(super::VERDICT_HEADER, value);
    }
    // The peer may have gone already; nothing to do about it then.
    let _ = respond.send_response(response, true);
}

/// HPACK's accounting (RFC 7541 §4.1): name + value + 32 per field.
fn header_bytes(req: &Request<RecvStream>) -> usize {
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    fields + req.uri().to_string().len() + req.method().as_str().len()
}

/// Checks what can be checked without the handler: method, size, target.
fn parse(req: &Request<RecvStream>) -> Result<SocketAddr, Refusal> {
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
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: Peer,
    handler: Arc<H>,
) {
    let target = match parse(&request) {
        Ok(target) => target,
        Err(refusal) => {
            let line = format!(
                "{} {}",
                request.method(),
                truncated(&request.uri().to_string())
            );
            handler.rejected(&peer, &line, &refusal);
            return answer(&mut respond, refusal.status, None);
        }
    };
    let service = request
        .headers()
        .get(super::SERVICE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match handler.open(peer, target, service).await {
        Err(refusal) => answer(&mut respond, refusal.status, refusal.verdict.as_deref()),
        Ok(session) => {
            let tunnel = respond
                .send_response(Response::new(()), false)
                .map(|send| H2Stream::new(send, request.into_body()))
                .map_err(TunnelError::from);
            session(tunnel).await;
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
