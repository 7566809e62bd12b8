//! The sending end of HBONE: one mutually authenticated TLS + HTTP/2
//! connection to a peer agent, carrying one CONNECT stream per application
//! connection (and, to the CA, plain requests).
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{Reported, TunnelError, VERDICT_HEADER, stream::H2Stream, tls::server_identity};
use crate::identity::SpiffeId;

/// HBONE dials addresses; the server is authenticated by SPIFFE ID (see
/// `tls`), so the SNI is a fixed, never-resolvable placeholder.
const SNI: &str = "hbone.nodemesh.invalid";

/// An HTTP/2 connection to a peer agent. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Connection {
    sender: SendRequest<Bytes>,
    tls_version: &'static str,
    /// The server's identity, as the handshake verified it.
    server: Option<SpiffeId>,
    /// When the pool must stop handing it out: the client certificate it
    /// authenticated with expires then, and a new stream must not ride on
    /// an identity that is no longer valid.
    retire_at: Option<std::time::SystemTime>,
    /// CONNECT streams open on it (the pool's load signal).
    streams: Arc<AtomicUsize>,
}

/// One open CONNECT stream of a [`Connection`], counted while it lives.
pub struct Ticket(Arc<AtomicUsize>);

impl Ticket {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connection {
    /// Dials `addr`, completes mutual TLS and the HTTP/2 handshake.
    pub async fn dial(addr: SocketAddr, tls: Arc<ClientConfig>) -> Result<Self, TunnelError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TunnelError::Connect { addr, source })?;
        Self::handshake(tcp, addr, tls).await
    }

    /// Completes mutual TLS and the HTTP/2 handshake on a connected socket
    /// (one the caller made, e.g. inside a pod's network namespace).
    pub async fn handshake(
        tcp: TcpStream,
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, TunnelError> {
        let _ = tcp.set_nodelay(true);
        let sni = ServerName::try_from(SNI).expect("constant is a valid DNS name");
        let tls = TlsConnector::from(tls)
            .connect(sni, tcp)
            .await
            .map_err(|source| TunnelError::Handshake { peer: addr, source })?;
        let tls_version = version_name(tls.get_ref().1.protocol_version());
        let server = server_identity(tls.get_ref().1);
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .handshake(tls)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "HBONE connection ended");
            }
        });
        Ok(Self {
            sender,
            tls_version,
            server,
            retire_at: None,
            streams: Arc::default(),
        })
    }

    /// A stream for `request`, once the connection can take one more.
    async fn open(
        &self,
        request: Request<()>,
        end_of_stream: bool,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), TunnelError> {
        let mut sender = self.sender.clone().ready().await?;
        Ok(sender.send_request(request, end_of_stream)?)
    }

    /// Sends one request with `body` on its own stream; returns the status
    /// and the whole response body (for small control exchanges).
    pub async fn request(
        &self,
        request: Request<()>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), TunnelError> {
        let (response, mut send) = self.open(request, body.is_empty()).await?;
        if !body.is_empty() {
            send.send_data(body, true)?;
        }
        let response = response.await?;
        let status = response.status();
        let mut recv = response.into_body();
        let mut all = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            all.extend_from_slice(&chunk);
        }
        Ok((status, Bytes::from(all)))
    }

    /// Sends a bodiless request on its own stream; returns the status and
    /// the body as it arrives (for long answers, e.g. the CA's workload
    /// directory).
    pub async fn get(
        &self,
        request: Request<()>,
    ) -> Result<(StatusCode, h2::RecvStream), TunnelError> {
        let (response, _) = self.open(request, true).await?;
        let response = response.await?;
        Ok((response.status(), response.into_body()))
    }

    /// Opens a stream to `target` through the peer agent; `service` is the
    /// Service it was resolved from, if any ([`super::SERVICE_HEADER`]).
    pub async fn connect(
        &self,
        target: SocketAddr,
        service: Option<&str>,
    ) -> Result<H2Stream, TunnelError> {
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string());
        if let Some(value) = service.and_then(|s| http::HeaderValue::from_str(s).ok()) {
            request = request.header(super::SERVICE_HEADER, value);
        }
        let request = request
            .body(())
            .expect("a CONNECT to a socket address is a valid request");
        // Counted from now, so callers choosing a connection meanwhile see
        // this one as busier.
        let ticket = Ticket::new(&self.streams);
        let (response, send) = self.open(request, false).await?;
        let response = response.await?;
        if response.status() != StatusCode::OK {
            let verdict = response
                .headers()
                .get(VERDICT_HEADER)
                .and_then(|v| v.to_str().ok());
            let reported = self.server.clone().zip(verdict).map(|(by, verdict)| {
                Box::new(Reported {
                    by,
                    verdict: verdict.to_owned(),
                })
            });
            return Err(TunnelError::Refused {
                target,
                status: response.status().as_u16(),
                reported,
            });
        }
        Ok(H2Stream::new(send, response.into_body()).counted(ticket))
    }

    /// The negotiated TLS version, e.g. `TLSv1.3`.
    pub fn tls_version(&self) -> &'static str {
        self.tls_version
    }

    /// Stops offering this connection for new streams at `when` (streams
    /// already on it carry on).
    pub fn retire_at(mut self, when: std::time::SystemTime) -> Self {
        self.retire_at = Some(when);
        self
    }

    /// CONNECT streams open on it now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// False once the peer has gone away or the connection is retired (the
    /// pool then dials again).
    pub fn is_open(&self) -> bool {
        if self
            .retire_at
            .is_some_and(|t| std::time::SystemTime::now() >= t)
        {
            return false;
        }
        let mut probe = self.sender.clone();
        // A closed connection reports an error instead of readiness.
        !matches!(
            probe.poll_ready(&mut std::task::Context::from_waker(std::task::Waker::noop())),
            std::task::Poll::Ready(Err(_))
        )
    }
}

/// How flow records name a TLS version.
pub fn version_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    }
}
