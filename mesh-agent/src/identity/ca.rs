//! The mesh CA: a root key that never leaves the CA's directory, and the
//! short-lived workload certificates it signs.
//!
//! Directory layout: `root.key` (PEM, mode 0600, created once, never
//! overwritten) and `root.crt` (PEM). The root certificate carries the trust
//! domain as its URI SAN (`spiffe://<trust-domain>`), so the directory is
//! self-describing. Leaf certificates carry exactly one URI SAN, the
//! workload's SPIFFE ID, and are valid for client and server auth.
use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, string::Ia5String,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::{
    IdentityError, SpiffeId,
    verify::{TrustBundle, trust_domain_of},
};

pub const ROOT_KEY: &str = "root.key";
pub const ROOT_CERT: &str = "root.crt";
/// Workload certificates: 24 h unless configured otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Backdating absorbs clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(60);

pub struct MeshCa {
    trust_domain: String,
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub not_after: std::time::SystemTime,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

impl MeshCa {
    /// Creates a new root in `dir` (created with mode 0700 if missing).
    /// Refuses when `dir` already holds a root key.
    pub fn init(dir: &Path, trust_domain: &str) -> Result<Self, IdentityError> {
        SpiffeId::check_trust_domain(trust_domain)?;
        let key_path = dir.join(ROOT_KEY);
        if key_path.exists() {
            return Err(IdentityError::AlreadyInitialised(dir.to_owned()));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "nodemesh");
        name.push(
            DnType::CommonName,
            format!("nodemesh root CA for {trust_domain}"),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![uri(&format!("spiffe://{trust_domain}"))?];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_LIFETIME;
        let root = params.self_signed(&key)?;
        write_private(&key_path, &key.serialize_pem())?;
        let cert_path = dir.join(ROOT_CERT);
        std::fs::write(&cert_path, root.pem()).map_err(io(&cert_path))?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Opens the CA in `dir`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let key_path = dir.join(ROOT_KEY);
        if !key_path.exists() {
            return Err(IdentityError::NotInitialised(dir.to_owned()));
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let cert_path = dir.join(ROOT_CERT);
        let root_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let root_der = TrustBundle::certs_from_pem(&root_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                IdentityError::Malformed(format!("{} holds no certificate", cert_path.display()))
            })?;
        let trust_domain = trust_domain_of(&root_der)?;
        Ok(Self {
            trust_domain,
            issuer: Issuer::from_ca_cert_der(&root_der, key)?,
            root_pem,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust bundle workloads verify peers against.
    pub fn bundle(&self) -> Result<TrustBundle, IdentityError> {
        TrustBundle::from_pem(&self.trust_domain, &self.root_pem)
    }

    /// The root certificate (the trust bundle handed to agents).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs `csr_pem` (whose signature proves the requester holds the key)
    /// as `id`. Whatever names the CSR asks for are ignored: the CA decides.
    pub fn sign_csr(
        &self,
        id: &SpiffeId,
        csr_pem: &str,
        lifetime: Duration,
    ) -> Result<Issued, IdentityError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.issue(id, &csr.public_key, lifetime)
    }

    /// Signs a workload certificate for `id` over `public_key`.
    pub fn issue(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        lifetime: Duration,
    ) -> Result<Issued, IdentityError> {
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                ca: self.trust_domain.clone(),
                requested: id.to_string(),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri(&id.to_string())?];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(Issued {
            der: cert.der().clone(),
            pem: cert.pem(),
            not_after: params.not_after.into(),
        })
    }
}

/// Writes a private key file: created 0600 under a temporary name, then
/// renamed into place, so it is never readable by others, not even for an
/// instant, and a reader never sees half a key.
pub(crate) fn write_private(path: &Path, pem: &str) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp~");
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(pem.as_bytes()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn uri(text: &str) -> Result<SanType, IdentityError> {
    Ok(SanType::URI(Ia5String::try_from(text)?))
}

/// Where the CA of a node lives by default.
pub fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/nodemesh/ca")
}
