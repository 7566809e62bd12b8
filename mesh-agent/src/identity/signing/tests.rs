//! Signing over mTLS on loopback: the CA signs only for pods on the
//! requesting node, and only for node agents.
use std::{sync::Arc, time::SystemTime};

use rcgen::{KeyPair, PublicKeyData as _};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use super::{
    ca_identity,
    client::{SigningError, request_certificate},
    credentials::{NodeCert, NodeCredentials},
    node_identity,
    server::{Signer, serve_connection},
    token_review::TokenReviewer,
};
use crate::{
    identity::{
        SpiffeId,
        ca::{DEFAULT_LIFETIME, MeshCa},
        store::{CertSource, CertStore},
        verify::{PeerRole, TrustBundle},
    },
    state::Loaded,
    tunnel::{
        client::Connection,
        tls::{WorkloadCert, client_config, server_config, server_config_optional_clients},
    },
};

pub(super) const TD: &str = "cluster.local";

pub(super) fn cert_for(ca: &MeshCa, id: &SpiffeId) -> WorkloadCert {
    let key = KeyPair::generate().unwrap();
    let issued = ca.issue(id, &key, DEFAULT_LIFETIME).unwrap();
    WorkloadCert {
        chain: vec![issued.der],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

pub(super) struct Setup {
    pub(super) dir: tempfile::TempDir,
    /// The same CA, opened a second time, for issuing test credentials.
    pub(super) issuer: MeshCa,
    pub(super) bundle: TrustBundle,
    pub(super) addr: std::net::SocketAddr,
    /// The CA's model (what the workload directory serves).
    pub(super) model: tokio::sync::watch::Sender<Arc<Loaded>>,
}

/// A CA whose model has shop/cart-1 on n1 and shop/pay-1 on n2.
async fn ca_server() -> Setup {
    ca_server_with(None, DEFAULT_LIFETIME).await
}

/// [`ca_server`] taking node agents' tokens to `tokens` (and letting
/// clients come without a certificate), issuing for `lifetime`.
pub(super) async fn ca_server_with(
    tokens: Option<TokenReviewer>,
    lifetime: std::time::Duration,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca");
    let ca = MeshCa::init(&path, TD).unwrap();
    let issuer = MeshCa::load(&path).unwrap();
    let bundle = ca.bundle().unwrap();
    let cert = cert_for(&ca, &ca_identity(TD).unwrap());
    let tls = if tokens.is_some() {
        server_config_optional_clients(&cert, &bundle).unwrap()
    } else {
        server_config(&cert, &bundle).unwrap()
    };
    let lookup: super::server::Lookup = Arc::new(|pod: &str| {
        let (node, sa) = match pod {
            "shop/cart-1" => ("n1", "cart"),
            "shop/pay-1" => ("n2", "payments"),
            // Pods whose service accounts mimic the mesh's own identities.
            "nodemesh-system/mimic-node" => {
                return Some(("n1".to_owned(), node_identity(TD, "n2").unwrap()));
            }
            "nodemesh-system/mimic-ca" => {
                return Some(("n1".to_owned(), ca_identity(TD).unwrap()));
            }
            _ => return None,
        };
        Some((node.to_owned(), SpiffeId::new(TD, "shop", sa).unwrap()))
    });
    let (model, model_rx) = tokio::sync::watch::channel(Arc::new(Loaded::default()));
    let signer = Arc::new(Signer {
        ca,
        bundle: bundle.clone(),
        lookup,
        lifetime,
        tokens,
        model: model_rx,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            tokio::spawn(serve_connection(
                tcp,
                peer,
                Arc::clone(&tls),
                Arc::clone(&signer),
            ));
        }
    });
    Setup {
        dir,
        issuer,
        bundle,
        addr,
        model,
    }
}

/// Client TLS as `id`, insisting on the CA's identity.
fn tls_as(setup: &Setup, id: &SpiffeId) -> Arc<rustls::ClientConfig> {
    client_config(
        &cert_for(&setup.issuer, id),
        &setup.bundle,
        Some(ca_identity(TD).unwrap()),
    )
    .unwrap()
}

pub(super) async fn connect_as(setup: &Setup, id: &SpiffeId) -> Connection {
    Connection::dial(setup.addr, tls_as(setup, id))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_node_gets_certificates_for_its_own_pods_only() {
    let setup = ca_server().await;
    let n1 = connect_as(&setup, &node_identity(TD, "n1").unwrap()).await;
    let key = KeyPair::generate().unwrap();
    let signed = request_certificate(&n1, "shop/cart-1", &key).await.unwrap();
    assert_eq!(signed.identity, "spiffe://cluster.local/ns/shop/sa/cart");
    // The certificate verifies, names the pod's identity, and is over our key.
    let der = TrustBundle::certs_from_pem(&signed.certificate)
        .unwrap()
        .remove(0);
    let id = setup
        .bundle
        .verify(
            std::slice::from_ref(&der),
            SystemTime::now(),
            PeerRole::Client,
        )
        .unwrap();
    assert_eq!(id.to_string(), signed.identity);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        parsed.public_key().raw,
        key.subject_public_key_info().as_slice()
    );

    let other_node = request_certificate(&n1, "shop/pay-1", &key)
        .await
        .unwrap_err();
    assert!(
        matches!(&other_node, SigningError::Refused { status: 403, message } if message.contains("runs on node n2")),
        "{other_node}"
    );
    let unknown = request_certificate(&n1, "shop/ghost", &key)
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, SigningError::Refused { status: 404, .. }),
        "{unknown}"
    );
    for mimic in ["nodemesh-system/mimic-node", "nodemesh-system/mimic-ca"] {
        let refused = request_certificate(&n1, mimic, &key).await.unwrap_err();
        assert!(
            matches!(&refused, SigningError::Refused { status: 403, message } if message.contains("reserved")),
            "{mimic}: {refused}"
        );
    }
}

#[tokio::test]
async fn only_node_agents_may_ask() {
    let setup = ca_server().await;
    let workload = connect_as(&setup, &SpiffeId::new(TD, "shop", "cart").unwrap()).await;
    let err = request_certificate(&workload, "shop/cart-1", &KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SigningError::Refused { status: 403, message } if message.contains("not a node agent")),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_of_another_mesh_cannot_connect() {
    let setup = ca_server().await;
    let dir = tempfile::tempdir().unwrap();
    let foreign = MeshCa::init(&dir.path().join("ca"), TD).unwrap();
    let tls = client_config(
        &cert_for(&foreign, &node_identity(TD, "n1").unwrap()),
        &setup.bundle,
        Some(ca_identity(TD).unwrap()),
    )
    .unwrap();
    let refused = match Connection::dial(setup.addr, tls).await {
        Err(_) => true,
        Ok(conn) => request_certificate(&conn, "shop/cart-1", &KeyPair::generate().unwrap())
            .await
            .is_err(),
    };
    assert!(refused, "a node certificate from another CA was served");
}

/// A certificate source as node `node` of `setup`'s CA.
fn source_as(setup: &Setup, node: &str) -> CertSource {
    let node = node_identity(TD, node).unwrap();
    let credentials = NodeCredentials {
        identity: node.clone(),
        cert: cert_for(&setup.issuer, &node),
        bundle: setup.bundle.clone(),
    };
    let node_cert = Arc::new(NodeCert::new(credentials).unwrap());
    CertSource::new(setup.addr.into(), node_cert).unwrap()
}

/// The node's certificate store says which pods' requests fail, and why,
/// until they succeed or the pod leaves (what `meshctl check` reports).
#[tokio::test]
async fn the_store_reports_failing_requests_per_pod() {
    let setup = ca_server().await;
    let store = CertStore::new(source_as(&setup, "n1"));
    // pay-1 runs on n2: the CA refuses it to n1, again on every retry.
    store.reconcile(&["shop/cart-1".to_owned(), "shop/pay-1".to_owned()]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let status = store.ca_status();
        if store.get("shop/cart-1").is_some() && status.failing.iter().any(|f| f.attempts >= 2) {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second failed attempt within 10 s: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status.address, setup.addr.to_string());
    let [failure] = status.failing.as_slice() else {
        panic!("exactly pay-1 should fail: {status:?}");
    };
    assert_eq!(failure.pod, "shop/pay-1");
    assert!(
        failure.error.contains("403") && failure.error.contains("runs on node n2"),
        "{failure:?}"
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        failure.since_unix <= now && now - failure.since_unix < 10,
        "{failure:?}"
    );

    store.reconcile(&["shop/cart-1".to_owned()]);
    assert!(
        store.ca_status().failing.is_empty(),
        "a pod that left still fails"
    );
}

/// The workload directory over real mTLS: a node agent gets the other
/// nodes' pods, then their changes; anyone else is refused.
#[tokio::test]
async fn node_agents_follow_the_directory_of_other_nodes_pods() {
    use futures::StreamExt as _;
    use kube::runtime::watcher::Event;

    use crate::state::{PodInfo, Snapshot};
    let pod = |name: &str, node: &str, ip: &str| PodInfo {
        namespace: "shop".into(),
        name: name.into(),
        node: node.into(),
        service_account: format!("{name}-sa"),
        ips: vec![ip.parse().unwrap()],
        labels: Default::default(),
        netns: Default::default(),
        cgroup: Default::default(),
        ready: true,
    };
    let setup = ca_server().await;
    let loaded = |pods: Vec<PodInfo>| {
        Arc::new(Loaded {
            snapshot: Snapshot {
                pods,
                ..Default::default()
            },
            ..Default::default()
        })
    };
    setup.model.send_replace(loaded(vec![
        pod("cart-1", "n1", "10.1.0.11"),
        pod("pay-1", "n2", "10.1.0.12"),
    ]));
    let mut feed = super::directory::follow(Arc::new(source_as(&setup, "n1")));
    let mut next = async || {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next()).await;
        match event
            .expect("an event within 10 s")
            .expect("the feed goes on")
        {
            Ok(Event::Init) => "init".to_owned(),
            Ok(Event::InitDone) => "done".to_owned(),
            Ok(Event::InitApply(o)) => format!(
                "list {} {}",
                o.metadata.name.unwrap(),
                o.data["spec"]["serviceAccountName"]
            ),
            Ok(Event::Apply(o)) => format!("apply {}", o.metadata.name.unwrap()),
            Ok(Event::Delete(o)) => format!("delete {}", o.metadata.name.unwrap()),
            Err(e) => panic!("the directory failed: {e}"),
        }
    };
    assert_eq!(next().await, "init");
    assert_eq!(
        next().await,
        r#"list pay-1 "pay-1-sa""#,
        "n1's own pods are not sent"
    );
    assert_eq!(next().await, "done");
    setup.model.send_replace(loaded(vec![
        pod("cart-1", "n1", "10.1.0.11"),
        pod("pay-2", "n2", "10.1.0.13"),
    ]));
    let mut changes = vec![next().await, next().await];
    changes.sort();
    assert_eq!(changes, ["apply pay-2", "delete pay-1"]);

    let workload = connect_as(&setup, &SpiffeId::new(TD, "shop", "cart").unwrap()).await;
    let request = http::Request::get(format!("https://ca.invalid{}", super::DIRECTORY_PATH))
        .body(())
        .unwrap();
    let (status, _) = workload.get(request).await.unwrap();
    assert_eq!(
        status,
        http::StatusCode::FORBIDDEN,
        "a workload read the directory"
    );
}
