//! The sending end of HBONE: one mutually authenticated TLS + HTTP/2
//! connection to a peer agent, carrying one CONNECT stream per application
//! connection.
use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper::{Response, body::Incoming, client::conn::http2::SendRequest, upgrade::Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::TunnelError;

/// HBONE dials addresses; the server is authenticated by SPIFFE ID (see
/// `tls`), so the SNI is a fixed, never-resolvable placeholder.
const SNI: &str = "hbone.nodemesh.invalid";

/// An HTTP/2 connection to a peer agent. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    tls_version: &'static str,
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
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "HBONE connection ended");
            }
        });
        Ok(Self {
            sender,
            tls_version,
        })
    }

    /// Sends one request on the shared connection (its own stream).
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, TunnelError> {
        let mut sender = self.sender.clone();
        sender.ready().await?;
        Ok(sender.send_request(request).await?)
    }

    /// Opens a stream to `target` through the peer agent.
    pub async fn connect(&self, target: SocketAddr) -> Result<TokioIo<Upgraded>, TunnelError> {
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .body(Full::default())
            .expect("a CONNECT to a socket address is a valid request");
        let response = self.send(request).await?;
        if response.status() != StatusCode::OK {
            return Err(TunnelError::Refused {
                target,
                status: response.status().as_u16(),
            });
        }
        Ok(TokioIo::new(hyper::upgrade::on(response).await?))
    }

    /// The negotiated TLS version, e.g. `TLSv1.3`.
    pub fn tls_version(&self) -> &'static str {
        self.tls_version
    }

    /// False once the peer has gone away (the pool then dials again).
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
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
