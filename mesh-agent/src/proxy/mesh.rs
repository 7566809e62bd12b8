//! What every connection handler of the agent shares: the newest config,
//! the identities, established connections, and tunnel counters.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::admission::Live;
use crate::{
    flows::FlowStore,
    identity::{store::CertStore, verify::TrustBundle},
    state::Loaded,
    tunnel::pool::Spread,
};

use super::workers::Workers;

pub struct Mesh {
    /// The newest config; handlers read it per connection, so a change
    /// applies to the next connection without a restart.
    pub config: watch::Receiver<Arc<Loaded>>,
    /// Absent when the agent runs without a CA: traffic is then relayed as
    /// plain TCP (capture and policy still apply).
    pub identity: Option<MeshIdentity>,
    pub live: Arc<Live>,
    pub tunnels: TunnelCounters,
    pub flows: Arc<FlowStore>,
    /// How each pod's pool spreads streams over connections.
    pub spread: Spread,
    /// The data plane's threads: every accepted connection is served on one.
    pub workers: Arc<Workers>,
    /// Round-robin position for Service endpoints.
    endpoint_cursor: AtomicU64,
}

/// Pod certificates and the trust bundle that checks peers.
pub struct MeshIdentity {
    pub certs: Arc<CertStore>,
    pub bundle: Arc<TrustBundle>,
}

/// HBONE activity, for the status document.
#[derive(Default)]
pub struct TunnelCounters {
    /// TLS handshakes completed as the dialling side.
    pub dialled: AtomicU64,
    /// TLS handshakes completed as the accepting side.
    pub accepted: AtomicU64,
    /// Accepted handshakes that failed (untrusted peer, garbage, …).
    pub rejected: AtomicU64,
    /// Accepted HBONE connections still open.
    pub open: AtomicU64,
}

/// [`TunnelCounters`] plus live connections, as `meshctl status` reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub handshakes_dialled: u64,
    pub handshakes_accepted: u64,
    pub handshakes_rejected: u64,
    pub hbone_connections_open: u64,
    /// Inbound connections being relayed to apps (plaintext and tunnelled).
    pub inbound_connections_open: u64,
    /// Outbound HBONE connections pooled, over all pods.
    #[serde(default)]
    pub pooled_connections: u64,
    /// When a destination gets more than one pooled connection (per
    /// worker: each keeps its own pool).
    #[serde(default)]
    pub spread: Option<Spread>,
    /// Data-plane threads.
    #[serde(default)]
    pub workers: u64,
}

impl Mesh {
    pub fn new(
        config: watch::Receiver<Arc<Loaded>>,
        identity: Option<MeshIdentity>,
        flows: FlowStore,
        spread: Spread,
        workers: Workers,
    ) -> Self {
        Self {
            config,
            identity,
            live: Arc::default(),
            tunnels: TunnelCounters::default(),
            flows: Arc::new(flows),
            spread,
            workers: Arc::new(workers),
            endpoint_cursor: AtomicU64::new(0),
        }
    }

    /// The next position in the round robin over a Service's endpoints.
    pub fn next_endpoint(&self) -> usize {
        self.endpoint_cursor.fetch_add(1, Ordering::Relaxed) as usize
    }

    /// The config as of now.
    pub fn snapshot(&self) -> Arc<Loaded> {
        Arc::clone(&self.config.borrow())
    }

    /// `pooled` is the number of pooled connections, which the pods hold.
    pub fn tunnel_status(&self, pooled: usize) -> TunnelStatus {
        let t = &self.tunnels;
        TunnelStatus {
            handshakes_dialled: t.dialled.load(Ordering::Relaxed),
            handshakes_accepted: t.accepted.load(Ordering::Relaxed),
            handshakes_rejected: t.rejected.load(Ordering::Relaxed),
            hbone_connections_open: t.open.load(Ordering::Relaxed),
            inbound_connections_open: self.live.len() as u64,
            pooled_connections: pooled as u64,
            spread: Some(self.spread),
            workers: self.workers.count() as u64,
        }
    }
}
