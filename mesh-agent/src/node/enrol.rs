//! Enrolment: from "these pods on this node are in the mesh" to kernel state,
//! in-pod listeners and proxy tasks — and back out.
//!
//! Order matters (CAPTURE-NOTES): listeners are opened and registered, then
//! sk_lookup is attached, and only then is the namespace added to `ENROLLED`
//! (from that moment its connects are rewritten, so the listener must
//! already be there). Unenrolment runs in reverse. Existing connections are
//! separate tasks and are never cut by either.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use mesh_common::{Hook, programs};
use tokio::task::JoinHandle;

use crate::{
    capture::{
        Capture, CaptureError,
        inpod::{open_listeners, prepare_delivery_routing},
        netns::{NetnsError, NetnsWorker},
        proof::{HookStatus, MonotonicToWall, PodCaptureStatus},
    },
    proxy::{self, PodContext, mesh::Mesh},
};

/// Where a pod is: what enrolment needs to know, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlacement {
    /// `namespace/name`.
    pub pod: String,
    pub netns: PathBuf,
    /// Unknown for a pod the CNI plugin reported before any process ran in
    /// it; on Kubernetes every pod is under the kubelet's pods cgroup anyway.
    pub cgroup: Option<PathBuf>,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("pod {pod}: {source}")]
    Netns {
        pod: String,
        #[source]
        source: NetnsError,
    },
    #[error("pod {pod}: {what}: {source}")]
    Io {
        pod: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: {source}")]
    Capture {
        pod: String,
        /// Boxed: the loader's errors are large and this path is cold.
        #[source]
        source: Box<CaptureError>,
    },
    #[error("pod {pod} has no IPv{family} listener for its address {ip}")]
    NoListener { pod: String, family: u8, ip: IpAddr },
    #[error("pod {pod}: HBONE TLS configuration: {source}")]
    Tls {
        pod: String,
        #[source]
        source: rustls::Error,
    },
}

impl EnrolError {
    /// The pod (`namespace/name`) the error is about.
    pub fn pod(&self) -> &str {
        match self {
            Self::Netns { pod, .. }
            | Self::Io { pod, .. }
            | Self::Capture { pod, .. }
            | Self::NoListener { pod, .. }
            | Self::Tls { pod, .. } => pod,
        }
    }
}

struct Enrolled {
    placement: PodPlacement,
    context: Arc<PodContext>,
    tasks: Vec<JoinHandle<()>>,
}

/// The pods this agent has enrolled, and the capture state they share.
pub struct Enrolment {
    capture: Arc<Mutex<Capture>>,
    mesh: Arc<Mesh>,
    pods_cgroup: PathBuf,
    /// A procfs whose `sys/net` the agent may write (`--host-proc`).
    proc: Arc<Path>,
    pods: BTreeMap<String, Enrolled>,
    /// Capture problems last warned about, by pod: reconciles repeat (a
    /// retry every few seconds), warnings only when something changed.
    warned: BTreeMap<String, Vec<String>>,
}

impl Enrolment {
    pub fn new(
        capture: Arc<Mutex<Capture>>,
        mesh: Arc<Mesh>,
        pods_cgroup: &Path,
        proc: &Path,
    ) -> Self {
        Self {
            capture,
            mesh,
            pods_cgroup: pods_cgroup.to_owned(),
            proc: proc.into(),
            warned: BTreeMap::new(),
            pods: BTreeMap::new(),
        }
    }

    /// Makes the enrolled set equal `wanted`. A pod that fails is reported
    /// and left out; it never stops the others.
    pub async fn reconcile(&mut self, wanted: &[PodPlacement]) -> Vec<EnrolError> {
        let mut errors = Vec::new();
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, e)| !wanted.contains(&e.placement))
            .map(|(k, _)| k.clone())
            .collect();
        for pod in stale {
            if let Err(e) = self.unenrol(&pod).await {
                errors.push(e);
            }
        }
        for placement in wanted {
            if self.pods.contains_key(&placement.pod) {
                continue;
            }
            match self.enrol(placement).await {
                Ok(enrolled) => {
                    tracing::info!(pod = %placement.pod, netns_cookie = enrolled.context.netns_cookie, "enrolled");
                    self.pods.insert(placement.pod.clone(), enrolled);
                }
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = self.forget_foreign_state() {
            errors.push(EnrolError::Capture {
                pod: "(left over from an earlier run)".into(),
                source: Box::new(e),
            });
        }
        let mut problems = BTreeMap::new();
        for status in self.status() {
            if self.warned.get(&status.pod) != Some(&status.problems) {
                for problem in &status.problems {
                    tracing::warn!(pod = %status.pod, "capture not in place: {problem}");
                }
            }
            problems.insert(status.pod, status.problems);
        }
        self.warned = problems;
        errors
    }

    async fn enrol(&self, placement: &PodPlacement) -> Result<Enrolled, EnrolError> {
        let pod = placement.pod.clone();
        let netns_err = |source| EnrolError::Netns {
            pod: pod.clone(),
            source,
        };
        let worker = NetnsWorker::open(&placement.netns).map_err(netns_err)?;
        let hbone = self.mesh.identity.is_some();
        let listeners = worker
            .run(move || open_listeners(hbone))
            .await
            .map_err(netns_err)?
            .map_err(|source| EnrolError::Io {
                pod: pod.clone(),
                what: "opening in-pod listeners",
                source,
            })?;
        worker
            .run({
                let proc = Arc::clone(&self.proc);
                move || prepare_delivery_routing(&proc)
            })
            .await
            .map_err(netns_err)?
            .map_err(|source| EnrolError::Io {
                pod: pod.clone(),
                what: "installing inbound delivery routes",
                source,
            })?;
        let cookie = listeners.netns_cookie;
        {
            let mut capture = self.capture.lock().expect("capture lock");
            let cap_err = |source| EnrolError::Capture {
                pod: pod.clone(),
                source: Box::new(source),
            };
            capture.track_pod(cookie).map_err(cap_err)?;
            for ip in &placement.ips {
                let (listener, family) = match ip {
                    IpAddr::V4(_) => (Some(&listeners.inbound_v4), 4),
                    IpAddr::V6(_) => (listeners.inbound_v6.as_ref(), 6),
                };
                let listener = listener.ok_or(EnrolError::NoListener {
                    pod: pod.clone(),
                    family,
                    ip: *ip,
                })?;
                capture
                    .add_inbound(*ip, cookie, listener)
                    .map_err(cap_err)?;
            }
            capture
                .attach_netns(cookie, &placement.netns)
                .map_err(cap_err)?;
            capture.enrol(cookie).map_err(cap_err)?;
        }
        let context = Arc::new(PodContext::new(
            pod.clone(),
            placement.ips.clone(),
            cookie,
            worker,
            Arc::clone(&self.capture),
            Arc::clone(&self.mesh),
        ));
        let io_err = |source| EnrolError::Io {
            pod: pod.clone(),
            what: "registering a listener with tokio",
            source,
        };
        let mut tasks = Vec::new();
        for listener in listeners.outbound {
            let listener = tokio::net::TcpListener::from_std(listener).map_err(io_err)?;
            tasks.push(proxy::serve(
                listener,
                Arc::clone(&context),
                proxy::outbound::handle,
            ));
        }
        for listener in [Some(listeners.inbound_v4), listeners.inbound_v6]
            .into_iter()
            .flatten()
        {
            let listener = tokio::net::TcpListener::from_std(listener).map_err(io_err)?;
            tasks.push(proxy::serve(
                listener,
                Arc::clone(&context),
                proxy::inbound::handle,
            ));
        }
        if let Some(identity) = &self.mesh.identity {
            for listener in listeners.hbone {
                let listener = tokio::net::TcpListener::from_std(listener).map_err(io_err)?;
                let task = proxy::hbone::listen(listener, Arc::clone(&context), identity).map_err(
                    |source| EnrolError::Tls {
                        pod: pod.clone(),
                        source,
                    },
                )?;
                tasks.push(task);
            }
        }
        Ok(Enrolled {
            placement: placement.clone(),
            context,
            tasks,
        })
    }

    async fn unenrol(&mut self, pod: &str) -> Result<(), EnrolError> {
        let Some(enrolled) = self.pods.remove(pod) else {
            return Ok(());
        };
        let cookie = enrolled.context.netns_cookie;
        let cap_err = |source| EnrolError::Capture {
            pod: pod.to_owned(),
            source: Box::new(source),
        };
        {
            let mut capture = self.capture.lock().expect("capture lock");
            capture.unenrol(cookie).map_err(cap_err)?;
            capture.detach_netns(cookie).map_err(cap_err)?;
            for ip in &enrolled.placement.ips {
                capture.remove_inbound(*ip).map_err(cap_err)?;
            }
            capture.untrack_pod(cookie).map_err(cap_err)?;
        }
        // Closing the listeners; accepted connections live on in their tasks.
        // Waited for: an aborted task drops its listener only when the
        // runtime next polls it, and a pod re-enrolled at once (its cgroup
        // or addresses changed) binds the same ports in the same netns.
        for task in &enrolled.tasks {
            task.abort();
        }
        for task in enrolled.tasks {
            let _ = task.await;
        }
        tracing::info!(pod, "unenrolled");
        Ok(())
    }

    /// Removes kernel state a previous run left for pods no longer enrolled.
    fn forget_foreign_state(&self) -> Result<(), CaptureError> {
        let ours: Vec<u64> = self.pods.values().map(|e| e.context.netns_cookie).collect();
        let our_ips: Vec<IpAddr> = self
            .pods
            .values()
            .flat_map(|e| e.placement.ips.clone())
            .collect();
        let mut capture = self.capture.lock().expect("capture lock");
        for cookie in capture.enrolled()? {
            if !ours.contains(&cookie) {
                capture.unenrol(cookie)?;
                capture.untrack_pod(cookie)?;
            }
        }
        for cookie in capture.pinned_netns_links()? {
            if !ours.contains(&cookie) {
                capture.detach_netns(cookie)?;
            }
        }
        for (ip, _) in capture.inbound_addresses()? {
            if !our_ips.contains(&ip) {
                capture.remove_inbound(ip)?;
            }
        }
        Ok(())
    }

    /// The enrolled pods, as `namespace/name`.
    pub fn pods(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    pub fn is_enrolled(&self, pod: &str) -> bool {
        self.pods.contains_key(pod)
    }

    /// Pooled outbound tunnels held by every enrolled pod.
    pub fn pooled_tunnels(&self) -> usize {
        self.pods.values().map(|e| e.context.pooled_tunnels()).sum()
    }

    /// Capture proof for every enrolled pod.
    pub fn status(&self) -> Vec<PodCaptureStatus> {
        let capture = self.capture.lock().expect("capture lock");
        let clock = MonotonicToWall::now();
        self.pods
            .values()
            .map(|e| {
                let cookie = e.context.netns_cookie;
                let stats = capture.pod_stats(cookie).ok().flatten().unwrap_or_default();
                let hook = |h: Hook| (stats.captured[h as usize], stats.last_ns[h as usize]);
                let (c4, l4) = hook(Hook::Connect4);
                let (c6, l6) = hook(Hook::Connect6);
                let (ci, li) = hook(Hook::SkLookup);
                let mut problems = Vec::new();
                let cgroup_attached = capture.has_link(&format!("cgroup-{}", programs::CONNECT4));
                let outside = e
                    .placement
                    .cgroup
                    .as_ref()
                    .filter(|c| !c.starts_with(&self.pods_cgroup));
                let under = outside.is_none();
                if !cgroup_attached {
                    problems.push("outbound programs are not attached to the pods' cgroup".into());
                } else if let Some(cgroup) = outside {
                    problems.push(format!(
                        "the pod's cgroup {} is outside the capture cgroup {}: its outbound \
                         connections bypass the mesh",
                        cgroup.display(),
                        self.pods_cgroup.display()
                    ));
                }
                let inbound_attached = capture.has_link(&format!("sk_lookup-{cookie}"));
                if !inbound_attached {
                    problems
                        .push("sk_lookup is not attached to the pod's network namespace".into());
                }
                PodCaptureStatus {
                    pod: e.placement.pod.clone(),
                    netns_cookie: cookie,
                    outbound: HookStatus {
                        attached: cgroup_attached && under,
                        captured: c4 + c6,
                        last_capture_unix_ms: clock.wall_ms(l4.max(l6)),
                    },
                    inbound: HookStatus {
                        attached: inbound_attached,
                        captured: ci,
                        last_capture_unix_ms: clock.wall_ms(li),
                    },
                    problems,
                }
            })
            .collect()
    }
}
