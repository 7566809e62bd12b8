//! HBONE over loopback with real certificates from a real mesh CA.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use http::StatusCode;
use rcgen::KeyPair;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{
    Reported, TunnelError,
    client::Connection,
    server::{Handler, Peer, Refusal, Session, serve},
    tls::{WorkloadCert, accept, client_config, server_config},
};
use crate::{
    identity::{
        SpiffeId,
        ca::{DEFAULT_LIFETIME, MeshCa},
        verify::TrustBundle,
    },
    proxy::relay::relay,
};

struct Pki {
    _dir: tempfile::TempDir,
    ca: MeshCa,
    bundle: Arc<TrustBundle>,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::init(&dir.path().join("ca"), "cluster.local").unwrap();
    let bundle = Arc::new(ca.bundle().unwrap());
    Pki {
        _dir: dir,
        ca,
        bundle,
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).unwrap()
}

fn workload(ca: &MeshCa, sa: &str) -> WorkloadCert {
    let key = KeyPair::generate().unwrap();
    let issued = ca.issue(&id(sa), &key, DEFAULT_LIFETIME).unwrap();
    WorkloadCert {
        chain: vec![issued.der],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// Echoes everything back, then closes (half-close aware).
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(&all).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// An address where nothing listens.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

struct Hbone {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
}

/// Serves `workloads` only, refuses service account `intruder` with 401
/// (saying why in the verdict header), and answers 503 when the workload
/// does not accept.
struct TestHandler {
    workloads: Vec<SocketAddr>,
}

impl Handler for TestHandler {
    async fn open(
        &self,
        peer: Peer,
        target: SocketAddr,
        _service: Option<String>,
    ) -> Result<Session, Refusal> {
        if peer.identity.service_account() == "intruder" {
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "policy")
                .with_verdict("no intruders".into()));
        }
        if !self.workloads.contains(&target) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "not a workload on this node",
            ));
        }
        let upstream = TcpStream::connect(target)
            .await
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        Ok(Box::new(move |tunnel| {
            Box::pin(async move {
                if let Ok(tunnel) = tunnel {
                    relay(tunnel, upstream, std::future::pending(), Arc::default()).await;
                }
            })
        }))
    }

    fn rejected(&self, _: &Peer, _: &str, _: &Refusal) {}
}

async fn hbone_server(pki: &Pki, workloads: Vec<SocketAddr>) -> Hbone {
    let tls = server_config(&workload(&pki.ca, "node-agent"), &pki.bundle).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handshakes);
    let bundle = Arc::clone(&pki.bundle);
    let handler = Arc::new(TestHandler { workloads });
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (tls, bundle) = (Arc::clone(&tls), Arc::clone(&bundle));
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let (tls, identity) = accept(tcp, peer, tls, &bundle).await?;
                let peer = Peer {
                    identity,
                    addr: peer,
                    tls_version: "TLSv1.3",
                };
                serve(tls, peer, handler).await
            });
        }
    });
    Hbone { addr, handshakes }
}

/// A mesh, an echo workload, and an HBONE server serving it.
async fn echo_behind_hbone() -> (Pki, SocketAddr, Hbone) {
    let pki = pki();
    let echo = echo_server().await;
    let server = hbone_server(&pki, vec![echo]).await;
    (pki, echo, server)
}

/// A client TLS config for `sa`, optionally insisting on the server's identity.
fn client(pki: &Pki, sa: &str, server: Option<&str>) -> Arc<rustls::ClientConfig> {
    client_config(&workload(&pki.ca, sa), &pki.bundle, server.map(id)).unwrap()
}

async fn round_trip(conn: &Connection, target: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut stream = conn.connect(target, None).await.unwrap();
    stream.write_all(payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    back
}

#[tokio::test]
async fn bytes_cross_the_tunnel_both_ways_with_half_close() {
    let (pki, echo, server) = echo_behind_hbone().await;
    let tls = client(&pki, "frontend", Some("node-agent"));
    let conn = Connection::dial(server.addr, tls).await.unwrap();
    let payload: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    // The echo server only answers after the client's half-close has
    // crossed the tunnel as END_STREAM.
    assert_eq!(round_trip(&conn, echo, &payload).await, payload);
}

#[tokio::test]
async fn a_hundred_streams_share_one_tls_connection() {
    let (pki, echo, server) = echo_behind_hbone().await;
    let tls = client(&pki, "frontend", None);
    let conn = Connection::dial(server.addr, tls).await.unwrap();
    let streams: Vec<_> = (0..100)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let msg = format!("stream {i}").into_bytes();
                assert_eq!(round_trip(&conn, echo, &msg).await, msg);
            })
        })
        .collect();
    for s in streams {
        s.await.unwrap();
    }
    assert_eq!(
        server.handshakes.load(Ordering::SeqCst),
        1,
        "one TLS handshake for 100 streams"
    );
}

#[tokio::test]
async fn refusals_answer_with_ztunnel_status_codes() {
    let pki = pki();
    let closed = closed_port().await;
    let server = hbone_server(&pki, vec![closed]).await;
    let status_of = |result: Result<_, TunnelError>| match result {
        Err(TunnelError::Refused { status, .. }) => status,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a tunnel"),
    };
    let intruder = client(&pki, "intruder", None);
    let conn = Connection::dial(server.addr, intruder).await.unwrap();
    match conn.connect(closed, None).await {
        Err(TunnelError::Refused {
            status: 401,
            reported,
            ..
        }) => assert_eq!(
            reported,
            Some(Box::new(Reported {
                by: id("node-agent"),
                verdict: "no intruders".into()
            })),
            "the reason, with the server identity the handshake verified"
        ),
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }

    let frontend = client(&pki, "frontend", None);
    let conn = Connection::dial(server.addr, frontend).await.unwrap();
    assert_eq!(
        status_of(conn.connect("127.0.0.1:9".parse().unwrap(), None).await),
        400,
        "no open relay"
    );
    assert_eq!(status_of(conn.connect(closed, None).await), 503);
    assert!(
        conn.is_open(),
        "a refused stream does not close the connection"
    );
}

#[tokio::test]
async fn untrusted_clients_are_refused_and_the_server_keeps_serving() {
    let ours = pki();
    let echo = echo_server().await;
    let server = hbone_server(&ours, vec![echo]).await;

    // A certificate from another mesh's CA.
    let other = pki();
    let forged = client_config(&workload(&other.ca, "frontend"), &ours.bundle, None).unwrap();
    let refused = match Connection::dial(server.addr, forged).await {
        Err(_) => true,
        Ok(conn) => conn.connect(echo, None).await.is_err(),
    };
    assert!(refused, "a client with a foreign certificate got a tunnel");

    // Plain TCP garbage on the HBONE port.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf).await;

    // Still serving.
    let tls = client(&ours, "frontend", None);
    let conn = Connection::dial(server.addr, tls).await.unwrap();
    assert_eq!(round_trip(&conn, echo, b"still here").await, b"still here");
}

#[tokio::test]
async fn a_client_refuses_a_server_with_another_identity() {
    let (pki, _echo, server) = echo_behind_hbone().await;
    let tls = client(&pki, "frontend", Some("payments"));
    let err = Connection::dial(server.addr, tls)
        .await
        .err()
        .expect("server identity mismatch must fail");
    assert!(
        err.to_string()
            .contains("expected spiffe://cluster.local/ns/shop/sa/payments"),
        "{err}"
    );
}

/// A workload that reads a little, then resets its connection.
async fn resetting_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 5];
            let _ = s.read_exact(&mut buf).await;
            crate::proxy::relay::Stream::prepare_reset(&s);
            drop(s);
        }
    });
    addr
}

#[tokio::test]
async fn a_reset_crosses_the_tunnel_as_a_reset_not_an_end() {
    let pki = pki();
    let resetting = resetting_server().await;
    let server = hbone_server(&pki, vec![resetting]).await;
    let conn = Connection::dial(server.addr, client(&pki, "frontend", None))
        .await
        .unwrap();
    let mut stream = conn.connect(resetting, None).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest).await;
    assert!(
        read.is_err(),
        "the workload reset its connection, but the tunnel reported a clean end ({} bytes)",
        rest.len()
    );
    assert!(
        conn.is_open(),
        "one stream's reset does not take the connection down"
    );
}

#[tokio::test]
async fn a_client_reset_reaches_the_workload_as_a_reset() {
    let pki = pki();
    // A workload that reports how its connection ended.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let workload = listener.local_addr().unwrap();
    let ended = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.map(|_| all.len())
    });
    let server = hbone_server(&pki, vec![workload]).await;
    let conn = Connection::dial(server.addr, client(&pki, "frontend", None))
        .await
        .unwrap();
    let mut stream = conn.connect(workload, None).await.unwrap();
    stream.write_all(b"partial").await.unwrap();
    crate::proxy::relay::Stream::prepare_reset(&stream);
    drop(stream);
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), ended)
        .await
        .expect("the workload learns promptly")
        .unwrap();
    assert!(
        result.is_err(),
        "the client reset, but the workload saw a clean end: {result:?}"
    );
}

#[tokio::test]
async fn a_retired_connection_is_not_offered_but_its_streams_finish() {
    let (pki, echo, server) = echo_behind_hbone().await;
    let conn = Connection::dial(server.addr, client(&pki, "frontend", None))
        .await
        .unwrap();
    let mut open_stream = conn.connect(echo, None).await.unwrap();
    let retired = conn.retire_at(std::time::SystemTime::now());
    assert!(
        !retired.is_open(),
        "a retired connection is not offered again"
    );
    open_stream.write_all(b"finishing").await.unwrap();
    open_stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    open_stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(
        back, b"finishing",
        "a stream opened before retirement completes"
    );
}
