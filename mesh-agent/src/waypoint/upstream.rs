//! The waypoint's side towards the backends: which endpoint of a Service
//! gets a request (power of two choices by requests in flight, skipping
//! endpoints ejected after consecutive failures — never all of them), and
//! the HTTP connections to them, each carried by an HBONE stream from the
//! waypoint's own namespace with the waypoint's identity. HTTP/2 connections
//! are shared by every request; idle HTTP/1.1 connections are reused.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http::{Request, Response};
use hyper::{body::Incoming, client::conn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_common::ports;

use super::{FastMap, Waypoint, body::Body};
use crate::{
    flows::record::Text,
    identity::SpiffeId,
    proxy::{dial_hbone, mesh::Mesh, workers::PerWorker},
    state::{ServiceInfo, Snapshot},
    tunnel::{
        TunnelError,
        client::Connection,
        pool::{Key, Pool},
        server::Tunnel,
    },
};

/// How long a request waits for the waypoint's first certificate.
const CERT_WAIT: Duration = Duration::from_secs(5);
/// Consecutive failures (5xx or no connection) that eject an endpoint.
pub const EJECT_AFTER: u32 = 5;
/// The first ejection's length; each further one doubles it, up to
/// [`MAX_EJECTION`].
pub const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Idle HTTP/1.1 connections kept per endpoint.
const IDLE_PER_ENDPOINT: usize = 64;
/// Backends (HBONE destinations) the waypoint keeps a tunnel to.
const TUNNELS: usize = 4096;

/// One pod behind a Service port.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The pod's address and the Service's target port.
    pub addr: SocketAddr,
    /// `namespace/name`.
    pub pod: Text,
    /// What its agent must prove on the HBONE connection.
    pub identity: SpiffeId,
    /// The same, as each request's record names it.
    pub identity_name: Text,
    /// The Service it is an endpoint of, `namespace/name` (for the
    /// destination's records).
    pub service: String,
}

/// Why a request got no response from a backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the waypoint has no certificate yet (is the CA reachable?)")]
    NoCertificate,
    #[error("tunnel to {endpoint}: {source}")]
    Tunnel {
        endpoint: SocketAddr,
        #[source]
        source: TunnelError,
    },
    #[error("HTTP to {endpoint}: {source}")]
    Http {
        endpoint: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// The endpoints of `svc` for Service port `port`, in the address family of
/// `v4`.
pub fn endpoints(
    snapshot: &Snapshot,
    svc: &ServiceInfo,
    port: u16,
    v4: bool,
    trust_domain: &str,
) -> Result<Vec<Endpoint>, String> {
    let name = format!("{}/{}", svc.namespace, svc.name);
    let target = svc
        .ports
        .iter()
        .find(|p| p.port == port)
        .ok_or_else(|| format!("service {name} has no port {port}"))?
        .target_port;
    let found: Vec<Endpoint> = snapshot
        .endpoints(svc)
        .filter(|p| snapshot.enrolled(p))
        .filter_map(|p| {
            let ip = p.ips.iter().find(|ip| ip.is_ipv4() == v4)?;
            let identity = p.identity(trust_domain).ok()?;
            Some(Endpoint {
                addr: SocketAddr::new(*ip, target),
                pod: p.key().into(),
                identity_name: identity.to_string().into(),
                identity,
                service: name.clone(),
            })
        })
        .collect();
    if found.is_empty() {
        return Err(format!(
            "service {name} has no enrolled endpoint (no ready meshed pod matches its selector)"
        ));
    }
    Ok(found)
}

#[derive(Default)]
struct Health {
    in_flight: Arc<AtomicU64>,
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// A request's hold on an endpoint: counted in flight until dropped.
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoint choice and health are the waypoint's; the connections to
/// endpoints are per worker ([`Lane`]).
pub struct Upstreams {
    pub budgets: super::forward::Budgets,
    health: Mutex<FastMap<SocketAddr, Health>>,
    lanes: PerWorker<Lane>,
}

/// One worker's connections to the endpoints, as Envoy's workers keep
/// their own pools.
struct Lane {
    tunnels: Pool<Connection>,
    http1: Mutex<FastMap<SocketAddr, Vec<conn::http1::SendRequest<Body>>>>,
    http2: Mutex<FastMap<SocketAddr, conn::http2::SendRequest<Body>>>,
}

impl Upstreams {
    /// A lane per worker of `mesh`, pooling tunnels as `mesh` says.
    pub fn new(mesh: &Mesh) -> Self {
        Self {
            budgets: super::forward::Budgets::default(),
            health: Mutex::default(),
            lanes: PerWorker::new(&mesh.workers, || Lane {
                tunnels: Pool::new(TUNNELS, mesh.spread),
                http1: Mutex::default(),
                http2: Mutex::default(),
            }),
        }
    }

    fn lane(&self) -> &Lane {
        self.lanes.mine()
    }

    /// Power of two choices among the endpoints not ejected (all of them
    /// when every one is ejected: an outage is not made total by ejection).
    pub fn choose<'a>(&self, candidates: &'a [Endpoint]) -> (&'a Endpoint, InFlight) {
        let now = Instant::now();
        let mut health = self.health.lock().expect("endpoint health");
        let ejected = |e: &Endpoint, health: &FastMap<SocketAddr, Health>| {
            health
                .get(&e.addr)
                .and_then(|h| h.ejected_until)
                .is_some_and(|until| until > now)
        };
        // Counted and indexed rather than collected: no allocation per request.
        let healthy = candidates.iter().filter(|e| !ejected(e, &health)).count();
        let (size, any) = match healthy {
            0 => (candidates.len(), true),
            n => (n, false),
        };
        let nth = |i: usize, health: &FastMap<SocketAddr, Health>| -> &'a Endpoint {
            candidates
                .iter()
                .filter(|e| any || !ejected(e, health))
                .nth(i)
                .expect("index below the pool's size")
        };
        let load = |e: &Endpoint, health: &FastMap<SocketAddr, Health>| {
            health
                .get(&e.addr)
                .map_or(0, |h| h.in_flight.load(Ordering::Relaxed))
        };
        let chosen = if size == 1 {
            nth(0, &health)
        } else {
            let a = fastrand::usize(..size);
            let b = (a + 1 + fastrand::usize(..size - 1)) % size;
            let (a, b) = (nth(a, &health), nth(b, &health));
            if load(b, &health) < load(a, &health) {
                b
            } else {
                a
            }
        };
        let counter = Arc::clone(&health.entry(chosen.addr).or_default().in_flight);
        counter.fetch_add(1, Ordering::Relaxed);
        (chosen, InFlight(counter))
    }

    /// Feeds outlier detection: `failed` is a 5xx or no response at all.
    pub fn outcome(&self, endpoint: &Endpoint, failed: bool) {
        let mut health = self.health.lock().expect("endpoint health");
        let h = health.entry(endpoint.addr).or_default();
        if !failed {
            h.consecutive_failures = 0;
            h.ejections = h.ejections.saturating_sub(1);
            return;
        }
        h.consecutive_failures += 1;
        if h.consecutive_failures >= EJECT_AFTER {
            h.consecutive_failures = 0;
            let length = BASE_EJECTION
                .saturating_mul(1 << h.ejections.min(10))
                .min(MAX_EJECTION);
            h.ejections += 1;
            h.ejected_until = Some(Instant::now() + length);
            tracing::warn!(
                endpoint = %endpoint.addr, pod = %endpoint.pod, seconds = length.as_secs(),
                "endpoint ejected after {EJECT_AFTER} consecutive failures"
            );
        }
    }

    /// Sends `request` to `endpoint` on a pooled connection of the request's
    /// HTTP version (HTTP/2 when `http2`).
    pub async fn send(
        &self,
        wp: &Waypoint,
        endpoint: &Endpoint,
        request: Request<Body>,
        http2: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let http_err = |source| UpstreamError::Http {
            endpoint: endpoint.addr,
            source,
        };
        if http2 {
            let mut sender = self.http2_sender(wp, endpoint).await?;
            sender.ready().await.map_err(http_err)?;
            return sender.send_request(request).await.map_err(http_err);
        }
        let mut sender = match self.lane().idle_http1(endpoint.addr) {
            Some(sender) => sender,
            None => {
                let stream = self.stream(wp, endpoint).await?;
                let (sender, connection) = conn::http1::Builder::new()
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(connection.with_upgrades());
                sender
            }
        };
        let response = sender.send_request(request).await.map_err(http_err);
        // Ready again once this response's body is read: whoever takes it
        // next finds out.
        let mut idle = self.lane().http1.lock().expect("http1 pool");
        let list = idle.entry(endpoint.addr).or_default();
        if list.len() < IDLE_PER_ENDPOINT {
            list.push(sender);
        }
        response
    }

    /// A fresh HTTP/1.1 connection that hands its I/O over after a `101`
    /// (WebSocket and other upgrades are never pooled).
    pub async fn send_upgrade(
        &self,
        wp: &Waypoint,
        endpoint: &Endpoint,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let http_err = |source| UpstreamError::Http {
            endpoint: endpoint.addr,
            source,
        };
        let stream = self.stream(wp, endpoint).await?;
        let (mut sender, connection) = conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        tokio::spawn(connection.with_upgrades());
        sender.send_request(request).await.map_err(http_err)
    }

    async fn http2_sender(
        &self,
        wp: &Waypoint,
        endpoint: &Endpoint,
    ) -> Result<conn::http2::SendRequest<Body>, UpstreamError> {
        if let Some(sender) = self
            .lane()
            .http2
            .lock()
            .expect("http2 pool")
            .get(&endpoint.addr)
            .filter(|s| !s.is_closed())
        {
            return Ok(sender.clone());
        }
        let stream = self.stream(wp, endpoint).await?;
        let (sender, connection) = conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Http {
                endpoint: endpoint.addr,
                source,
            })?;
        tokio::spawn(connection);
        self.lane()
            .http2
            .lock()
            .expect("http2 pool")
            .insert(endpoint.addr, sender.clone());
        Ok(sender)
    }

    /// A CONNECT stream to `endpoint` through its agent's port 15008.
    async fn stream(&self, wp: &Waypoint, endpoint: &Endpoint) -> Result<Tunnel, UpstreamError> {
        let identity = wp
            .mesh
            .identity
            .as_ref()
            .ok_or(UpstreamError::NoCertificate)?;
        let cert = identity
            .certs
            .wait(&wp.pod, CERT_WAIT)
            .await
            .ok_or(UpstreamError::NoCertificate)?;
        let hbone = SocketAddr::new(endpoint.addr.ip(), ports::HBONE);
        let key = Key {
            source: cert.identity.clone(),
            destination: hbone,
        };
        let tunnel_err = |source| UpstreamError::Tunnel {
            endpoint: endpoint.addr,
            source,
        };
        let connection = self
            .lane()
            .tunnels
            .get(&key, || async {
                let c = dial_hbone(
                    &wp.worker,
                    &cert,
                    identity,
                    endpoint.identity.clone(),
                    hbone,
                )
                .await?;
                wp.mesh.tunnels.dialled.fetch_add(1, Ordering::Relaxed);
                Ok::<_, TunnelError>(c)
            })
            .await
            .map_err(tunnel_err)?;
        connection
            .connect(endpoint.addr, Some(&endpoint.service))
            .await
            .map_err(tunnel_err)
    }

    /// Pooled HBONE connections held.
    pub fn pooled_tunnels(&self) -> usize {
        self.lanes.iter().map(|lane| lane.tunnels.len()).sum()
    }
}

impl Lane {
    fn idle_http1(&self, addr: SocketAddr) -> Option<conn::http1::SendRequest<Body>> {
        let mut idle = self.http1.lock().expect("http1 pool");
        let list = idle.get_mut(&addr)?;
        list.retain(|s| !s.is_closed());
        let ready = list.iter().position(conn::http1::SendRequest::is_ready)?;
        Some(list.swap_remove(ready))
    }
}
