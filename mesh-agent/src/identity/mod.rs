//! Workload identity: who a pod is, proven by a certificate.
//!
//! - [`spiffe`] — `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`;
//! - [`ca`] — the mesh CA — its root key never leaves the CA's directory — and
//!   the leaf certificates it issues (the SPIFFE ID as the only URI SAN);
//! - [`signing`] — node agents obtaining their own credentials (on
//!   Kubernetes, for a service-account token) and their pods' certificates
//!   from the CA over mTLS, limited to pods the CA places on that node;
//! - [`store`] — a node agent's pod certificates, renewed at half-life
//!   ([`renew`]);
//! - [`verify`] — turning a peer's certificate chain into a SPIFFE ID, which
//!   is the only way the mesh learns who a peer is (never from a header).
pub mod ca;
pub mod renew;
pub mod signing;
pub mod spiffe;
pub mod store;
pub mod verify;

#[cfg(test)]
mod tests;

pub use spiffe::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "{input:?} is not a nodemesh SPIFFE ID: {reason} (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
    )]
    InvalidId { input: String, reason: &'static str },
    #[error("trust domain {0:?} may hold only a-z, 0-9, '.', '-', '_' (for example cluster.local)")]
    InvalidTrustDomain(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} already holds a mesh CA; refusing to overwrite its root key (remove the directory to start over)"
    )]
    AlreadyInitialised(std::path::PathBuf),
    #[error("{0} holds no mesh CA: run `mesh-agent ca init --dir {0}` first")]
    NotInitialised(std::path::PathBuf),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the CA for trust domain {ca} cannot issue {requested}: other trust domain")]
    ForeignTrustDomain { ca: String, requested: String },
    #[error(
        "peer certificate rejected: {0} (not issued by this mesh's CA, expired, or not valid for this use)"
    )]
    Untrusted(webpki::Error),
    #[error("peer certificate is not valid X.509: {0}")]
    Malformed(String),
    #[error("peer certificate carries no SPIFFE ID (no URI SAN)")]
    NoSpiffeId,
    #[error("peer certificate carries {0} URI SANs; a workload certificate must carry exactly one")]
    ManyUris(usize),
    #[error("peer identity {id} belongs to trust domain {got}, not this mesh's {want}")]
    WrongTrustDomain {
        id: String,
        got: String,
        want: String,
    },
    #[error("the peer presented no certificate")]
    NoCertificate,
}
