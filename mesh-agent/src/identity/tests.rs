//! The CA and peer verification, on real keys and certificates.
use std::{
    os::unix::fs::PermissionsExt as _,
    time::{Duration, SystemTime},
};

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType, string::Ia5String,
};

use super::{
    IdentityError, SpiffeId,
    ca::{DEFAULT_LIFETIME, MeshCa, ROOT_KEY},
    verify::PeerRole,
};

fn ca(trust_domain: &str) -> (tempfile::TempDir, MeshCa) {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::init(&dir.path().join("ca"), trust_domain).unwrap();
    (dir, ca)
}

fn cart() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/cart").unwrap()
}

#[test]
fn issued_certificate_verifies_to_its_identity_in_both_roles() {
    let (_dir, ca) = ca("cluster.local");
    let key = KeyPair::generate().unwrap();
    let issued = ca.issue(&cart(), &key, DEFAULT_LIFETIME).unwrap();
    let bundle = ca.bundle().unwrap();
    for role in [PeerRole::Client, PeerRole::Server] {
        let id = bundle
            .verify(std::slice::from_ref(&issued.der), SystemTime::now(), role)
            .unwrap();
        assert_eq!(id, cart());
    }
    let left = issued.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(23 * 3600) && left <= DEFAULT_LIFETIME,
        "{left:?}"
    );
}

#[test]
fn root_key_is_private_never_overwritten_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca");
    let first = MeshCa::init(&path, "cluster.local").unwrap();
    let mode = std::fs::metadata(path.join(ROOT_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let key_before = std::fs::read(path.join(ROOT_KEY)).unwrap();
    assert!(matches!(
        MeshCa::init(&path, "cluster.local"),
        Err(IdentityError::AlreadyInitialised(_))
    ));
    assert_eq!(std::fs::read(path.join(ROOT_KEY)).unwrap(), key_before);

    // A reloaded CA signs certificates the original bundle trusts.
    let reloaded = MeshCa::load(&path).unwrap();
    assert_eq!(reloaded.trust_domain(), "cluster.local");
    let key = KeyPair::generate().unwrap();
    let issued = reloaded.issue(&cart(), &key, DEFAULT_LIFETIME).unwrap();
    let id = first
        .bundle()
        .unwrap()
        .verify(&[issued.der], SystemTime::now(), PeerRole::Client);
    assert_eq!(id.unwrap(), cart());
    assert!(matches!(
        MeshCa::load(&dir.path().join("nothing")),
        Err(IdentityError::NotInitialised(_))
    ));
    assert!(matches!(
        MeshCa::init(&dir.path().join("bad"), "Bad_Domain"),
        Err(IdentityError::InvalidTrustDomain(_))
    ));
}

#[test]
fn certificates_from_elsewhere_or_expired_are_refused() {
    let (_a, ours) = ca("cluster.local");
    let bundle = ours.bundle().unwrap();
    let key = KeyPair::generate().unwrap();

    // Another mesh's CA, even one claiming the same trust domain.
    let (_b, impostor) = ca("cluster.local");
    let forged = impostor.issue(&cart(), &key, DEFAULT_LIFETIME).unwrap();
    let err = bundle
        .verify(&[forged.der], SystemTime::now(), PeerRole::Client)
        .unwrap_err();
    assert!(matches!(err, IdentityError::Untrusted(_)), "{err}");

    // Another trust domain.
    let (_c, other) = ca("other.example");
    let foreign_id = SpiffeId::parse("spiffe://other.example/ns/shop/sa/cart").unwrap();
    let foreign = other.issue(&foreign_id, &key, DEFAULT_LIFETIME).unwrap();
    assert!(
        bundle
            .verify(&[foreign.der], SystemTime::now(), PeerRole::Client)
            .is_err()
    );
    assert!(matches!(
        ours.issue(&foreign_id, &key, DEFAULT_LIFETIME),
        Err(IdentityError::ForeignTrustDomain { .. })
    ));

    // Expired: valid for a minute, presented an hour later.
    let short = ours.issue(&cart(), &key, Duration::from_secs(60)).unwrap();
    let later = SystemTime::now() + Duration::from_secs(3600);
    let err = bundle
        .verify(&[short.der], later, PeerRole::Server)
        .unwrap_err();
    assert!(
        err.to_string().contains("expired") || matches!(err, IdentityError::Untrusted(_)),
        "{err}"
    );

    assert!(matches!(
        bundle.verify(&[], SystemTime::now(), PeerRole::Client),
        Err(IdentityError::NoCertificate)
    ));
}

/// Signs a leaf with the mesh CA's own key but arbitrary URI SANs, as a
/// compromised or buggy issuer might.
fn leaf_with_uris(
    ca_dir: &std::path::Path,
    uris: &[&str],
) -> rustls_pki_types::CertificateDer<'static> {
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join(ROOT_KEY)).unwrap()).unwrap();
    let root_pem = std::fs::read_to_string(ca_dir.join(super::ca::ROOT_CERT)).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(Ia5String::try_from(*u).unwrap()))
        .collect();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let key = KeyPair::generate().unwrap();
    params.signed_by(&key, &issuer).unwrap().der().clone()
}

#[test]
fn leaf_must_carry_exactly_one_spiffe_id_of_this_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca");
    let ca = MeshCa::init(&path, "cluster.local").unwrap();
    let bundle = ca.bundle().unwrap();
    let verify = |uris: &[&str]| {
        bundle.verify(
            &[leaf_with_uris(&path, uris)],
            SystemTime::now(),
            PeerRole::Client,
        )
    };

    assert!(matches!(verify(&[]), Err(IdentityError::NoSpiffeId)));
    assert!(matches!(
        verify(&[
            "spiffe://cluster.local/ns/a/sa/x",
            "spiffe://cluster.local/ns/b/sa/y"
        ]),
        Err(IdentityError::ManyUris(2))
    ));
    assert!(matches!(
        verify(&["https://cluster.local/ns/shop/sa/cart"]),
        Err(IdentityError::InvalidId { .. })
    ));
    assert!(matches!(
        verify(&["spiffe://elsewhere/ns/shop/sa/cart"]),
        Err(IdentityError::WrongTrustDomain { .. })
    ));
    assert_eq!(
        verify(&["spiffe://cluster.local/ns/shop/sa/cart"]).unwrap(),
        cart()
    );
}
