//! `tls-providers`: what HBONE's TLS costs with each of rustls' crypto
//! providers, `ring` and `aws-lc-rs`, measured side by side in one run
//! (issue 19, item 1).
//!
//! Everything runs in memory on one thread, both ends of each connection
//! (no sockets: this is the TLS cost alone, what a provider can change), with
//! the mesh's settings: TLS 1.3 only, ALPN `h2`, mutual authentication with
//! ECDSA P-256 workload certificates carrying only a SPIFFE URI SAN, issued by
//! the mesh's own CA (`mesh_agent::identity::ca::MeshCa`, ECDSA P-256).
//! Measures:
//!
//! - **bulk**: one connection moves `--bulk-mib` client → server in 16 KiB
//!   records (one record per write), per cipher suite; CPU seconds per GB of
//!   the sending end (encrypt, frame) and of the receiving end (deframe,
//!   decrypt, copy out), and GB/s of one core doing both;
//! - **rr**: `--rr-count` exchanges of a 1 KiB record each way on one
//!   connection (AES-256-GCM, the suite HBONE negotiates: first in both
//!   providers' defaults); µs of CPU per exchange, both ends;
//! - **handshake**: `--handshakes` full mutual-TLS handshakes (no resumption),
//!   X25519 and ECDSA P-256 with each provider's preferred suite; CPU µs per
//!   handshake of the client and of the server, and handshakes/s of one core.
//!
//! The providers are interleaved (ring, aws-lc-rs, ring, …) `--reps` times and
//! the figures are medians, so machine drift hits both alike. Built only with
//! the `tls-providers` feature (it links both providers):
//!
//! ```sh
//! cargo run --release -p nodemesh-tests --features tls-providers --bin tls-providers
//! ```
use std::{
    io::{Read as _, Write as _},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use mesh_agent::identity::{
    SpiffeId,
    ca::{DEFAULT_LIFETIME, MeshCa},
    verify::TrustBundle,
};
use rcgen::KeyPair;
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ConnectionCommon, DigitallySignedStruct,
    RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    server::{ParsedCertificate, WebPkiClientVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

#[derive(Parser)]
#[command(about = "Measure HBONE's TLS with rustls' ring and aws-lc-rs providers, interleaved")]
struct Cli {
    /// Interleaved repetitions per provider; figures are medians.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// MiB sent per bulk measurement (per suite, per provider, per repetition).
    #[arg(long, default_value_t = 2048)]
    bulk_mib: usize,
    /// 1 KiB request/response exchanges per measurement.
    #[arg(long, default_value_t = 200_000)]
    rr_count: usize,
    /// Full handshakes per measurement.
    #[arg(long, default_value_t = 2000)]
    handshakes: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    Ring,
    AwsLcRs,
}

impl Provider {
    const BOTH: [Self; 2] = [Self::Ring, Self::AwsLcRs];

    fn name(self) -> &'static str {
        match self {
            Self::Ring => "ring",
            Self::AwsLcRs => "aws-lc-rs",
        }
    }

    /// The provider's defaults (what the mesh would get), limited to `suite`
    /// when one is given.
    fn provider(self, suite: Option<CipherSuite>) -> Arc<CryptoProvider> {
        let mut provider = match self {
            Self::Ring => rustls::crypto::ring::default_provider(),
            Self::AwsLcRs => rustls::crypto::aws_lc_rs::default_provider(),
        };
        if let Some(suite) = suite {
            provider.cipher_suites.retain(|s| s.suite() == suite);
        }
        Arc::new(provider)
    }
}

const SUITES: [(CipherSuite, &str); 3] = [
    (CipherSuite::TLS13_AES_128_GCM_SHA256, "AES-128-GCM"),
    (CipherSuite::TLS13_AES_256_GCM_SHA384, "AES-256-GCM"),
    (
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        "CHACHA20-POLY1305",
    ),
];

/// The suite HBONE negotiates today: both providers' servers prefer it
/// (first in their default lists, which rustls servers follow).
const MESH_SUITE: CipherSuite = CipherSuite::TLS13_AES_256_GCM_SHA384;

const RECORD: usize = 16 * 1024;
/// Records encrypted (then decrypted) per timed batch: the thread CPU clock
/// is a system call, so it is read once per batch, not per record.
const BATCH: usize = 64;

/// The mesh's certificate shapes: a CA's root and two workload leaves.
struct Pki {
    root: CertificateDer<'static>,
    client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
}

/// A CA and two workload certificates issued by the mesh's own CA code (in
/// a scratch directory, removed again), over keys made as agents make them.
fn pki() -> anyhow::Result<Pki> {
    let dir = std::env::temp_dir().join(format!("tls-providers-{}", std::process::id()));
    let ca = MeshCa::init(&dir, "cluster.local");
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    let ca = ca?;
    let root = TrustBundle::certs_from_pem(ca.root_pem())?
        .pop()
        .context("the CA has no root certificate")?;
    let leaf = |id: &str| -> anyhow::Result<_> {
        let key = KeyPair::generate()?;
        let cert = ca.issue(&SpiffeId::parse(id)?, &key, DEFAULT_LIFETIME)?;
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?;
        // The leaf alone, as agents present it (the CA answers with the leaf).
        Ok((vec![cert.der], key))
    };
    Ok(Pki {
        client: leaf("spiffe://cluster.local/ns/shop/sa/web")?,
        server: leaf("spiffe://cluster.local/ns/shop/sa/cart")?,
        root,
    })
}

/// Verifies the server's chain against the root with the provider's
/// algorithms and no name check (HBONE dials addresses; the mesh checks the
/// SPIFFE ID instead, which costs the same with either provider).
#[derive(Debug)]
struct ChainOnly {
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_server_cert_signed_by_trust_anchor(
            &ParsedCertificate::try_from(end_entity)?,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client and server configurations as `mesh-agent/src/tunnel/tls.rs` makes
/// them, on `provider`.
fn configs(
    pki: &Pki,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<(Arc<ClientConfig>, Arc<ServerConfig>)> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.clone())?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), Arc::clone(provider))
            .build()?;
    let mut server = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server.0.clone(), pki.server.1.clone_key())?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly {
            roots,
            provider: Arc::clone(provider),
        }))
        .with_client_auth_cert(pki.client.0.clone(), pki.client.1.clone_key())?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    // Full handshakes only: a resumed one would measure the session cache.
    client.resumption = Resumption::disabled();
    Ok((Arc::new(client), Arc::new(server)))
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Queues every TLS byte `from` has to send in `wire` (cleared first).
fn send<D>(from: &mut ConnectionCommon<D>, wire: &mut Vec<u8>) -> anyhow::Result<()> {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire)?;
    }
    Ok(())
}

/// Feeds `wire` to `to` and processes it.
fn receive<D>(to: &mut ConnectionCommon<D>, wire: &[u8]) -> anyhow::Result<()> {
    let mut rest = wire;
    while !rest.is_empty() {
        to.read_tls(&mut rest)?;
        to.process_new_packets()?;
    }
    Ok(())
}

/// Moves every TLS byte `from` has queued into `to` and processes it.
fn transfer<A, B>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
    wire: &mut Vec<u8>,
) -> anyhow::Result<()> {
    send(from, wire)?;
    receive(to, wire)
}

fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> anyhow::Result<()> {
    let mut wire = Vec::with_capacity(8192);
    while client.is_handshaking() || server.is_handshaking() {
        transfer(client, server, &mut wire)?;
        transfer(server, client, &mut wire)?;
    }
    ensure!(
        client.alpn_protocol() == Some(b"h2"),
        "ALPN h2 not negotiated"
    );
    Ok(())
}

fn connect(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> anyhow::Result<(ClientConnection, ServerConnection)> {
    let name = ServerName::try_from("10.0.0.2")?;
    let mut c = ClientConnection::new(Arc::clone(client), name)?;
    let mut s = ServerConnection::new(Arc::clone(server))?;
    handshake(&mut c, &mut s)?;
    Ok((c, s))
}

/// Drains `conn`'s received plaintext into `buf`; returns the byte count.
fn drain(reader: &mut rustls::Reader<'_>, buf: &mut [u8]) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        match reader.read(buf) {
            Ok(0) => bail!("unexpected end of the TLS stream"),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) => return Err(e.into()),
        }
    }
}

struct Bulk {
    send_s_per_gb: f64,
    recv_s_per_gb: f64,
}

impl Bulk {
    fn gb_per_s_one_core(&self) -> f64 {
        1.0 / (self.send_s_per_gb + self.recv_s_per_gb)
    }
}

fn bulk(pki: &Pki, provider: Provider, suite: CipherSuite, mib: usize) -> anyhow::Result<Bulk> {
    let (client_config, server_config) = configs(pki, &provider.provider(Some(suite)))?;
    let (mut client, mut server) = connect(&client_config, &server_config)?;
    ensure!(
        client.negotiated_cipher_suite().map(|s| s.suite()) == Some(suite),
        "{suite:?} not negotiated"
    );
    client.set_buffer_limit(None);
    let payload: Vec<u8> = (0..RECORD).map(|i| (i % 251) as u8).collect();
    let mut wire = Vec::with_capacity(BATCH * (RECORD + 64));
    let mut out = vec![0; RECORD];
    let records = mib * 1024 * 1024 / RECORD;
    let (mut send_cpu, mut recv_cpu, mut received) = (0.0, 0.0, 0);
    for _ in 0..records.div_ceil(BATCH) {
        wire.clear();
        let t0 = thread_cpu();
        for _ in 0..BATCH {
            client.writer().write_all(&payload)?;
            client.write_tls(&mut wire)?;
        }
        let t1 = thread_cpu();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            server.read_tls(&mut rest)?;
            server.process_new_packets()?;
            received += drain(&mut server.reader(), &mut out)?;
        }
        let t2 = thread_cpu();
        send_cpu += t1 - t0;
        recv_cpu += t2 - t1;
    }
    ensure!(received == records.div_ceil(BATCH) * BATCH * RECORD);
    let gb = received as f64 / 1e9;
    Ok(Bulk {
        send_s_per_gb: send_cpu / gb,
        recv_s_per_gb: recv_cpu / gb,
    })
}

/// CPU µs per 1 KiB request and 1 KiB response, both ends.
fn rr(pki: &Pki, provider: Provider, count: usize) -> anyhow::Result<f64> {
    let (client_config, server_config) = configs(pki, &provider.provider(Some(MESH_SUITE)))?;
    let (mut client, mut server) = connect(&client_config, &server_config)?;
    let message = [7u8; 1024];
    let mut buf = vec![0; 4096];
    let mut wire = Vec::with_capacity(4096);
    let start = thread_cpu();
    for _ in 0..count {
        client.writer().write_all(&message)?;
        transfer(&mut client, &mut server, &mut wire)?;
        ensure!(drain(&mut server.reader(), &mut buf)? == message.len());
        server.writer().write_all(&message)?;
        transfer(&mut server, &mut client, &mut wire)?;
        ensure!(drain(&mut client.reader(), &mut buf)? == message.len());
    }
    Ok((thread_cpu() - start) / count as f64 * 1e6)
}

struct Handshake {
    client_us: f64,
    server_us: f64,
    kx: String,
    suite: String,
}

fn handshakes(pki: &Pki, provider: Provider, count: usize) -> anyhow::Result<Handshake> {
    let (client_config, server_config) = configs(pki, &provider.provider(None))?;
    let name = ServerName::try_from("10.0.0.2")?;
    let mut wire = Vec::with_capacity(8192);
    let (mut client_cpu, mut server_cpu) = (0.0, 0.0);
    let mut last = None;
    for _ in 0..count {
        let t0 = thread_cpu();
        let mut c = ClientConnection::new(Arc::clone(&client_config), name.clone())?;
        send(&mut c, &mut wire)?; // ClientHello
        let t1 = thread_cpu();
        let mut s = ServerConnection::new(Arc::clone(&server_config))?;
        receive(&mut s, &wire)?;
        send(&mut s, &mut wire)?; // ServerHello … Finished
        let t2 = thread_cpu();
        receive(&mut c, &wire)?;
        send(&mut c, &mut wire)?; // Certificate, CertificateVerify, Finished
        let t3 = thread_cpu();
        receive(&mut s, &wire)?;
        let t4 = thread_cpu();
        ensure!(!c.is_handshaking() && !s.is_handshaking());
        client_cpu += (t1 - t0) + (t3 - t2);
        server_cpu += (t2 - t1) + (t4 - t3);
        last = Some((
            c.negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name())),
            c.negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite())),
        ));
    }
    let (kx, suite) = last.context("no handshake")?;
    let n = count as f64;
    Ok(Handshake {
        client_us: client_cpu / n * 1e6,
        server_us: server_cpu / n * 1e6,
        kx: kx.unwrap_or_default(),
        suite: suite.unwrap_or_default(),
    })
}

/// The middle value (the upper one of the two middles for an even count),
/// as `nodemesh-bench` takes it.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One figure's samples, per provider.
#[derive(Default)]
struct Samples([Vec<f64>; 2]);

impl Samples {
    fn push(&mut self, provider: Provider, value: f64) {
        self.0[usize::from(provider == Provider::AwsLcRs)].push(value);
    }

    /// Medians (ring, aws-lc-rs).
    fn medians(&mut self) -> (f64, f64) {
        let [ring, aws] = &mut self.0;
        (median(ring), median(aws))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure!(cli.reps > 0, "--reps must be at least 1");
    let pki = pki()?;
    let mut bulk_send: Vec<Samples> = SUITES.iter().map(|_| Samples::default()).collect();
    let mut bulk_recv: Vec<Samples> = SUITES.iter().map(|_| Samples::default()).collect();
    let mut bulk_core: Vec<Samples> = SUITES.iter().map(|_| Samples::default()).collect();
    let (mut rr_us, mut hs_client, mut hs_server, mut hs_per_s) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let mut negotiated = Vec::new();
    let started = Instant::now();
    for rep in 0..cli.reps {
        for provider in Provider::BOTH {
            for (i, (suite, _)) in SUITES.iter().enumerate() {
                let b = bulk(&pki, provider, *suite, cli.bulk_mib)?;
                bulk_send[i].push(provider, b.send_s_per_gb);
                bulk_recv[i].push(provider, b.recv_s_per_gb);
                bulk_core[i].push(provider, b.gb_per_s_one_core());
            }
            rr_us.push(provider, rr(&pki, provider, cli.rr_count)?);
            let h = handshakes(&pki, provider, cli.handshakes)?;
            hs_client.push(provider, h.client_us);
            hs_server.push(provider, h.server_us);
            hs_per_s.push(provider, 1e6 / (h.client_us + h.server_us));
            if rep == 0 {
                negotiated.push(format!("{}: {}, {}", provider.name(), h.kx, h.suite));
            }
        }
        eprintln!(
            "repetition {}/{} done ({:.0} s)",
            rep + 1,
            cli.reps,
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "{} interleaved repetitions per provider, medians; bulk {} MiB in 16 KiB records; rr {} \
         exchanges of 1 KiB each way (AES-256-GCM); {} full mutual handshakes (ECDSA P-256; {})\n",
        cli.reps,
        cli.bulk_mib,
        cli.rr_count,
        cli.handshakes,
        negotiated.join("; "),
    );
    println!("| measure | figure | ring | aws-lc-rs | aws-lc-rs/ring |");
    println!("|---|---|---:|---:|---:|");
    let row = |measure: &str, figure: &str, samples: &mut Samples, digits: usize| {
        let (ring, aws) = samples.medians();
        println!(
            "| {measure} | {figure} | {ring:.digits$} | {aws:.digits$} | {:.2} |",
            aws / ring
        );
    };
    for (i, (_, name)) in SUITES.iter().enumerate() {
        let measure = format!("bulk {name}");
        row(&measure, "GB/s, one core, both ends", &mut bulk_core[i], 2);
        row(&measure, "sender CPU s/GB", &mut bulk_send[i], 3);
        row(&measure, "receiver CPU s/GB", &mut bulk_recv[i], 3);
    }
    row("rr 1 KiB", "CPU µs per exchange, both ends", &mut rr_us, 2);
    row("handshake", "client CPU µs", &mut hs_client, 0);
    row("handshake", "server CPU µs", &mut hs_server, 0);
    row(
        "handshake",
        "per second, one core, both ends",
        &mut hs_per_s,
        0,
    );
    Ok(())
}
