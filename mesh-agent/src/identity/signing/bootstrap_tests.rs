//! Node credentials for a service-account token: the real CA server over
//! real TLS, its TokenReviews answered by an API server mocked at the HTTP
//! level, the real agent side (token file, root certificate, renewal).
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, StatusCode};
use rcgen::KeyPair;
use serde_json::{Value as Json, json};

use super::{
    CaAddr,
    bootstrap::{NodeAuth, node_cert},
    ca_identity,
    client::{
        SigningError, request_certificate, request_node_credentials, request_workload_credentials,
    },
    node_identity,
    tests::{Setup, TD, ca_server_with, connect_as},
    token_review::{
        AGENT_SERVICE_ACCOUNT, AUDIENCE, NODE_NAME_EXTRA, POD_NAME_EXTRA, TokenReviewer,
    },
};
use crate::{
    identity::{ca::DEFAULT_LIFETIME, signing::credentials::NodeCert},
    state::{
        Loaded, PodInfo, Snapshot,
        cluster::mock::{self, Seen},
        keys::WAYPOINT_POD_LABEL,
    },
    tunnel::{
        client::Connection,
        tls::{client_config_anonymous, client_config_resolving},
    },
};

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// What the mocked API server says of each token.
fn review_of(token: &str) -> Result<Json, StatusCode> {
    let user = |name: &str, node: Option<&str>| {
        let mut user = json!({"username": name, "uid": "4711",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/pod-name": ["nodemesh-agent-x2x9k"]}});
        if let Some(node) = node {
            user["extra"][NODE_NAME_EXTRA] = json!([node]);
        }
        user
    };
    let status = match token {
        t if t.starts_with("good-n1") => json!({"authenticated": true, "audiences": [AUDIENCE],
            "user": user(AGENT_SERVICE_ACCOUNT, Some("n1"))}),
        "expired-secret" => json!({"authenticated": false, "error": "token has expired"}),
        "workload-secret" => json!({"authenticated": true, "audiences": [AUDIENCE],
            "user": user("system:serviceaccount:shop:default", Some("n1"))}),
        "nodeless-secret" => json!({"authenticated": true, "audiences": [AUDIENCE],
            "user": user(AGENT_SERVICE_ACCOUNT, None)}),
        "apiserver-audience-secret" => json!({"authenticated": true,
            "audiences": ["https://kubernetes.default.svc"],
            "user": user(AGENT_SERVICE_ACCOUNT, Some("n1"))}),
        "forbidden-secret" => return Err(StatusCode::FORBIDDEN),
        // Workloads' tokens: `pod/<ns>/<account>/<pod>/<node>`, bound to
        // that pod (and node, unless `-`).
        t if t.starts_with("pod/") => {
            let parts: Vec<&str> = t.split('/').collect();
            let [_, namespace, account, pod, node] = parts.as_slice() else {
                panic!("a workload token is pod/<ns>/<account>/<pod>/<node>: {t}");
            };
            let mut user = user(
                &format!("system:serviceaccount:{namespace}:{account}"),
                (*node != "-").then_some(*node),
            );
            user["extra"][POD_NAME_EXTRA] = json!([pod]);
            json!({"authenticated": true, "audiences": [AUDIENCE], "user": user})
        }
        "podless-secret" => json!({"authenticated": true, "audiences": [AUDIENCE],
            "user": {"username": "system:serviceaccount:shop:cart"}}),
        "node-secret" => json!({"authenticated": true, "audiences": [AUDIENCE],
            "user": {"username": "system:node:n1"}}),
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    Ok(status)
}

/// A TokenReviewer on the mocked API server, and every request it got.
fn reviewer() -> (TokenReviewer, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let client = mock::client(move |req| {
        log.lock().unwrap().push(req.clone());
        assert_eq!((&req.method, req.path.as_str()), (&Method::POST, REVIEWS));
        let token = req.body["spec"]["token"].as_str().unwrap_or_default();
        match review_of(token) {
            Ok(status) => {
                let mut review = req.body.clone();
                review["status"] = status;
                mock::answer(StatusCode::CREATED, &review)
            }
            Err(code) => mock::status_error(
                code,
                "Forbidden",
                "tokenreviews.authentication.k8s.io is forbidden: User \
                 \"system:serviceaccount:nodemesh-system:nodemesh-ca\" cannot create resource",
            ),
        }
    });
    (
        TokenReviewer::new(client, AUDIENCE, AGENT_SERVICE_ACCOUNT),
        seen,
    )
}

struct Agent {
    token_file: PathBuf,
    auth: NodeAuth,
    ca: CaAddr,
}

/// An agent's token file holding `token`, and the CA's root as mounted.
fn agent(setup: &Setup, token: &str) -> Agent {
    let token_file = setup.dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    Agent {
        auth: NodeAuth::Token {
            token_file: token_file.clone(),
            ca_root: setup
                .dir
                .path()
                .join("ca")
                .join(crate::identity::ca::ROOT_CERT),
        },
        token_file,
        ca: CaAddr::from(setup.addr),
    }
}

async fn obtain(agent: &Agent) -> Arc<NodeCert> {
    tokio::time::timeout(Duration::from_secs(20), node_cert(&agent.ca, &agent.auth))
        .await
        .expect("node credentials within 20 s")
        .unwrap()
}

#[tokio::test]
async fn a_token_gets_its_nodes_credentials_which_serve_that_nodes_pods_only() {
    let (tokens, seen) = reviewer();
    let setup = ca_server_with(Some(tokens), DEFAULT_LIFETIME).await;
    let agent = agent(&setup, "good-n1");
    let node = obtain(&agent).await;
    assert_eq!(*node.identity(), node_identity(TD, "n1").unwrap());

    let reviews = seen.lock().unwrap().clone();
    assert_eq!(reviews.len(), 1, "{reviews:#?}");
    assert_eq!(
        reviews[0].body["spec"],
        json!({"token": "good-n1", "audiences": [AUDIENCE]})
    );

    // The credentials are used as `ca issue-node`'s are.
    let tls = client_config_resolving(
        node.resolver(),
        node.bundle(),
        Some(ca_identity(TD).unwrap()),
    )
    .unwrap();
    let conn = Connection::dial(setup.addr, tls).await.unwrap();
    let key = KeyPair::generate().unwrap();
    let own = request_certificate(&conn, "shop/cart-1", &key)
        .await
        .unwrap();
    assert_eq!(own.identity, "spiffe://cluster.local/ns/shop/sa/cart");
    let other = request_certificate(&conn, "shop/pay-1", &key)
        .await
        .unwrap_err();
    assert!(
        matches!(&other, SigningError::Refused { status: 403, message } if message.contains("pod shop/pay-1 runs on node n2")),
        "{other}"
    );
}

/// The CA's refusal of `token`'s request: its status and message.
fn refusal(answer: Result<super::SignResponse, SigningError>, token: &str) -> (u16, String) {
    match answer {
        Err(SigningError::Refused { status, message }) => (status, message),
        other => panic!("{token}: not refused: {other:?}"),
    }
}

#[tokio::test]
async fn refused_tokens_are_told_why_without_the_token() {
    let (tokens, _) = reviewer();
    let setup = ca_server_with(Some(tokens), DEFAULT_LIFETIME).await;
    let tls = client_config_anonymous(&setup.bundle, Some(ca_identity(TD).unwrap())).unwrap();
    let conn = Connection::dial(setup.addr, tls).await.unwrap();
    let key = KeyPair::generate().unwrap();
    for (token, status, why) in [
        (
            "expired-secret",
            401,
            "the API server does not accept the token: token has expired",
        ),
        (
            "workload-secret",
            403,
            "belongs to system:serviceaccount:shop:default; only \
             system:serviceaccount:nodemesh-system:nodemesh-agent",
        ),
        ("nodeless-secret", 403, "names no single node"),
        (
            "apiserver-audience-secret",
            403,
            "not meant for the CA (audiences [\"https://kubernetes.default.svc\"]",
        ),
        ("forbidden-secret", 503, "cannot check the token now"),
        ("", 401, "no bearer token"),
    ] {
        let (got, message) = refusal(request_node_credentials(&conn, token, &key).await, token);
        assert_eq!(got, status, "{token}: {message}");
        assert!(message.contains(why), "{token}: {message}");
        assert!(
            token.is_empty() || !message.contains(token),
            "the answer repeats the token: {message}"
        );
    }

    // Pod certificates still need node credentials.
    let err = request_certificate(&conn, "shop/cart-1", &key)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SigningError::Refused { status: 401, message } if message.contains("no client certificate")),
        "{err}"
    );
}

#[tokio::test]
async fn the_token_is_read_again_at_each_renewal() {
    let (tokens, seen) = reviewer();
    // 4 s certificates: renewed after about 2 s.
    let setup = ca_server_with(Some(tokens), Duration::from_secs(4)).await;
    let agent = agent(&setup, "good-n1");
    let node = obtain(&agent).await;
    let first = node.not_after();
    // The kubelet rotates the token.
    std::fs::write(&agent.token_file, "good-n1-rotated").unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while node.not_after() <= first {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the node certificate renewed");
    let tokens: Vec<Json> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.body["spec"]["token"].clone())
        .collect();
    assert_eq!(tokens[..2], [json!("good-n1"), json!("good-n1-rotated")]);
}

#[tokio::test]
async fn a_ca_without_kubernetes_takes_no_tokens() {
    let setup = ca_server_with(None, DEFAULT_LIFETIME).await;
    let n1 = connect_as(&setup, &node_identity(TD, "n1").unwrap()).await;
    let err = request_node_credentials(&n1, "good-n1", &KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SigningError::Refused { status: 404, message } if message.contains("takes no tokens")),
        "{err}"
    );
}

#[tokio::test]
async fn the_agents_own_mistakes_fail_at_once() {
    let (tokens, _) = reviewer();
    let setup = ca_server_with(Some(tokens), DEFAULT_LIFETIME).await;
    let ca = CaAddr::from(setup.addr);
    let missing = NodeAuth::Token {
        token_file: setup.dir.path().join("no-such-token"),
        ca_root: setup
            .dir
            .path()
            .join("ca")
            .join(crate::identity::ca::ROOT_CERT),
    };
    let err = node_cert(&ca, &missing).await.unwrap_err().to_string();
    assert!(err.starts_with("--ca-token-file "), "{err}");
    let no_root = NodeAuth::Token {
        token_file: agent(&setup, "good-n1").token_file,
        ca_root: setup.dir.path().join("no-root.pem"),
    };
    let err = node_cert(&ca, &no_root).await.unwrap_err().to_string();
    assert!(
        err.starts_with("--ca-root ") && err.contains("nodemesh-ca-root ConfigMap"),
        "{err}"
    );
}

/// A waypoint in its own pod gets exactly its pod's identity for its pod's
/// token: never another pod's, never one its service account does not
/// give, never a reserved one, only on the pod's node, and only a
/// waypoint's pod (other pods' keys stay with their node agent).
#[tokio::test]
async fn a_workloads_token_gets_its_own_pods_identity_only() {
    let (tokens, _) = reviewer();
    let setup = ca_server_with(Some(tokens), DEFAULT_LIFETIME).await;
    // The CA's view: cart-1 (on n1) is a waypoint's pod, pay-1 (on n2) an
    // ordinary one; the mimic of a node agent carries the label too.
    let pod = |namespace: &str, name: &str, node: &str, waypoint: bool| PodInfo {
        namespace: namespace.into(),
        name: name.into(),
        node: node.into(),
        service_account: String::new(),
        ips: Vec::new(),
        labels: if waypoint {
            [(WAYPOINT_POD_LABEL.to_owned(), "cart".to_owned())].into()
        } else {
            Default::default()
        },
        netns: Default::default(),
        cgroup: Default::default(),
        ready: true,
    };
    setup.model.send_replace(Arc::new(Loaded {
        snapshot: Snapshot {
            pods: vec![
                pod("shop", "cart-1", "n1", true),
                pod("shop", "pay-1", "n2", false),
                pod("nodemesh-system", "mimic-node", "n1", true),
            ],
            ..Default::default()
        },
        ..Default::default()
    }));
    let tls = client_config_anonymous(&setup.bundle, Some(ca_identity(TD).unwrap())).unwrap();
    let conn = Connection::dial(setup.addr, tls).await.unwrap();
    let key = KeyPair::generate().unwrap();
    let own = request_workload_credentials(&conn, "pod/shop/cart/cart-1/n1", "shop/cart-1", &key)
        .await
        .unwrap();
    assert_eq!(own.identity, "spiffe://cluster.local/ns/shop/sa/cart");
    // A token that binds no node is judged by its pod alone.
    request_workload_credentials(&conn, "pod/shop/cart/cart-1/-", "shop/cart-1", &key)
        .await
        .unwrap();
    for (token, pod, status, why) in [
        (
            "pod/shop/cart/cart-1/n1",
            "shop/pay-1",
            403,
            "the token is pod shop/cart-1's; it cannot obtain pod shop/pay-1's identity",
        ),
        (
            "pod/shop/payments/cart-1/n1",
            "shop/cart-1",
            403,
            "the token is service account shop/payments's, but the CA sees pod shop/cart-1 as \
             spiffe://cluster.local/ns/shop/sa/cart",
        ),
        (
            "pod/shop/cart/cart-1/n2",
            "shop/cart-1",
            403,
            "bound on node n2, but the CA sees pod shop/cart-1 on node n1",
        ),
        (
            "pod/nodemesh-system/node-n2/mimic-node/n1",
            "nodemesh-system/mimic-node",
            403,
            "an identity reserved for the mesh's own node agents",
        ),
        (
            "pod/shop/ghost/ghost/n1",
            "shop/ghost",
            404,
            "pod shop/ghost is not known to the CA",
        ),
        (
            "pod/shop/payments/pay-1/n2",
            "shop/pay-1",
            403,
            "pod shop/pay-1 is not a waypoint's",
        ),
        ("podless-secret", "shop/cart-1", 403, "names no single pod"),
        (
            "node-secret",
            "shop/cart-1",
            403,
            "not to a service account",
        ),
        (
            "expired-secret",
            "shop/cart-1",
            401,
            "the API server does not accept the token",
        ),
        ("", "shop/cart-1", 401, "no bearer token"),
    ] {
        let (got, message) = refusal(
            request_workload_credentials(&conn, token, pod, &key).await,
            token,
        );
        assert_eq!((got, token), (status, token), "{message}");
        assert!(message.contains(why), "{token}: {message}");
    }
}
