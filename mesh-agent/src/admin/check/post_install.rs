//! Post-install: does the mesh work on each node? Asked of each node's
//! agent through its admin API: it answers and is ready, its model source is
//! connected, the CA gives its pods certificates, capture is in place for
//! every enrolled pod, and at least one connection on the node was really
//! captured by a kernel hook.
use std::time::Duration;

use http::StatusCode;

use super::Check;
use crate::{
    admin::{
        api::WorkloadView,
        client::{Agent, ClientError},
        status::Status,
    },
    flows::{
        Filter, FlowRecord,
        filter::{Criterion, HookMatch},
        record::unix_ms_now,
        render,
    },
};

/// How long an agent may take to answer everything.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const NAME_THE_AGENT: &str =
    "check that --agent names the agent's admin socket or its --admin-listen address";

/// Asks every agent (at once) and judges what each said.
pub async fn run(agents: &[Agent]) -> Vec<Check> {
    let answers = futures::future::join_all(
        agents
            .iter()
            .map(|agent| tokio::time::timeout(ANSWER_WITHIN, observe(agent))),
    )
    .await;
    agents
        .iter()
        .zip(answers)
        .flat_map(|(agent, answer)| match answer {
            Ok(Ok(observed)) => judge(&observed, unix_ms_now()),
            Ok(Err(e)) => vec![unreachable(&agent.to_string(), &e)],
            Err(_) => vec![Check {
                agent: Some(agent.to_string()),
                ..Check::fail(
                    "agent",
                    format!(
                        "the agent at {agent} did not answer within {}s.",
                        ANSWER_WITHIN.as_secs()
                    ),
                    format!("{NAME_THE_AGENT}; an agent that is stuck says why in its log."),
                )
            }],
        })
        .collect()
}

/// What one agent's admin API said, gathered before judging.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The agent as it was named (socket path or `host:port`).
    pub agent: String,
    /// `/readyz` answered 200.
    pub ready: bool,
    pub status: Option<Status>,
    pub workloads: Vec<WorkloadView>,
    /// The newest flow record that a kernel hook captured.
    pub captured: Option<FlowRecord>,
}

/// Asks `agent` everything [`judge`] needs.
pub async fn observe(agent: &Agent) -> Result<Observed, ClientError> {
    let ready = match agent.get("/readyz").await {
        Ok(_) => true,
        Err(ClientError::Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..
        }) => false,
        Err(e) => return Err(e),
    };
    let status: Option<Status> = agent.get_json("/status").await?;
    let workloads: Vec<WorkloadView> = agent.get_json("/workloads").await?;
    let captured = Filter {
        criteria: vec![(false, Criterion::Hook(HookMatch::Any))],
        last: Some(1),
    };
    let captured: Vec<FlowRecord> = agent
        .get_json(&format!("/flows?{}", captured.to_query()))
        .await?;
    Ok(Observed {
        agent: agent.to_string(),
        ready,
        status,
        workloads,
        captured: captured.into_iter().next_back(),
    })
}

/// The one check of an agent that did not answer.
pub fn unreachable(agent: &str, error: &ClientError) -> Check {
    let fix = match error {
        ClientError::NotRunning(_) => {
            "start the agent on that node (Kubernetes: `kubectl -n nodemesh-system get pods -o \
             wide` shows whether its DaemonSet pod runs there), or correct --agent."
                .to_owned()
        }
        ClientError::PermissionDenied(_) => "run meshctl as root.".to_owned(),
        _ => format!("{NAME_THE_AGENT}."),
    };
    Check {
        agent: Some(agent.to_owned()),
        ..Check::fail("agent", format!("{error}."), fix)
    }
}

/// Judges what one agent said; `now_ms`: the time now, in milliseconds
/// since the Unix epoch.
pub fn judge(o: &Observed, now_ms: u64) -> Vec<Check> {
    let Some(status) = &o.status else {
        return vec![Check {
            agent: Some(o.agent.clone()),
            ..Check::fail(
                "agent",
                format!(
                    "the agent at {} answers but has not written its status yet.",
                    o.agent
                ),
                "re-run in a few seconds; the agent writes it once it has applied its model.",
            )
        }];
    };
    let node = &status.node;
    let enrolled: Vec<&str> = o
        .workloads
        .iter()
        .filter(|w| w.enrolled && w.node == *node)
        .map(|w| w.pod.as_str())
        .collect();
    let mut checks = vec![agent(o, status)];
    checks.push(model(status));
    checks.extend(ca(status, now_ms));
    checks.extend(capture(status, &enrolled));
    checks.push(traffic(
        node,
        o.captured.as_ref(),
        !enrolled.is_empty(),
        now_ms,
    ));
    for c in &mut checks {
        c.node = Some(node.clone());
        c.agent = Some(o.agent.clone());
    }
    checks
}

fn agent(o: &Observed, status: &Status) -> Check {
    if o.ready {
        return Check::pass(
            "agent",
            format!(
                "mesh-agent {} answers at {} and is ready",
                status.version, o.agent
            ),
        );
    }
    Check::fail(
        "agent",
        format!(
            "the agent on node {} answers but is not ready: it has not applied its first model \
             yet.",
            status.node
        ),
        "re-run in a few seconds; if it stays so, read the agent's log (in Kubernetes mode it \
         waits until every watch has listed once).",
    )
}

fn model(status: &Status) -> Check {
    let Some(api) = &status.api_server else {
        return Check::pass("model", "local config directory");
    };
    if !api.connected {
        let serving = if api.serving_last_good {
            "serving the last good model"
        } else {
            "no model yet"
        };
        return Check::fail(
            "model",
            format!(
                "the Kubernetes API server is DISCONNECTED, {serving} ({}).",
                api.trouble().join("; ")
            ),
            format!(
                "check that node {} reaches the API server and that the agent's service account \
                 may get, list and watch what it reads (the RBAC in deploy/).",
                status.node
            ),
        );
    }
    // Other groups' kinds (Istio's, Gateway API's) are optional; ours are
    // how policies reach the mesh.
    let ours: Vec<&str> = api
        .not_served
        .iter()
        .map(String::as_str)
        .filter(|r| r.ends_with(".nodemesh.io"))
        .collect();
    if !ours.is_empty() {
        return Check::fail(
            "model",
            format!(
                "the Kubernetes API server does not serve {}: nodemesh's CRDs are not installed, \
                 so its policies are read as empty.",
                ours.join(", ")
            ),
            "install the CRDs from deploy/ (kubectl apply), then re-run.",
        );
    }
    Check::pass("model", "Kubernetes API server, every watch synced")
}

fn ca(status: &Status, now_ms: u64) -> Vec<Check> {
    let node = &status.node;
    let Some(ca) = &status.ca else {
        return vec![Check::fail(
            "CA",
            "the agent runs without a CA: its pods have no workload identities, and their \
             traffic to other nodes is plain TCP.",
            "start the agent with --ca <host:port> and its credentials (--credentials, or \
             --ca-token-file in Kubernetes).",
        )];
    };
    let reach = format!(
        "check that the CA runs and that node {node} reaches it at {}; the agent retries by \
         itself.",
        ca.address
    );
    let mut checks = Vec::new();
    if !ca.failing.is_empty() {
        let failures: Vec<String> = ca
            .failing
            .iter()
            .map(|f| {
                let ago = render::duration(now_ms.saturating_sub(f.since_unix * 1000));
                format!(
                    "{}: {} (failing for {ago}, {} attempts)",
                    f.pod, f.error, f.attempts
                )
            })
            .collect();
        checks.push(Check::fail(
            "CA",
            format!(
                "certificate requests to the CA at {} fail: {}.",
                ca.address,
                failures.join("; ")
            ),
            reach.clone(),
        ));
    }
    let expired: Vec<String> = status
        .certs
        .iter()
        .filter(|c| c.not_after_unix * 1000 <= now_ms)
        .map(|c| {
            let ago = render::duration(now_ms - c.not_after_unix * 1000);
            format!("{} (expired {ago} ago)", c.pod)
        })
        .collect();
    if !expired.is_empty() {
        checks.push(Check::fail(
            "CA",
            format!(
                "expired certificates, so renewal is not happening: {}.",
                expired.join(", ")
            ),
            reach,
        ));
    }
    let waiting: Vec<&str> = status
        .pods
        .iter()
        .map(|p| p.pod.as_str())
        .filter(|pod| !status.certs.iter().any(|c| c.pod == *pod))
        .filter(|pod| !ca.failing.iter().any(|f| f.pod == *pod))
        .collect();
    if !waiting.is_empty() {
        checks.push(Check::fail(
            "CA",
            format!(
                "no certificate yet for {}: the first request is still under way.",
                waiting.join(", ")
            ),
            "re-run in a few seconds.",
        ));
    }
    if checks.is_empty() {
        let next = status.certs.iter().map(|c| c.not_after_unix).min();
        let expiry = next.map_or_else(String::new, |t| {
            let left = render::duration((t * 1000).saturating_sub(now_ms));
            format!("; the earliest expires in {left} (renewed at half-life)")
        });
        checks.push(Check::pass(
            "CA",
            format!(
                "{} from the CA at {}{expiry}",
                counted(status.certs.len(), "pod certificate"),
                ca.address
            ),
        ));
    }
    checks
}

fn capture(status: &Status, enrolled: &[&str]) -> Vec<Check> {
    let node = &status.node;
    let mut checks = Vec::new();
    for pod in &status.pods {
        let mut problems = pod.problems.clone();
        if problems.is_empty() && !(pod.outbound.attached && pod.inbound.attached) {
            problems.push("a capture hook is detached".into());
        }
        if !problems.is_empty() {
            checks.push(Check::fail(
                "capture",
                format!("pod {}: {}.", pod.pod, problems.join("; ")),
                format!(
                    "`meshctl status` on node {node} shows the capture state: restarting the \
                     agent re-attaches its programs, and every pod's cgroup must be under the \
                     agent's --pods-cgroup."
                ),
            ));
        }
    }
    let (unlocated, missing): (Vec<&str>, Vec<&str>) = enrolled
        .iter()
        .copied()
        .filter(|pod| !status.pods.iter().any(|p| p.pod == *pod))
        .partition(|pod| status.unlocated.iter().any(|u| u == pod));
    if !unlocated.is_empty() {
        checks.push(Check::fail(
            "capture",
            format!(
                "enrolled in the model, but their network namespace is not known, so their \
                 traffic is not captured: {}.",
                unlocated.join(", ")
            ),
            "on Kubernetes the CNI plugin reports new pods (`mesh-agent cni install` must have \
             added nodemesh-cni to the node's network configuration) and running ones are found \
             in the host's /proc (mounted at the agent's --host-proc); restarting such a pod \
             puts it through the CNI plugin.",
        ));
    }
    if !missing.is_empty() {
        checks.push(Check::fail(
            "capture",
            format!(
                "enrolled in the model but not captured by the agent: {}.",
                missing.join(", ")
            ),
            "the agent's log says why it could not enrol them (e.g. a network namespace or \
             cgroup that does not exist); it tries again when the model changes.",
        ));
    }
    if checks.is_empty() {
        checks.push(Check::pass(
            "capture",
            match status.pods.len() {
                0 => "no pod on this node is enrolled".to_owned(),
                n => format!(
                    "{} captured: outbound (connect4/6) and inbound (sk_lookup) hooks attached",
                    counted(n, "enrolled pod")
                ),
            },
        ));
    }
    checks
}

/// `1 pod`, `2 pods`.
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn traffic(node: &str, captured: Option<&FlowRecord>, enrolled: bool, now_ms: u64) -> Check {
    if let Some(r) = captured {
        let hook = r.hook.map_or("no hook", |h| h.as_str());
        let source = r
            .source
            .pod
            .clone()
            .unwrap_or_else(|| r.source.ip.to_string().into());
        let ago = render::duration(now_ms.saturating_sub(r.start_unix_ms));
        return Check::pass(
            "traffic",
            format!(
                "{hook} captured {source} → {}, {ago} ago",
                r.destination.addr()
            ),
        );
    }
    let detail = format!(
        "no connection on node {node} has been captured by a kernel hook (connect4/6 or \
         sk_lookup) yet."
    );
    let fix = if enrolled {
        format!("send one request from an enrolled pod on {node}, then re-run.")
    } else {
        format!(
            "no pod on {node} is enrolled: label a namespace nodemesh.io/dataplane=enabled, run \
             a pod of it on {node}, send one request from it, then re-run."
        )
    };
    Check::fail("traffic", detail, fix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::proof::{HookStatus, PodCaptureStatus},
        flows::record::{Direction, Endpoint, Hook, Path, State},
        identity::store::{CaStatus, CertFailure, CertStatus},
        state::cluster::SourceStatus,
    };

    const NOW_MS: u64 = 1_000_000_000;
    const NOW: u64 = NOW_MS / 1000;

    fn hook() -> HookStatus {
        HookStatus {
            attached: true,
            captured: 1,
            last_capture_unix_ms: None,
        }
    }

    fn pod(name: &str) -> PodCaptureStatus {
        PodCaptureStatus {
            pod: name.into(),
            netns_cookie: 4096,
            outbound: hook(),
            inbound: hook(),
            problems: Vec::new(),
        }
    }

    fn cert(pod: &str, not_after_unix: u64) -> CertStatus {
        CertStatus {
            pod: pod.into(),
            identity: format!("spiffe://cluster.local/ns/shop/sa/{pod}"),
            serial: "01".into(),
            not_after_unix,
            issued: 1,
        }
    }

    fn workload(pod: &str, node: &str, enrolled: bool) -> WorkloadView {
        WorkloadView {
            pod: pod.into(),
            node: node.into(),
            ips: Vec::new(),
            service_account: "default".into(),
            identity: None,
            enrolled,
            labels: Default::default(),
        }
    }

    fn flow() -> FlowRecord {
        FlowRecord {
            id: 7,
            node: "n1".into(),
            start_unix_ms: NOW_MS - 3000,
            end_unix_ms: Some(NOW_MS - 2990),
            direction: Direction::Outbound,
            hook: Some(Hook::Connect4),
            path: Path::Tunnel,
            source: Endpoint {
                pod: Some("shop/a".into()),
                ..Endpoint::new("10.1.0.11:40000".parse().unwrap())
            },
            destination: Endpoint::new("10.2.0.11:8080".parse().unwrap()),
            service: None,
            endpoint: None,
            tls: None,
            verdict: None,
            bytes_sent: 1,
            bytes_received: 1,
            state: State::Closed,
            end: None,
            error: None,
            waypoint: None,
            http: None,
            parent: None,
        }
    }

    /// A healthy agent on n1: pods shop/a and shop/c enrolled and captured,
    /// certificates valid for an hour, one captured flow.
    fn healthy() -> Observed {
        Observed {
            agent: "/run/nodemesh/admin.sock".into(),
            ready: true,
            status: Some(Status {
                node: "n1".into(),
                version: "0.1.0".into(),
                pods: vec![pod("shop/a"), pod("shop/c")],
                unlocated: Vec::new(),
                counters: Vec::new(),
                config_errors: Vec::new(),
                certs: vec![cert("shop/a", NOW + 3600), cert("shop/c", NOW + 1800)],
                tunnel: Default::default(),
                api_server: None,
                ca: Some(CaStatus {
                    address: "10.0.0.1:15012".into(),
                    failing: Vec::new(),
                }),
            }),
            workloads: vec![
                workload("shop/a", "n1", true),
                workload("shop/c", "n1", true),
                workload("shop/b", "n2", true),
                workload("legacy/l", "n1", false),
            ],
            captured: Some(flow()),
        }
    }

    fn with_status(change: impl FnOnce(&mut Status)) -> Observed {
        let mut o = healthy();
        change(o.status.as_mut().unwrap());
        o
    }

    /// The failing checks, as (check, detail, fix).
    fn failures(o: &Observed) -> Vec<(String, String, String)> {
        judge(o, NOW_MS)
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| (c.check, c.detail, c.fix.unwrap_or_default()))
            .collect()
    }

    /// Exactly one check fails, named `check`; its detail and fix contain
    /// these words.
    fn fails_once(o: &Observed, check: &str, detail: &[&str], fix: &[&str]) {
        let failed = failures(o);
        assert_eq!(failed.len(), 1, "{failed:#?}");
        let (name, d, f) = &failed[0];
        assert_eq!(name, check);
        for word in detail {
            assert!(d.contains(word), "detail {d:?} lacks {word:?}");
        }
        for word in fix {
            assert!(f.contains(word), "fix {f:?} lacks {word:?}");
        }
    }

    #[test]
    fn a_healthy_agent_passes_every_check_each_naming_its_node() {
        let checks = judge(&healthy(), NOW_MS);
        let names: Vec<&str> = checks.iter().map(|c| c.check.as_str()).collect();
        assert_eq!(names, ["agent", "model", "CA", "capture", "traffic"]);
        assert!(
            checks.iter().all(|c| c.ok && c.fix.is_none()),
            "{checks:#?}"
        );
        assert!(checks.iter().all(|c| c.node.as_deref() == Some("n1")
            && c.agent.as_deref() == Some("/run/nodemesh/admin.sock")));
        let detail = |name: &str| {
            checks
                .iter()
                .find(|c| c.check == name)
                .map(|c| c.detail.clone())
                .unwrap()
        };
        assert_eq!(
            detail("agent"),
            "mesh-agent 0.1.0 answers at /run/nodemesh/admin.sock and is ready"
        );
        assert_eq!(detail("model"), "local config directory");
        assert_eq!(
            detail("CA"),
            "2 pod certificates from the CA at 10.0.0.1:15012; the earliest expires in 30m00s \
             (renewed at half-life)"
        );
        assert!(detail("capture").starts_with("2 enrolled pods captured"));
        let mut single = with_status(|s| {
            s.pods.pop();
            s.certs.pop();
        });
        single.workloads.retain(|w| w.pod != "shop/c");
        let one = judge(&single, NOW_MS);
        assert!(
            one[2].detail.starts_with("1 pod certificate from"),
            "{one:#?}"
        );
        assert!(
            one[3].detail.starts_with("1 enrolled pod captured"),
            "{one:#?}"
        );
        assert_eq!(
            detail("traffic"),
            "connect4 captured shop/a → 10.2.0.11:8080, 3.0s ago"
        );
    }

    #[test]
    fn an_agent_without_status_or_not_ready_says_so() {
        let mut silent = healthy();
        silent.status = None;
        let checks = judge(&silent, NOW_MS);
        assert_eq!(checks.len(), 1, "nothing else can be judged: {checks:#?}");
        assert!(!checks[0].ok && checks[0].detail.contains("has not written its status"));
        assert_eq!(checks[0].agent.as_deref(), Some("/run/nodemesh/admin.sock"));

        let mut unready = healthy();
        unready.ready = false;
        fails_once(
            &unready,
            "agent",
            &["node n1", "not ready"],
            &["re-run in a few seconds"],
        );
    }

    #[test]
    fn an_unreachable_agent_is_named_with_what_to_do() {
        let down = unreachable(
            "/run/nodemesh/admin.sock",
            &ClientError::NotRunning("/run/nodemesh/admin.sock".into()),
        );
        assert!(!down.ok && down.node.is_none());
        assert_eq!(down.agent.as_deref(), Some("/run/nodemesh/admin.sock"));
        assert!(
            down.detail
                .contains("no agent answers at /run/nodemesh/admin.sock")
        );
        assert!(down.fix.unwrap().contains("start the agent on that node"));
        let denied = unreachable("s", &ClientError::PermissionDenied("s".into()));
        assert_eq!(denied.fix.as_deref(), Some("run meshctl as root."));
    }

    #[test]
    fn the_model_source_must_be_connected_with_our_crds() {
        let disconnected = with_status(|s| {
            s.api_server = Some(SourceStatus {
                connected: false,
                failing: ["pods".to_owned()].into(),
                last_error: Some("connection refused".into()),
                serving_last_good: true,
                ..Default::default()
            })
        });
        fails_once(
            &disconnected,
            "model",
            &[
                "DISCONNECTED, serving the last good model",
                "watches failing: pods",
                "last error: connection refused",
            ],
            &["node n1 reaches the API server", "RBAC"],
        );

        let no_crds = with_status(|s| {
            s.api_server = Some(SourceStatus {
                connected: true,
                not_served: [
                    "authorizationpolicies.nodemesh.io".to_owned(),
                    "httproutes.gateway.networking.k8s.io".to_owned(),
                ]
                .into(),
                ..Default::default()
            })
        });
        fails_once(
            &no_crds,
            "model",
            &["does not serve authorizationpolicies.nodemesh.io:", "CRDs"],
            &["install the CRDs"],
        );
        assert!(!failures(&no_crds)[0].1.contains("httproutes"));

        let without_istio = with_status(|s| {
            s.api_server = Some(SourceStatus {
                connected: true,
                not_served: ["peerauthentications.security.istio.io".to_owned()].into(),
                ..Default::default()
            })
        });
        assert!(failures(&without_istio).is_empty());
    }

    #[test]
    fn ca_trouble_is_named_per_pod() {
        let no_ca = with_status(|s| s.ca = None);
        fails_once(&no_ca, "CA", &["without a CA", "plain TCP"], &["--ca"]);

        let failing = with_status(|s| {
            s.ca.as_mut().unwrap().failing.push(CertFailure {
                pod: "shop/c".into(),
                error: "reaching the CA: connection refused".into(),
                since_unix: NOW - 90,
                attempts: 4,
            })
        });
        fails_once(
            &failing,
            "CA",
            &[
                "to the CA at 10.0.0.1:15012 fail",
                "shop/c: reaching the CA: connection refused (failing for 1m30s, 4 attempts)",
            ],
            &["node n1 reaches it at 10.0.0.1:15012"],
        );

        let expired = with_status(|s| s.certs[1].not_after_unix = NOW - 60);
        fails_once(
            &expired,
            "CA",
            &["renewal is not happening", "shop/c (expired 1m00s ago)"],
            &["10.0.0.1:15012"],
        );

        let first_pending = with_status(|s| {
            s.certs.pop();
        });
        fails_once(
            &first_pending,
            "CA",
            &["no certificate yet for shop/c"],
            &["re-run"],
        );

        // A pod whose first request failed is reported once, as failing.
        let first_failed = with_status(|s| {
            s.certs.pop();
            s.ca.as_mut().unwrap().failing.push(CertFailure {
                pod: "shop/c".into(),
                error: "the CA refused (403): not on this node".into(),
                since_unix: NOW - 5,
                attempts: 1,
            });
        });
        fails_once(&first_failed, "CA", &["shop/c: the CA refused (403)"], &[]);
    }

    #[test]
    fn capture_must_be_in_place_for_every_enrolled_pod() {
        let broken = with_status(|s| {
            s.pods[1].inbound.attached = false;
            s.pods[1].problems =
                vec!["sk_lookup is not attached to the pod's network namespace".into()];
        });
        fails_once(
            &broken,
            "capture",
            &["pod shop/c: sk_lookup is not attached"],
            &["meshctl status` on node n1", "restarting the agent"],
        );

        let detached = with_status(|s| s.pods[0].outbound.attached = false);
        fails_once(
            &detached,
            "capture",
            &["pod shop/a: a capture hook is detached"],
            &[],
        );

        let mut not_enrolled = healthy();
        not_enrolled.workloads.push(workload("shop/d", "n1", true));
        fails_once(
            &not_enrolled,
            "capture",
            &["not captured by the agent: shop/d"],
            &["agent's log"],
        );

        let mut unlocated = healthy();
        unlocated.workloads.push(workload("shop/d", "n1", true));
        unlocated.status.as_mut().unwrap().unlocated = vec!["shop/d".into()];
        fails_once(
            &unlocated,
            "capture",
            &["network namespace is not known", "shop/d"],
            &["mesh-agent cni install", "--host-proc"],
        );
    }

    #[test]
    fn no_captured_connection_fails_with_what_to_send() {
        let mut quiet = healthy();
        quiet.captured = None;
        fails_once(
            &quiet,
            "traffic",
            &["no connection on node n1 has been captured by a kernel hook"],
            &["send one request from an enrolled pod on n1, then re-run"],
        );

        let mut empty = with_status(|s| {
            s.pods.clear();
            s.certs.clear();
        });
        empty.workloads.retain(|w| w.node != "n1");
        empty.captured = None;
        fails_once(
            &empty,
            "traffic",
            &["node n1"],
            &["no pod on n1 is enrolled", "nodemesh.io/dataplane=enabled"],
        );
        let capture = judge(&empty, NOW_MS);
        assert!(capture.iter().any(|c| c.check == "capture"
            && c.ok
            && c.detail == "no pod on this node is enrolled"));
    }
}
