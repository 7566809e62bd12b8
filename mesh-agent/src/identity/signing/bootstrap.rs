//! How a node agent comes by its own credentials: from `ca issue-node`'s
//! files, or, on Kubernetes, from the CA in exchange for its projected
//! service-account token.
//!
//! The exchange: a fresh key made here (it never leaves the node), a CSR
//! over it and the token (re-read from its file at every use: the kubelet
//! rotates it) sent to the CA over TLS, the CA proven by its identity under
//! the root certificate given to the agent (`--ca-root`, on Kubernetes the
//! ConfigMap `nodemesh-ca-root` mounted into the agent's pod, as Istio does
//! with `istio-ca-root-cert`: a fresh agent has nothing else to trust the
//! CA by). The answer is the node's certificate; it is renewed the same way
//! at half its lifetime. From there on both ways are one [`NodeCert`].
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Weak},
    time::SystemTime,
};

use rcgen::KeyPair;

use super::{
    CaAddr, ca_identity,
    client::{SigningError, issued, request_node_credentials},
    credentials::{self, NodeCert, NodeCredentials},
    node_of,
};
use crate::{
    identity::{
        IdentityError, renew,
        verify::{PeerRole, TrustBundle},
    },
    tunnel::{client::Connection, tls::client_config_anonymous},
};

/// Where agents find the CA's root certificate on Kubernetes: the
/// `nodemesh-ca-root` ConfigMap's `root-cert.pem`, projected beside the
/// token.
pub const DEFAULT_CA_ROOT: &str = "/var/run/secrets/nodemesh/root-cert.pem";

/// How a node agent proves who it is to the CA.
#[derive(Debug, Clone)]
pub enum NodeAuth {
    /// Credentials written by `mesh-agent ca issue-node`.
    Credentials(PathBuf),
    /// A service-account token (a file the kubelet keeps fresh) and the
    /// CA's root certificate.
    Token {
        token_file: PathBuf,
        ca_root: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("--credentials {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: IdentityError,
    },
    #[error("--ca-token-file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("--ca-root {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    #[error("obtaining this node's credentials: {0}")]
    Signing(#[from] SigningError),
    #[error("the CA answered with unusable credentials: {0}")]
    Answer(String),
}

/// This node's credentials, obtained as `auth` says. With a token, this
/// waits (retrying with backoff, every failure logged with the CA's
/// reason) until the CA has issued them, and renews them in the background
/// for as long as the returned [`NodeCert`] lives.
pub async fn node_cert(ca: &CaAddr, auth: &NodeAuth) -> Result<Arc<NodeCert>, BootstrapError> {
    let (token_file, ca_root) = match auth {
        NodeAuth::Credentials(dir) => {
            let credentials =
                credentials::load(dir).map_err(|source| BootstrapError::Credentials {
                    path: dir.clone(),
                    source,
                })?;
            return into_cert(credentials);
        }
        NodeAuth::Token {
            token_file,
            ca_root,
        } => (token_file, ca_root),
    };
    // Mistakes in the agent's own configuration fail at once; what the
    // CA says is retried (it may not be up yet, or not yet allowed to
    // review tokens).
    let exchange = Exchange::new(ca.clone(), token_file.clone(), ca_root)?;
    exchange.token.read()?;
    let first = renew::until_obtained(
        || exchange.run(),
        |e, retry| {
            tracing::error!(
                ca = %exchange.ca,
                "no node credentials yet, retrying in {retry:?}: {e}"
            );
        },
    )
    .await;
    tracing::info!(identity = %first.identity, ca = %exchange.ca, "node credentials obtained");
    let cert = into_cert(first)?;
    let weak = Arc::downgrade(&cert);
    let renewal = tokio::spawn(async move {
        let valid_until = weak.upgrade().map(|c| c.not_after());
        renew::keep_renewed(
            valid_until,
            || exchange.run(),
            |c: &NodeCredentials| leaf_not_after(c),
            |renewed| renewed_into(&weak, &renewed),
            |e, retry| {
                tracing::error!(
                    ca = %exchange.ca,
                    "renewing this node's credentials failed, retrying in {retry:?}: {e}"
                );
            },
        )
        .await;
    });
    cert.renewed_by(renewal.abort_handle());
    Ok(cert)
}

fn into_cert(credentials: NodeCredentials) -> Result<Arc<NodeCert>, BootstrapError> {
    NodeCert::new(credentials)
        .map(Arc::new)
        .map_err(|e| BootstrapError::Answer(e.to_string()))
}

fn leaf_not_after(credentials: &NodeCredentials) -> SystemTime {
    credentials::not_after(&credentials.cert.chain[0]).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn renewed_into(cert: &Weak<NodeCert>, renewed: &NodeCredentials) {
    let Some(cert) = cert.upgrade() else {
        return;
    };
    match cert.replace(renewed) {
        Ok(()) => tracing::info!(identity = %renewed.identity, "node credentials renewed"),
        Err(e) => tracing::error!("renewed node credentials not taken: {e}"),
    }
}

/// A projected service-account token's file, re-read at every use (the
/// kubelet rotates it).
#[derive(Debug, Clone)]
pub struct TokenFile(pub PathBuf);

impl TokenFile {
    /// The token as the kubelet last wrote it.
    pub fn read(&self) -> Result<String, BootstrapError> {
        let err = |reason: String| BootstrapError::Token {
            path: self.0.clone(),
            reason,
        };
        let token = std::fs::read_to_string(&self.0).map_err(|e| {
            err(format!(
                "{e} (a projected service-account token with audience nodemesh-ca)"
            ))
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(err("the file is empty".into()));
        }
        Ok(token.to_owned())
    }
}

/// The CA's root (`--ca-root`), and TLS to the CA proven by it, for a
/// client that has no certificate yet.
pub fn anonymous_to_ca(
    ca_root: &Path,
) -> Result<(TrustBundle, Arc<rustls::ClientConfig>), BootstrapError> {
    let root_err = |reason: String| BootstrapError::Root {
        path: ca_root.to_owned(),
        reason,
    };
    let pem = std::fs::read_to_string(ca_root).map_err(|e| {
        root_err(format!(
            "{e} (on Kubernetes it is the nodemesh-ca-root ConfigMap, mounted into the pod)"
        ))
    })?;
    let root = TrustBundle::from_root_pem(&pem).map_err(|e| root_err(e.to_string()))?;
    let expected = ca_identity(root.trust_domain()).map_err(|e| root_err(e.to_string()))?;
    let tls =
        client_config_anonymous(&root, Some(expected)).map_err(|e| root_err(e.to_string()))?;
    Ok((root, tls))
}

/// One token-for-credentials exchange, repeatable.
struct Exchange {
    ca: CaAddr,
    token: TokenFile,
    root: TrustBundle,
    tls: Arc<rustls::ClientConfig>,
}

impl Exchange {
    fn new(ca: CaAddr, token_file: PathBuf, ca_root: &Path) -> Result<Self, BootstrapError> {
        let (root, tls) = anonymous_to_ca(ca_root)?;
        Ok(Self {
            ca,
            token: TokenFile(token_file),
            root,
            tls,
        })
    }

    async fn run(&self) -> Result<NodeCredentials, BootstrapError> {
        let token = self.token.read()?;
        let addr = self.ca.resolve().await.map_err(SigningError::from)?;
        let conn = Connection::dial(addr, Arc::clone(&self.tls))
            .await
            .map_err(SigningError::from)?;
        let key = KeyPair::generate().map_err(SigningError::from)?;
        let signed = request_node_credentials(&conn, &token, &key).await?;
        let (identity, cert) = issued(&signed, &key)?;
        let unusable = |e: IdentityError| BootstrapError::Answer(e.to_string());
        // What the CA says it issued must be what the certificate proves,
        // under the root this agent trusts, and a node's identity.
        let proven = self
            .root
            .verify(&cert.chain, SystemTime::now(), PeerRole::Client)
            .map_err(unusable)?;
        if proven != identity || node_of(&identity).is_none() {
            return Err(BootstrapError::Answer(format!(
                "the certificate is {proven}, the answer says {identity}: not this node's identity"
            )));
        }
        let bundle =
            TrustBundle::from_pem(self.root.trust_domain(), &signed.bundle).map_err(unusable)?;
        Ok(NodeCredentials {
            identity,
            cert,
            bundle,
        })
    }
}
