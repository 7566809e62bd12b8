//! Hostile and broken clients on a real agent's HBONE port: the test process
//! plays them from inside an unenrolled pod's network namespace, with real
//! TLS and certificates it makes itself (some signed by the mesh's own root,
//! so only the identity checks stand between them and a tunnel).
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use libtest_mimic::Trial;
use mesh_agent::{
    capture::netns::in_netns,
    identity::{SpiffeId, ca::MeshCa, verify::TrustBundle},
    tunnel::{
        TunnelError,
        client::Connection,
        tls::{WorkloadCert, client_config},
    },
};
use nodemesh_tests::{ClusterSpec, Host, PodChild, mesh::MeshConfig};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

use crate::{
    support::{Meshed, eventually, serve, trial, tunnel_counter},
    tunnel::SHOP_DEFAULT,
};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "hostile::untrusted_identities_are_refused_and_the_agent_keeps_serving",
            untrusted_identities_refused,
        ),
        trial(
            "hostile::malformed_hbone_requests_are_refused_and_recorded",
            malformed_requests_refused,
        ),
    ]
}

/// Pod b (enrolled, n2) runs an echo app on 8080; pod c (unenrolled, n1)
/// is where the hostile clients connect from.
struct Range {
    meshed: Meshed,
    /// The mesh's CA, loaded once from its directory.
    ca: MeshCa,
    bundle: TrustBundle,
    hbone: SocketAddr,
    app: SocketAddr,
    _app_server: PodChild,
}

impl Range {
    fn new() -> anyhow::Result<Self> {
        let cluster = ClusterSpec::cross_node_pair().pod("c", "n1").build()?;
        let config = MeshConfig::new()
            .namespace("shop", true)
            .namespace("legacy", false)
            .pod(cluster.pod("a"), "shop")
            .pod(cluster.pod("b"), "shop")
            .pod(cluster.pod("c"), "legacy");
        let meshed = Meshed::start(cluster, config, 3600)?;
        let b = meshed.cluster.pod("b").clone();
        let app_server = serve(&meshed.cluster, &b, "0.0.0.0:8080", 5, 1)?;
        let ca = MeshCa::load(Path::new(&meshed.pki.path("ca")))?;
        Ok(Self {
            bundle: ca.bundle()?,
            ca,
            hbone: SocketAddr::new(b.ipv4.into(), 15008),
            app: SocketAddr::new(b.ipv4.into(), 8080),
            _app_server: app_server,
            meshed,
        })
    }

    fn prober(&self) -> &Host {
        self.meshed.cluster.pod("c")
    }

    /// A certificate for `id` from the mesh CA, as an agent would get it.
    fn genuine(&self, id: &str) -> anyhow::Result<WorkloadCert> {
        let key = KeyPair::generate()?;
        let issued = self
            .ca
            .issue(&SpiffeId::parse(id)?, &key, Duration::from_secs(3600))?;
        Ok(workload(issued.der, &key))
    }

    /// A certificate signed by the mesh's own root key, with whatever names
    /// and validity the test wants.
    fn forged(
        &self,
        sans: Vec<SanType>,
        valid: std::ops::Range<time::OffsetDateTime>,
    ) -> anyhow::Result<WorkloadCert> {
        let ca_dir = Path::new(&self.meshed.pki.path("ca")).to_owned();
        let root_key = KeyPair::from_pem(&std::fs::read_to_string(
            ca_dir.join(mesh_agent::identity::ca::ROOT_KEY),
        )?)?;
        let root_pem = std::fs::read_to_string(ca_dir.join(mesh_agent::identity::ca::ROOT_CERT))?;
        let root = mesh_agent::identity::verify::TrustBundle::certs_from_pem(&root_pem)?;
        let issuer = Issuer::from_ca_cert_der(root.first().context("root")?, root_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = valid.start;
        params.not_after = valid.end;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(workload(cert.der().clone(), &key))
    }

    /// TLS + HTTP/2 to b's HBONE port from inside pod c, as `cert`.
    async fn dial(&self, cert: &WorkloadCert) -> Result<Connection, TunnelError> {
        let tls = client_config(cert, &self.bundle, None)?;
        let tcp = tcp_from(self.prober(), self.hbone)
            .await
            .map_err(|source| TunnelError::Connect {
                addr: self.hbone,
                source,
            })?;
        Connection::handshake(tcp, self.hbone, tls).await
    }

    fn agent(&self) -> &nodemesh_tests::mesh::Agent {
        self.meshed.agent("n2")
    }

    /// Waits until the agent holds no HBONE connection and relays nothing:
    /// everything a refused client caused was released.
    fn settles(&self) -> anyhow::Result<()> {
        self.agent()
            .wait_status("no open HBONE or inbound connections", |s| {
                s["tunnel"]["hbone_connections_open"] == 0
                    && s["tunnel"]["inbound_connections_open"] == 0
            })
            .map(drop)
    }
}

fn workload(der: CertificateDer<'static>, key: &KeyPair) -> WorkloadCert {
    WorkloadCert {
        chain: vec![der],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// A TCP connection from inside `host`'s network namespace, made by the
/// test process (not in the pod's cgroup, so never captured).
async fn tcp_from(host: &Host, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = in_netns(&host.netns_path(), move || {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )?;
        s.set_nonblocking(true)?;
        Ok::<std::net::TcpStream, std::io::Error>(s.into())
    })
    .map_err(std::io::Error::other)??;
    TcpSocket::from_std_stream(socket).connect(to).await
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Whether `cert` gets a working tunnel to the app (a round trip).
async fn tunnel_works(range: &Range, cert: &WorkloadCert) -> bool {
    let Ok(conn) = range.dial(cert).await else {
        return false;
    };
    let Ok(mut stream) = conn.connect(range.app, None).await else {
        return false;
    };
    if stream.write_all(b"hello").await.is_err() || stream.shutdown().await.is_err() {
        return false;
    }
    let mut back = Vec::new();
    let _ = stream.read_to_end(&mut back).await;
    !back.is_empty()
}

/// Accepts any server: lets a client without a certificate reach the point
/// where the server must refuse it.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS with no client certificate, then an HTTP/2 CONNECT: must not get through.
async fn anonymous_tls_refused(range: &Range) -> anyhow::Result<bool> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tcp_from(range.prober(), range.hbone).await?;
    match Connection::handshake(tcp, range.hbone, Arc::new(config)).await {
        Err(_) => Ok(true),
        Ok(conn) => Ok(conn.connect(range.app, None).await.is_err()),
    }
}

/// Plain TCP bytes on the HBONE port: answered with nothing useful.
async fn garbage_refused(range: &Range) -> anyhow::Result<bool> {
    let mut tcp = tcp_from(range.prober(), range.hbone).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n\x00\xff garbage")
        .await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await?;
    Ok(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"))
}

fn untrusted_identities_refused() -> anyhow::Result<()> {
    let range = Range::new()?;
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let uri = |s: &str| -> anyhow::Result<SanType> { Ok(SanType::URI(s.try_into()?)) };
    let foreign_dir = range.meshed.cluster.scratch_dir("foreign-ca")?;
    let foreign = MeshCa::init(&foreign_dir.join("ca"), "evil.local")?;
    let foreign_key = KeyPair::generate()?;
    let foreign_cert = foreign.issue(
        &SpiffeId::parse("spiffe://evil.local/ns/shop/sa/default")?,
        &foreign_key,
        Duration::from_secs(3600),
    )?;
    let impostors: Vec<(&str, WorkloadCert)> = vec![
        (
            "a certificate from another mesh's CA",
            workload(foreign_cert.der, &foreign_key),
        ),
        (
            "another trust domain, signed by this mesh's root",
            range.forged(
                vec![uri("spiffe://evil.local/ns/shop/sa/default")?],
                now - hour..now + hour,
            )?,
        ),
        (
            "an expired certificate",
            range.forged(vec![uri(SHOP_DEFAULT)?], now - 2 * hour..now - hour)?,
        ),
        (
            "a SPIFFE ID that is not a workload",
            range.forged(
                vec![uri("spiffe://cluster.local/not/a/workload")?],
                now - hour..now + hour,
            )?,
        ),
        (
            "no SPIFFE ID (a DNS name only)",
            range.forged(
                vec![SanType::DnsName("frontend.shop".try_into()?)],
                now - hour..now + hour,
            )?,
        ),
    ];
    let rt = runtime()?;
    rt.block_on(async {
        for (what, cert) in &impostors {
            ensure!(!tunnel_works(&range, cert).await, "{what} got a tunnel");
        }
        ensure!(
            anonymous_tls_refused(&range).await?,
            "TLS without a client certificate got a tunnel"
        );
        ensure!(garbage_refused(&range).await?, "plain TCP got an answer");
        ensure!(
            tunnel_works(&range, &range.genuine(SHOP_DEFAULT)?).await,
            "after the refusals a genuine workload certificate gets no tunnel: the agent stopped serving"
        );
        Ok(())
    })?;

    let refused_handshakes = impostors.len() as u64 + 2;
    let agent = range.agent();
    agent.wait_status("every refused handshake counted", |s| {
        s["tunnel"]["handshakes_rejected"].as_u64() >= Some(refused_handshakes)
    })?;
    ensure!(
        tunnel_counter(agent, "handshakes_rejected")? == refused_handshakes,
        "handshakes_rejected should be exactly {refused_handshakes}"
    );
    let refusals = || {
        agent
            .flows()
            .into_iter()
            .filter(|f| f.state == "refused" && f.path == "tunnel")
            .count() as u64
    };
    eventually("a refused flow record per refused handshake", || {
        Ok(refusals() >= refused_handshakes)
    })?;
    range.settles()?;
    let refused: Vec<String> = agent
        .flows()
        .into_iter()
        .filter(|f| f.state == "refused" && f.path == "tunnel")
        .map(|f| f.error.unwrap_or_default())
        .collect();
    ensure!(
        refused.len() as u64 == refused_handshakes,
        "{} refused flow records for {refused_handshakes} refused handshakes: {refused:#?}",
        refused.len()
    );
    let log = agent.process.stderr();
    for reason in [
        "UnknownIssuer",
        "certificate expired",
        "belongs to trust domain evil.local",
        "is not a nodemesh SPIFFE ID",
        "carries no SPIFFE ID",
        "peer sent no certificates",
        "received corrupt message",
    ] {
        ensure!(log.contains(reason), "no log line says {reason:?}");
    }
    Ok(())
}

fn malformed_requests_refused() -> anyhow::Result<()> {
    let range = Range::new()?;
    let rt = runtime()?;
    let b = range.meshed.cluster.pod("b").clone();
    let n2 = range.meshed.cluster.node("n2").clone();
    rt.block_on(async {
        let conn = range
            .dial(&range.genuine(SHOP_DEFAULT)?)
            .await
            .context("a genuine client")?;
        let request = |method: Method, uri: &str, pad: usize| {
            let mut builder = Request::builder().method(method).uri(uri);
            if pad > 0 {
                builder = builder.header("x-padding", "p".repeat(pad));
            }
            builder.body(())
        };
        let cases = [
            (
                "a GET",
                request(Method::GET, &format!("http://{}/", range.app), 0)?,
            ),
            (
                "a CONNECT to a host name",
                request(Method::CONNECT, "example.com:80", 0)?,
            ),
            (
                "a CONNECT with 16 KiB of headers",
                request(Method::CONNECT, &range.app.to_string(), 16 << 10)?,
            ),
            (
                "a CONNECT to an address that is no workload here",
                request(Method::CONNECT, &format!("{}:8080", n2.ipv4), 0)?,
            ),
            (
                "a CONNECT to another pod's subnet address",
                request(Method::CONNECT, "10.2.0.99:8080", 0)?,
            ),
            (
                "a CONNECT to the agent's own plaintext port",
                request(Method::CONNECT, &format!("{}:15006", b.ipv4), 0)?,
            ),
        ];
        for (what, req) in cases {
            let (status, _) = conn
                .request(req, Bytes::new())
                .await
                .with_context(|| what.to_owned())?;
            ensure!(
                status == StatusCode::BAD_REQUEST,
                "{what}: answered {status}"
            );
        }
        ensure!(conn.is_open(), "refusals closed the shared connection");
        let mut ok = conn
            .connect(range.app, None)
            .await
            .context("a valid CONNECT afterwards")?;
        ok.write_all(b"still").await?;
        ok.shutdown().await?;
        let mut back = Vec::new();
        ok.read_to_end(&mut back).await?;
        ensure!(!back.is_empty(), "the valid stream got no reply");

        // Garbage after a good TLS handshake, where HTTP/2 should start.
        let tls = client_config(&range.genuine(SHOP_DEFAULT)?, &range.bundle, None)?;
        let tcp = tcp_from(range.prober(), range.hbone).await?;
        let name = rustls_pki_types::ServerName::try_from("hbone.nodemesh.invalid")?;
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        stream
            .write_all(b"this is not an HTTP/2 preface\r\n\r\n")
            .await?;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        Ok(())
    })?;
    drop(rt);

    let agent = range.agent();
    agent.wait_flow("a record of the garbage after TLS", |f| {
        f.state == "refused" && f.error.as_deref().is_some_and(|e| e.contains("HTTP/2"))
    })?;
    range.settles()?;
    let log = agent.process.stderr();
    for line in [
        "only CONNECT",
        "is not an ip:port",
        "more than the 8192 allowed",
        "no open relay",
        "HBONE connection failed",
    ] {
        ensure!(log.contains(line), "no log line says {line:?}");
    }
    let refused = agent
        .flows()
        .into_iter()
        .filter(|f| f.state == "refused" && f.peer_identity.as_deref() == Some(SHOP_DEFAULT))
        .count();
    ensure!(
        refused == 7,
        "{refused} refused flow records for 7 bad inputs"
    );
    Ok(())
}
