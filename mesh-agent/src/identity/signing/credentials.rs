//! A node agent's own credentials on disk: `node.key` (0600), `node.crt`,
//! `bundle.crt`. Issued by `mesh-agent ca issue-node` (local mode); on
//! Kubernetes a bootstrap token exchange will produce the same files.
use std::path::Path;

use rcgen::KeyPair;
use rustls_pki_types::{PrivateKeyDer, pem::PemObject as _};

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
