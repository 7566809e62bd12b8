//! A node agent's pod certificates: requested from the CA when a pod is
//! enrolled, renewed at half-life (so a certificate never expires under a
//! live connection), dropped when the pod leaves. Keys are generated here
//! and never leave the node.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rcgen::KeyPair;
use rustls::{ClientConfig, server::ResolvesServerCert, sign::CertifiedKey};
use serde::{Deserialize, Serialize};
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    SpiffeId, renew,
    signing::{
        CaAddr, SignResponse,
        bootstrap::TokenFile,
        ca_identity,
        client::{SigningError, issued, request_certificate, request_workload_credentials},
        credentials::NodeCert,
    },
};
use crate::tunnel::{
    client::Connection,
    pool::{Key, Pool, Spread},
    tls::{WorkloadCert, client_config_resolving},
};

/// Where certificates come from: the CA's address, how this process proves
/// who it is, and the TLS client configuration to the CA (which insists on
/// the CA's identity).
pub struct CertSource {
    pub ca: CaAddr,
    auth: Auth,
    tls: Arc<ClientConfig>,
}

enum Auth {
    /// A node agent: its node certificate on the connection, for the pods
    /// of its node.
    Node(Arc<NodeCert>),
    /// A workload in its own pod (a waypoint on Kubernetes): its pod's
    /// token in each request, for that pod only.
    Workload(TokenFile),
}

impl CertSource {
    /// As node agent `node`.
    pub fn new(ca: CaAddr, node: Arc<NodeCert>) -> Result<Self, rustls::Error> {
        let expected = ca_identity(node.identity().trust_domain())
            .expect("a parsed identity's trust domain makes a valid CA identity");
        let tls = client_config_resolving(node.resolver(), node.bundle(), Some(expected))?;
        Ok(Self {
            ca,
            auth: Auth::Node(node),
            tls,
        })
    }

    /// As the workload whose pod's token is in `token`, over `tls` with no
    /// client certificate ([`anonymous_to_ca`](super::signing::bootstrap::anonymous_to_ca)).
    pub fn workload(ca: CaAddr, token: TokenFile, tls: Arc<ClientConfig>) -> Self {
        Self {
            ca,
            auth: Auth::Workload(token),
            tls,
        }
    }

    /// The pooled connection to the CA, dialled when there is none: the
    /// CA's name is resolved each time, and a connection is retired when
    /// the node certificate it authenticated with expires (a renewed one
    /// is used by the next).
    async fn connect(
        &self,
        node: &NodeCert,
        pool: &Pool<Connection>,
    ) -> Result<Connection, SigningError> {
        let addr = self.ca.resolve().await?;
        let key = Key {
            source: node.identity().clone(),
            destination: addr,
        };
        let retire_at = node.not_after();
        Ok(pool
            .get(&key, || async {
                Connection::dial(addr, Arc::clone(&self.tls))
                    .await
                    .map(|c| c.retire_at(retire_at))
            })
            .await?)
    }

    /// A connection to the CA of its own (for a long-lived stream, or a
    /// workload's rare requests), with the node's current certificate if
    /// any.
    pub async fn dial(&self) -> Result<Connection, SigningError> {
        let addr = self.ca.resolve().await?;
        Ok(Connection::dial(addr, Arc::clone(&self.tls)).await?)
    }

    /// Asks the CA to sign `pod`'s certificate over `key`.
    async fn request(
        &self,
        pod: &str,
        key: &KeyPair,
        pool: &Pool<Connection>,
    ) -> Result<SignResponse, SigningError> {
        match &self.auth {
            Auth::Node(node) => {
                let conn = self.connect(node, pool).await?;
                request_certificate(&conn, pod, key).await
            }
            Auth::Workload(token) => {
                let token = token
                    .read()
                    .map_err(|e| SigningError::Token(e.to_string()))?;
                let conn = self.dial().await?;
                request_workload_credentials(&conn, &token, pod, key).await
            }
        }
    }
}

/// A pod's current certificate.
pub struct PodCert {
    pub identity: SpiffeId,
    pub cert: WorkloadCert,
    /// The same, ready for a TLS server (key parsed once).
    pub certified: Arc<CertifiedKey>,
    pub serial: String,
    pub not_after: SystemTime,
}

/// What `meshctl status` shows about a pod's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    pub pod: String,
    pub identity: String,
    pub serial: String,
    pub not_after_unix: u64,
    /// Certificates obtained for this pod since it was enrolled (1 = initial).
    pub issued: u32,
}

/// The mesh CA as an agent sees it, for `meshctl check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    /// Where certificates are requested.
    pub address: String,
    /// Pods whose latest request (first certificate or renewal) failed.
    pub failing: Vec<CertFailure>,
}

/// A pod whose certificate requests fail, until one succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFailure {
    pub pod: String,
    /// The latest error.
    pub error: String,
    /// When the first of these consecutive failures happened.
    pub since_unix: u64,
    pub attempts: u32,
}

struct Entry {
    cert: Option<Arc<PodCert>>,
    issued: u32,
    /// Consecutive failed requests since the last success.
    failure: Option<CertFailure>,
}

type Entries = Arc<Mutex<BTreeMap<String, Entry>>>;

/// Shared by the agent's reconcile loop and every connection handler.
pub struct CertStore {
    source: Arc<CertSource>,
    pool: Arc<Pool<Connection>>,
    entries: Entries,
    /// Woken whenever a certificate is stored.
    updated: Arc<Notify>,
    tasks: Mutex<BTreeMap<String, JoinHandle<()>>>,
}

impl CertStore {
    pub fn new(source: CertSource) -> Self {
        Self {
            source: Arc::new(source),
            pool: Arc::new(Pool::new(1, Spread::ONE)),
            entries: Arc::default(),
            updated: Arc::new(Notify::new()),
            tasks: Mutex::default(),
        }
    }

    /// Where its certificates come from (the CA, as this node).
    pub fn source(&self) -> Arc<CertSource> {
        Arc::clone(&self.source)
    }

    /// Keeps certificates for exactly `pods` (`namespace/name`).
    pub fn reconcile(&self, pods: &[String]) {
        let mut tasks = self.tasks.lock().expect("cert store tasks");
        tasks.retain(|pod, task| {
            let keep = pods.contains(pod);
            if !keep {
                task.abort();
                self.entries.lock().expect("cert store").remove(pod);
            }
            keep
        });
        for pod in pods {
            if !tasks.contains_key(pod) {
                let task = tokio::spawn(keep_fresh(
                    pod.clone(),
                    Arc::clone(&self.source),
                    Arc::clone(&self.pool),
                    Arc::clone(&self.entries),
                    Arc::clone(&self.updated),
                ));
                tasks.insert(pod.clone(), task);
            }
        }
    }

    /// The pod's current certificate, once obtained.
    pub fn get(&self, pod: &str) -> Option<Arc<PodCert>> {
        current(&self.entries, pod)
    }

    /// The pod's certificate, waiting up to `timeout` for the first one
    /// (a pod's first connections may race its enrolment).
    pub async fn wait(&self, pod: &str, timeout: Duration) -> Option<Arc<PodCert>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let updated = self.updated.notified();
            if let Some(cert) = self.get(pod) {
                return Some(cert);
            }
            if tokio::time::timeout_at(deadline, updated).await.is_err() {
                return None;
            }
        }
    }

    /// A TLS certificate resolver serving the pod's current certificate, so
    /// renewals reach new handshakes without rebuilding configurations.
    pub fn resolver(&self, pod: &str) -> Arc<dyn ResolvesServerCert> {
        Arc::new(PodCertResolver {
            entries: Arc::clone(&self.entries),
            pod: pod.to_owned(),
        })
    }

    pub fn status(&self) -> Vec<CertStatus> {
        let entries = self.entries.lock().expect("cert store");
        entries
            .iter()
            .filter_map(|(pod, e)| {
                let cert = e.cert.as_ref()?;
                Some(CertStatus {
                    pod: pod.clone(),
                    identity: cert.identity.to_string(),
                    serial: cert.serial.clone(),
                    not_after_unix: unix(cert.not_after),
                    issued: e.issued,
                })
            })
            .collect()
    }

    pub fn ca_status(&self) -> CaStatus {
        let entries = self.entries.lock().expect("cert store");
        CaStatus {
            address: self.source.ca.to_string(),
            failing: entries.values().filter_map(|e| e.failure.clone()).collect(),
        }
    }
}

impl Drop for CertStore {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("cert store tasks").values() {
            task.abort();
        }
    }
}

fn current(entries: &Entries, pod: &str) -> Option<Arc<PodCert>> {
    entries.lock().expect("cert store").get(pod)?.cert.clone()
}

struct PodCertResolver {
    entries: Entries,
    pod: String,
}

impl std::fmt::Debug for PodCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "certificate of pod {}", self.pod)
    }
}

impl ResolvesServerCert for PodCertResolver {
    /// `None` (no certificate yet) aborts the handshake: a pod without an
    /// identity cannot be reached through the tunnel.
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        current(&self.entries, &self.pod).map(|c| Arc::clone(&c.certified))
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Obtains the pod's certificate, then renews it at half its remaining
/// lifetime, forever; failures are retried with capped backoff.
async fn keep_fresh(
    pod: String,
    source: Arc<CertSource>,
    pool: Arc<Pool<Connection>>,
    entries: Entries,
    updated: Arc<Notify>,
) {
    renew::keep_renewed(
        None,
        || fetch(&pod, &source, &pool),
        |cert: &PodCert| cert.not_after,
        |cert| {
            let remaining = cert
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tracing::info!(
                %pod,
                identity = %cert.identity,
                serial = %cert.serial,
                valid_for_s = remaining.as_secs(),
                "certificate obtained"
            );
            {
                let mut entries = entries.lock().expect("cert store");
                let entry = entry(&mut entries, &pod);
                entry.cert = Some(Arc::new(cert));
                entry.issued += 1;
                entry.failure = None;
            }
            updated.notify_waiters();
        },
        |e: SigningError, retry| {
            tracing::warn!(%pod, "certificate request failed, retrying in {retry:?}: {e}");
            let mut entries = entries.lock().expect("cert store");
            let failure = entry(&mut entries, &pod)
                .failure
                .get_or_insert_with(|| CertFailure {
                    pod: pod.clone(),
                    error: String::new(),
                    since_unix: unix(SystemTime::now()),
                    attempts: 0,
                });
            failure.error = e.to_string();
            failure.attempts += 1;
        },
    )
    .await;
}

/// The pod's entry, empty when it had none.
fn entry<'a>(entries: &'a mut BTreeMap<String, Entry>, pod: &str) -> &'a mut Entry {
    entries.entry(pod.to_owned()).or_insert(Entry {
        cert: None,
        issued: 0,
        failure: None,
    })
}

async fn fetch(
    pod: &str,
    source: &CertSource,
    pool: &Pool<Connection>,
) -> Result<PodCert, SigningError> {
    let private = KeyPair::generate()?;
    let signed = source.request(pod, &private, pool).await?;
    let (identity, cert) = issued(&signed, &private)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.chain[0])
        .map_err(|e| SigningError::Protocol(e.to_string()))?;
    let serial = parsed.raw_serial_as_string();
    Ok(PodCert {
        identity,
        serial,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(signed.not_after_unix),
        certified: cert
            .certified_key()
            .map_err(|e| SigningError::Protocol(format!("the issued certificate: {e}")))?,
        cert,
    })
}
