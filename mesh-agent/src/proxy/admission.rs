//! May this connection reach this pod? One decision for the plaintext and
//! the tunnelled inbound paths, and for re-checking established connections
//! when the config changes, so the three can never disagree.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::oneshot;

use crate::{
    identity::SpiffeId,
    policy::{self, Decision, Verdict, api::Mode, peer_auth::ModeSource},
    state::Snapshot,
};

/// Who is connecting, to which port of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The verified identity (HBONE); `None` for plaintext.
    pub source: Option<SpiffeId>,
    pub source_ip: IpAddr,
    pub port: u16,
}

/// Why a connection is not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// STRICT peer authentication and a plaintext arrival.
    Strict { mode_source: String },
    /// An authorization policy denied it.
    Denied(Verdict),
    /// The pod is no longer in the config.
    UnknownPod,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Strict { mode_source } => write!(
                f,
                "plaintext refused: peer authentication is STRICT ({mode_source}); only \
                 mTLS-tunnelled traffic from enrolled pods is delivered"
            ),
            Self::Denied(verdict) => write!(f, "{verdict}"),
            Self::UnknownPod => write!(f, "the destination pod is no longer in the config"),
        }
    }
}

/// The verdict for `arrival` at `pod` (`namespace/name`) under `snapshot`.
/// `Ok` carries the allowing verdict (with any dry-run results).
pub fn admit(snapshot: &Snapshot, pod: &str, arrival: &Arrival) -> Result<Verdict, Refused> {
    let info = snapshot.pod(pod).ok_or(Refused::UnknownPod)?;
    if arrival.source.is_none() {
        let (mode, source) = snapshot.peer_auth_mode(&info.namespace);
        if mode == Mode::Strict {
            let mode_source = match source {
                ModeSource::Namespace(p) => format!("PeerAuthentication {p}"),
                ModeSource::MeshWide(p) => format!("mesh-wide PeerAuthentication {p}"),
                ModeSource::Default => "default".to_owned(),
            };
            return Err(Refused::Strict { mode_source });
        }
    }
    let verdict = policy::evaluate(
        &snapshot.policies_for(info),
        &policy::Connection {
            source: arrival.source.as_ref(),
            source_ip: arrival.source_ip,
            port: arrival.port,
        },
    );
    match verdict.decision {
        Decision::Allow => Ok(verdict),
        Decision::Deny => Err(Refused::Denied(verdict)),
    }
}

/// Established inbound connections, re-judged whenever the config changes.
#[derive(Default)]
pub struct Live {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    pod: String,
    arrival: Arrival,
    revoke: oneshot::Sender<String>,
}

/// Keeps a connection registered while it lives.
pub struct Registration {
    live: Arc<Live>,
    id: u64,
    revoked: Option<oneshot::Receiver<String>>,
}

impl Live {
    pub fn register(self: &Arc<Self>, pod: &str, arrival: Arrival) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (revoke, revoked) = oneshot::channel();
        self.conns.lock().expect("live connections").insert(
            id,
            Entry {
                pod: pod.to_owned(),
                arrival,
                revoke,
            },
        );
        Registration {
            live: Arc::clone(self),
            id,
            revoked: Some(revoked),
        }
    }

    /// Connections currently registered.
    pub fn len(&self) -> usize {
        self.conns.lock().expect("live connections").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cuts every connection `snapshot` no longer admits; returns how many.
    pub fn revoke_refused(&self, snapshot: &Snapshot) -> usize {
        let mut conns = self.conns.lock().expect("live connections");
        let refused: Vec<(u64, String)> = conns
            .iter()
            .filter_map(|(id, e)| {
                admit(snapshot, &e.pod, &e.arrival)
                    .err()
                    .map(|why| (*id, why.to_string()))
            })
            .collect();
        for (id, why) in &refused {
            if let Some(entry) = conns.remove(id) {
                tracing::info!(
                    pod = %entry.pod,
                    source = ?entry.arrival.source.as_ref().map(ToString::to_string),
                    source_ip = %entry.arrival.source_ip,
                    port = entry.arrival.port,
                    "closing an established connection the new config refuses: {why}"
                );
                let _ = entry.revoke.send(why.clone());
            }
        }
        refused.len()
    }
}

impl Registration {
    /// Completes when the connection is revoked, with the reason; never
    /// otherwise. Meant as the relay's `stop`.
    pub async fn revoked(&mut self) -> String {
        match self.revoked.take() {
            Some(rx) => match rx.await {
                Ok(why) => why,
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live
            .conns
            .lock()
            .expect("live connections")
            .remove(&self.id);
    }
}
