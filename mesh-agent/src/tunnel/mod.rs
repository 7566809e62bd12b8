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
pub mod stream;
pub mod tls;

#[cfg(test)]
mod tests;

use crate::identity::IdentityError;

/// HTTP/2 flow control sized for bulk transfer: one stream may have 4 MiB in
/// flight (a node-to-node link's bandwidth-delay product with room to
/// spare), the whole connection 16 MiB, so a few busy streams never starve
/// the rest. The defaults (64 KiB) would cap a stream at ~64 KiB per RTT.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// Larger frames mean fewer headers and wakeups per megabyte.
pub const MAX_FRAME: u32 = 256 << 10;
/// What HTTP/2 accepts as a header block; the CONNECT handler's own limit
/// ([`server::MAX_HEADER_BYTES`]) is lower so oversized requests are
/// answered and logged by nodemesh rather than refused inside h2.
pub const H2_MAX_HEADER_LIST: u32 = 64 << 10;
/// On a refused CONNECT, the destination agent's account of the policy
/// decision (opaque here; the proxy writes and reads it). A source believes
/// it only from the identity it dialled, see [`Reported`].
pub const VERDICT_HEADER: &str = "x-nodemesh-verdict";
/// On a CONNECT to a Service's endpoint, the Service (`namespace/name`) the
/// source resolved: the destination's records and metrics name it. A claim
/// for the records only: the destination keeps it only if its own config
/// says the Service selects the pod (so labels stay bounded).
pub const SERVICE_HEADER: &str = "x-nodemesh-service";

/// What the server of a refused CONNECT said about why, and who said it:
/// the server identity verified in the TLS handshake, so a caller can check
/// it is the peer it meant to reach before trusting a word of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub by: crate::identity::SpiffeId,
    /// The [`VERDICT_HEADER`] value.
    pub verdict: String,
}

impl TunnelError {
    /// The peer vanished (process killed, connection reset, closed without
    /// a goodbye) rather than misbehaved: not worth a warning or a record.
    pub fn peer_went_away(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        let vanished =
            |io: &std::io::Error| matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof);
        match self {
            Self::Handshake { source, .. } | Self::Connect { source, .. } => vanished(source),
            // h2 keeps its I/O error inside rather than as a `source`.
            Self::Http(e) => {
                e.get_io().is_some_and(vanished)
                    || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR))
            }
            Self::Server(e) => std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(vanished),
            Self::Config(_) | Self::Peer { .. } | Self::Refused { .. } => false,
        }
    }
}

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
    Http(#[from] h2::Error),
    /// From the CA's request/response server, which uses hyper.
    #[error("HTTP: {0}")]
    Server(#[from] hyper::Error),
    #[error("CONNECT {target} refused with status {status}")]
    Refused {
        target: std::net::SocketAddr,
        status: u16,
        /// The server's [`VERDICT_HEADER`], when it sent one (boxed: it is
        /// rare, and every `Result` of the tunnel carries this error's size).
        reported: Option<Box<Reported>>,
    },
}
