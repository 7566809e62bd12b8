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
    policy::{self, Decision, Verdict, api::Mode},
    state::Snapshot,
};

/// Who is connecting, to which port of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The verified identity (HBONE); `None` for plaintext.
    pub source: Option<SpiffeId>,
    pub source_ip: IpAddr,
    /// The pod address connected to.
    pub destination_ip: IpAddr,
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
        let (mode, source) = snapshot.peer_auth_mode(info);
        if mode == Mode::Strict {
            return Err(Refused::Strict {
                mode_source: source.to_string(),
            });
        }
    }
    let verdict = policy::evaluate(
        &snapshot.policies_for(info),
        &policy::Connection {
            source: arrival.source.as_ref(),
            source_ip: arrival.source_ip,
            destination_ip: arrival.destination_ip,
            port: arrival.port,
            request: None,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        policy::{
            Policy,
            api::{AuthorizationPolicy, Mode},
            peer_auth::PeerAuth,
        },
        state::PodInfo,
    };

    const POD: &str = "shop/payments";

    /// One pod, `shop/payments`; optionally STRICT, optionally a DENY of
    /// `port` for everyone.
    fn snapshot(strict: bool, deny_port: Option<u16>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.pods.push(PodInfo {
            namespace: "shop".into(),
            name: "payments".into(),
            node: "n1".into(),
            service_account: "payments".into(),
            ips: vec!["10.1.0.11".parse().unwrap()],
            labels: Default::default(),
            netns: "/run/netns/p".into(),
            cgroup: "/sys/fs/cgroup/p".into(),
            ready: true,
        });
        if strict {
            snapshot.peer_auth.push(PeerAuth {
                namespace: "shop".into(),
                name: "strict".into(),
                selector: None,
                mode: Some(Mode::Strict),
            });
        }
        if let Some(port) = deny_port {
            let api: AuthorizationPolicy = serde_yaml_ng::from_str(&format!(
                "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: no-{port}, namespace: shop}}\n\
                 spec: {{action: DENY, rules: [{{to: {{ports: [{port}]}}}}]}}"
            ))
            .unwrap();
            snapshot
                .policies
                .insert("shop".into(), vec![Policy::compile(api).unwrap()]);
        }
        snapshot
    }

    fn arrival(tunnelled: bool, port: u16) -> Arrival {
        Arrival {
            source: tunnelled.then(|| SpiffeId::new("cluster.local", "shop", "frontend").unwrap()),
            source_ip: "10.2.0.11".parse().unwrap(),
            destination_ip: "10.1.0.12".parse().unwrap(),
            port,
        }
    }

    #[test]
    fn strict_refuses_plaintext_only() {
        let strict = snapshot(true, None);
        match admit(&strict, POD, &arrival(false, 8080)) {
            Err(Refused::Strict { mode_source }) => {
                assert_eq!(mode_source, "PeerAuthentication shop/strict")
            }
            other => panic!("plaintext under STRICT: {other:?}"),
        }
        assert!(admit(&strict, POD, &arrival(true, 8080)).is_ok());
        assert!(admit(&snapshot(false, None), POD, &arrival(false, 8080)).is_ok());
        assert_eq!(
            admit(&strict, "shop/gone", &arrival(true, 8080)),
            Err(Refused::UnknownPod)
        );
    }

    #[test]
    fn policy_decides_both_paths_and_names_the_rule() {
        let snapshot = snapshot(false, Some(9090));
        for tunnelled in [false, true] {
            assert!(admit(&snapshot, POD, &arrival(tunnelled, 8080)).is_ok());
            let refused = admit(&snapshot, POD, &arrival(tunnelled, 9090)).unwrap_err();
            assert_eq!(refused.to_string(), "denied by shop/no-9090 rule 0 (DENY)");
        }
    }

    #[tokio::test]
    async fn a_new_config_revokes_exactly_what_it_refuses() {
        let live = Arc::new(Live::default());
        let mut denied = live.register(POD, arrival(true, 9090));
        let mut kept = live.register(POD, arrival(true, 8080));
        let plaintext = live.register(POD, arrival(false, 8080));
        assert_eq!(live.len(), 3);

        assert_eq!(live.revoke_refused(&snapshot(false, None)), 0);
        assert_eq!(live.revoke_refused(&snapshot(false, Some(9090))), 1);
        let why = tokio::time::timeout(Duration::from_secs(1), denied.revoked())
            .await
            .expect("the denied connection is told at once");
        assert_eq!(why, "denied by shop/no-9090 rule 0 (DENY)");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), kept.revoked())
                .await
                .is_err(),
            "an allowed connection is left alone"
        );

        // STRICT arrives: the plaintext connection goes, the tunnelled stays.
        assert_eq!(live.revoke_refused(&snapshot(true, Some(9090))), 1);
        assert_eq!(live.len(), 1);
        drop((plaintext, denied));
        drop(kept);
        assert!(live.is_empty(), "ended connections unregister themselves");
    }
}
