//! A node agent's own credentials: on disk as `node.key` (0600),
//! `node.crt`, `bundle.crt`, issued by `mesh-agent ca issue-node` (local
//! mode), or obtained from the CA with a service-account token
//! ([`super::bootstrap`], Kubernetes); either way they become one
//! [`NodeCert`], which the agent's CA connections authenticate with.
use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rcgen::KeyPair;
use rustls::{SignatureScheme, client::ResolvesClientCert, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::node_identity;
use crate::{
    identity::{
        IdentityError, SpiffeId,
        ca::{DEFAULT_LIFETIME, MeshCa, io, write_private},
        verify::{TrustBundle, uri_sans},
    },
    tunnel::tls::WorkloadCert,
};

pub const KEY: &str = "node.key";
pub const CERT: &str = "node.crt";
pub const BUNDLE: &str = "bundle.crt";

pub struct NodeCredentials {
    pub identity: SpiffeId,
    pub cert: WorkloadCert,
    pub bundle: TrustBundle,
}

/// This node's credentials as its connections to the CA use them: the
/// certificate can be replaced (renewal) under a TLS configuration built
/// on [`NodeCert::resolver`], whose every new handshake takes the current
/// one.
#[derive(Debug)]
pub struct NodeCert {
    identity: SpiffeId,
    bundle: TrustBundle,
    current: Mutex<Current>,
    /// The task renewing it, if any: it ends with this.
    renewal: Mutex<Option<tokio::task::AbortHandle>>,
}

#[derive(Debug)]
struct Current {
    certified: Arc<CertifiedKey>,
    not_after: SystemTime,
}

impl Current {
    fn of(cert: &WorkloadCert) -> Result<Self, IdentityError> {
        let leaf = cert.chain.first().ok_or(IdentityError::NoCertificate)?;
        Ok(Self {
            certified: cert
                .certified_key()
                .map_err(|e| IdentityError::Malformed(format!("the node certificate: {e}")))?,
            not_after: not_after(leaf)?,
        })
    }
}

impl NodeCert {
    pub fn new(credentials: NodeCredentials) -> Result<Self, IdentityError> {
        Ok(Self {
            current: Mutex::new(Current::of(&credentials.cert)?),
            identity: credentials.identity,
            bundle: credentials.bundle,
            renewal: Mutex::default(),
        })
    }

    /// Ties the task that renews these credentials to their life.
    pub(super) fn renewed_by(&self, task: tokio::task::AbortHandle) {
        *self.renewal.lock().expect("node cert") = Some(task);
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The trust bundle the credentials came with.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.current.lock().expect("node cert").not_after
    }

    /// Takes a renewed certificate; it must name the same node.
    pub fn replace(&self, renewed: &NodeCredentials) -> Result<(), IdentityError> {
        if renewed.identity != self.identity {
            return Err(IdentityError::Malformed(format!(
                "the renewed node certificate is {}, not {}: kept the current one",
                renewed.identity, self.identity
            )));
        }
        *self.current.lock().expect("node cert") = Current::of(&renewed.cert)?;
        Ok(())
    }

    /// For [`crate::tunnel::tls::client_config_resolving`].
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesClientCert> {
        Arc::clone(self) as Arc<dyn ResolvesClientCert>
    }
}

impl Drop for NodeCert {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.lock().expect("node cert").take() {
            task.abort();
        }
    }
}

impl ResolvesClientCert for NodeCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.lock().expect("node cert").certified,
        ))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The end of a certificate's validity.
pub(super) fn not_after(der: &CertificateDer<'_>) -> Result<SystemTime, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Issues credentials for `node` into `dir` (created if missing).
pub fn issue(ca: &MeshCa, node: &str, dir: &Path) -> Result<SpiffeId, IdentityError> {
    let id = node_identity(ca.trust_domain(), node)?;
    let key = KeyPair::generate()?;
    let issued = ca.issue(&id, &key, DEFAULT_LIFETIME)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_private(&dir.join(KEY), &key.serialize_pem())?;
    for (name, pem) in [(CERT, issued.pem.as_str()), (BUNDLE, ca.root_pem())] {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(io(&path))?;
    }
    Ok(id)
}

/// Saves a workload's key (0600) and signed certificate as `<dir>/<name>.key`
/// and `<dir>/<name>.crt`.
pub fn save_workload(
    dir: &Path,
    name: &str,
    key: &KeyPair,
    certificate_pem: &str,
) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_private(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
    let cert = dir.join(format!("{name}.crt"));
    std::fs::write(&cert, certificate_pem).map_err(io(&cert))
}

/// Loads credentials written by [`issue`].
pub fn load(dir: &Path) -> Result<NodeCredentials, IdentityError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(io(&path))
    };
    let chain = TrustBundle::certs_from_pem(&read(CERT)?)?;
    let leaf = chain.first().ok_or_else(|| {
        IdentityError::Malformed(format!("{} holds no certificate", dir.join(CERT).display()))
    })?;
    let identity = uri_sans(leaf)?
        .first()
        .map(|u| SpiffeId::parse(u))
        .transpose()?
        .ok_or(IdentityError::NoSpiffeId)?;
    let key = PrivateKeyDer::from_pem_slice(read(KEY)?.as_bytes())
        .map_err(|e| IdentityError::Malformed(format!("{}: {e}", dir.join(KEY).display())))?;
    let bundle = TrustBundle::from_pem(identity.trust_domain(), &read(BUNDLE)?)?;
    Ok(NodeCredentials {
        identity,
        cert: WorkloadCert { chain, key },
        bundle,
    })
}
