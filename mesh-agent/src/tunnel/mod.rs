//! HBONE: application bytes carried in HTTP/2 `CONNECT` streams over mutual
//! TLS 1.3 (ALPN `h2`) between node agents, on port 15008.
//!
//! - [`tls`] — rustls configurations whose only notion of "who" is the
//!   peer's verified SPIFFE ID;
//! - [`server`] — the receiving side: verifies the peer, checks each
//!   CONNECT target, answers like ztunnel (200, 400, 401, 503) and relays;
//! - [`client`] — the sending side: one TLS + HTTP/2 connection carrying
//!   many CONNECT streams;
//! - [`pool`] — one such connection per (source identity, destination).
pub mod client;
pub mod pool;
pub mod server;
pub mod tls;

#[cfg(test)]
mod tests;

use crate::identity::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS handshake with {peer}: {source}")]
    Handshake {
        peer: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {peer} rejected: {source}")]
    Peer {
        peer: std::net::SocketAddr,
        #[source]
        source: IdentityError,
    },
    #[error(
        "connecting to {addr}: {source} (is port 15008 reachable, or is a NetworkPolicy blocking it?)"
    )]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    #[error("CONNECT {target} refused with status {status}")]
    Refused {
        target: std::net::SocketAddr,
        status: u16,
    },
}
