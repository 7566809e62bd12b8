//! TLS for HBONE: TLS 1.3 only, ALPN `h2`, and both sides authenticate with
//! workload certificates from the mesh CA.
//!
//! A server is accepted by its SPIFFE ID, not a DNS name (HBONE dials
//! addresses); a client must present a certificate chaining to the bundle,
//! and its SPIFFE ID is read from that verified chain after the handshake.
use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature},
    server::{ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::TunnelError;
use crate::identity::{
    IdentityError, SpiffeId,
    verify::{PeerRole, TrustBundle},
};

pub const ALPN_H2: &[u8] = b"h2";

/// A workload's certificate chain (leaf first) and private key.
pub struct WorkloadCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for WorkloadCert {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl WorkloadCert {
    /// The form a certificate resolver hands to rustls (the key parsed once).
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, rustls::Error> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider()).map(Arc::new)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Server side with one fixed certificate: client certificates are required
/// and must chain to `bundle`.
pub fn server_config(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    server_config_resolving(Arc::new(Fixed(cert.certified_key()?)), bundle)
}

/// Server side whose certificate is chosen at each handshake, so a renewed
/// certificate is used by new connections while old ones carry on.
pub fn server_config_resolving(
    resolver: Arc<dyn ResolvesServerCert>,
    bundle: &TrustBundle,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    server_config_with(resolver, bundle, false)
}

/// Server side for the CA when it also takes tokens: a client may come
/// without a certificate (an agent that has no credentials yet); one that
/// presents a certificate must still chain to `bundle`. Who may do what
/// without one is the server's decision (see [`accept_optional`]).
pub fn server_config_optional_clients(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    server_config_with(Arc::new(Fixed(cert.certified_key()?)), bundle, true)
}

fn server_config_with(
    resolver: Arc<dyn ResolvesServerCert>,
    bundle: &TrustBundle,
    anonymous_clients: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for root in bundle.roots() {
        roots.add(root.clone())?;
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if anonymous_clients {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption. rustls's default keeps up to 256 sessions per
    // configuration (≈30 KiB reserved up front, more with each handshake),
    // and every pod has a configuration per HBONE listener; yet HBONE
    // clients build a fresh configuration, so an empty session cache, for
    // each connection they dial, and the CA's clients keep theirs open.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Completes the server side of a handshake and returns the client's
/// identity, read from its verified certificate chain.
pub async fn accept(
    tcp: TcpStream,
    peer_addr: std::net::SocketAddr,
    config: Arc<ServerConfig>,
    bundle: &TrustBundle,
) -> Result<(TlsStream<TcpStream>, SpiffeId), TunnelError> {
    let (tls, peer) = accept_optional(tcp, peer_addr, config, bundle).await?;
    let peer = peer.ok_or(TunnelError::Peer {
        peer: peer_addr,
        source: IdentityError::NoCertificate,
    })?;
    Ok((tls, peer))
}

/// [`accept`] for a configuration that lets clients come without a
/// certificate ([`server_config_optional_clients`]): `None` for those.
pub async fn accept_optional(
    tcp: TcpStream,
    peer_addr: std::net::SocketAddr,
    config: Arc<ServerConfig>,
    bundle: &TrustBundle,
) -> Result<(TlsStream<TcpStream>, Option<SpiffeId>), TunnelError> {
    let tls = TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(|source| TunnelError::Handshake {
            peer: peer_addr,
            source,
        })?;
    let Some(chain) = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec) else {
        return Ok((tls, None));
    };
    let peer = bundle
        .verify(&chain, std::time::SystemTime::now(), PeerRole::Client)
        .map_err(|source| TunnelError::Peer {
            peer: peer_addr,
            source,
        })?;
    Ok((tls, Some(peer)))
}

/// Client side: the server must prove `expected` (or, when `None`, any
/// identity of the bundle's trust domain).
pub fn client_config(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    expected: Option<SpiffeId>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    finish(
        client_builder(bundle, expected)?
            .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?,
    )
}

/// [`client_config`] whose certificate is chosen at each handshake, so a
/// renewed certificate reaches new connections.
pub fn client_config_resolving(
    resolver: Arc<dyn ResolvesClientCert>,
    bundle: &TrustBundle,
    expected: Option<SpiffeId>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    finish(client_builder(bundle, expected)?.with_client_cert_resolver(resolver))
}

/// Client side without a certificate of its own (an agent asking the CA
/// for its first credentials): the server is authenticated all the same.
pub fn client_config_anonymous(
    bundle: &TrustBundle,
    expected: Option<SpiffeId>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    finish(client_builder(bundle, expected)?.with_no_client_auth())
}

fn client_builder(
    bundle: &TrustBundle,
    expected: Option<SpiffeId>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, rustls::Error> {
    let verifier = SpiffeServerVerifier {
        bundle: bundle.clone(),
        expected,
        provider: provider(),
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

fn finish(mut config: ClientConfig) -> Result<Arc<ClientConfig>, rustls::Error> {
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The SPIFFE ID of the server of a completed client handshake. Its chain
/// was verified against the bundle during the handshake (see
/// [`SpiffeServerVerifier`]), so reading the leaf's URI SAN is enough.
pub fn server_identity(tls: &rustls::ClientConnection) -> Option<SpiffeId> {
    let leaf = tls.peer_certificates()?.first()?;
    match crate::identity::verify::uri_sans(leaf).ok()?.as_slice() {
        [uri] => SpiffeId::parse(uri).ok(),
        _ => None,
    }
}

/// Verifies a server by chain and SPIFFE ID instead of DNS name.
#[derive(Debug)]
struct SpiffeServerVerifier {
    bundle: TrustBundle,
    expected: Option<SpiffeId>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
        let id = self
            .bundle
            .verify(&chain, at, PeerRole::Server)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        match &self.expected {
            Some(want) if *want != id => Err(rustls::Error::General(format!(
                "server is {id}, expected {want}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
