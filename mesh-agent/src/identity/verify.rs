//! From a peer's certificate chain to its SPIFFE ID.
//!
//! The chain must verify against the trust bundle (signature, validity
//! period, key usage for the peer's role) and the leaf must carry exactly
//! one URI SAN, a SPIFFE ID in this mesh's trust domain. Nothing else — no
//! header, no address — ever establishes who a peer is.
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime, pem::PemObject as _};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::extensions::GeneralName;

use super::{IdentityError, SpiffeId};

/// Which side of a TLS connection the peer is; its certificate must allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    Client,
    Server,
}

/// The CA certificates a workload trusts, and the trust domain they speak for.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    pub fn from_pem(trust_domain: &str, pem: &str) -> Result<Self, IdentityError> {
        let roots = Self::certs_from_pem(pem)?;
        if roots.is_empty() {
            return Err(IdentityError::Malformed(
                "the trust bundle holds no certificate".into(),
            ));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            roots,
        })
    }

    /// The bundle of a mesh root certificate (PEM, e.g. a CA's `root.crt`),
    /// in the trust domain the root names (see [`trust_domain_of`]).
    pub fn from_root_pem(pem: &str) -> Result<Self, IdentityError> {
        let roots = Self::certs_from_pem(pem)?;
        let root = roots.first().ok_or_else(|| {
            IdentityError::Malformed("the trust bundle holds no certificate".into())
        })?;
        let trust_domain = trust_domain_of(root)?;
        Ok(Self {
            trust_domain,
            roots,
        })
    }

    /// Every certificate in a PEM text.
    pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| IdentityError::Malformed(format!("PEM: {e}")))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trusted CA certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Verifies `chain` (leaf first) as of `now` and returns the peer's identity.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
        role: PeerRole,
    ) -> Result<SpiffeId, IdentityError> {
        let (leaf, intermediates) = chain.split_first().ok_or(IdentityError::NoCertificate)?;
        let anchors: Vec<TrustAnchor<'_>> = self
            .roots
            .iter()
            .map(anchor_from_trusted_cert)
            .collect::<Result<_, _>>()
            .map_err(IdentityError::Untrusted)?;
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let usage = match role {
            PeerRole::Client => KeyUsage::client_auth(),
            PeerRole::Server => KeyUsage::server_auth(),
        };
        EndEntityCert::try_from(leaf)
            .map_err(IdentityError::Untrusted)?
            .verify_for_usage(
                ALL_VERIFICATION_ALGS,
                &anchors,
                intermediates,
                UnixTime::since_unix_epoch(since_epoch),
                usage,
                None,
                None,
            )
            .map_err(IdentityError::Untrusted)?;
        let uris = uri_sans(leaf)?;
        let [uri] = uris.as_slice() else {
            return Err(if uris.is_empty() {
                IdentityError::NoSpiffeId
            } else {
                IdentityError::ManyUris(uris.len())
            });
        };
        let id = SpiffeId::parse(uri)?;
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::WrongTrustDomain {
                id: id.to_string(),
                got: id.trust_domain().to_owned(),
                want: self.trust_domain.clone(),
            });
        }
        Ok(id)
    }
}

/// The trust domain a mesh root certificate speaks for: its URI SAN
/// `spiffe://<trust-domain>`.
pub(crate) fn trust_domain_of(root: &CertificateDer<'_>) -> Result<String, IdentityError> {
    uri_sans(root)?
        .iter()
        .find_map(|u| u.strip_prefix("spiffe://").map(str::to_owned))
        .ok_or_else(|| {
            IdentityError::Malformed(
                "the root certificate names no trust domain (no spiffe:// URI SAN): is it a \
                 nodemesh root?"
                    .into(),
            )
        })
}

/// Every URI subject-alternative name of a certificate.
pub(crate) fn uri_sans(der: &CertificateDer<'_>) -> Result<Vec<String>, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}
