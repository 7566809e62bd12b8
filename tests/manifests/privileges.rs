//! What the manifests may do, asserted on their typed objects: the agent's
//! exact privileges (issue 18: not privileged, drop ALL, add only BPF,
//! NET_ADMIN and SYS_ADMIN, no host PID namespace), the mounts and probes
//! its flags rely on, a CA with no privilege at all, read-only RBAC with
//! three named exceptions, and the namespace's Pod Security level.
use std::collections::BTreeSet;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Container, Namespace, PodSpec, PodTemplateSpec, Probe, Service, Volume},
        rbac::v1::ClusterRole,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{documents, find, repo};

const NAMESPACE: &str = "nodemesh-system";
const IMAGE: &str = "ghcr.io/nodemesh/nodemesh";

fn agent() -> DaemonSet {
    find("DaemonSet", "nodemesh-agent").typed()
}

fn pod(template: PodTemplateSpec) -> PodSpec {
    template.spec.expect("a pod template with a spec")
}

fn agent_pod() -> PodSpec {
    pod(agent().spec.expect("a spec").template)
}

fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The value after `flag` in a container's command line.
/// A container's command and arguments, in order.
fn command_line(c: &Container) -> Vec<&String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .collect()
}

fn flag<'a>(c: &'a Container, flag: &str) -> &'a str {
    let line = command_line(c);
    let at = line
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("{} has no {flag}", c.name));
    line.get(at + 1).map_or("", |v| v.as_str())
}

/// Where a container mounts the volume `name`: (mount path, read-only,
/// propagation).
fn mount(c: &Container, name: &str) -> (String, bool, Option<String>) {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{} does not mount {name}", c.name));
    (
        m.mount_path.clone(),
        m.read_only == Some(true),
        m.mount_propagation.clone(),
    )
}

fn host_path(pod: &PodSpec, name: &str) -> String {
    let source = volume(pod, name).host_path.as_ref();
    source
        .unwrap_or_else(|| panic!("{name} is not a hostPath"))
        .path
        .clone()
}

fn http_get(probe: Option<&Probe>) -> (String, IntOrString) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .expect("an httpGet probe");
    (get.path.clone().unwrap_or_default(), get.port.clone())
}

#[test]
fn the_agent_holds_exactly_its_three_capabilities_and_is_not_privileged() {
    let pod = agent_pod();
    let agent = container(&pod, "agent");
    let sc = agent
        .security_context
        .as_ref()
        .expect("the agent's securityContext");
    assert_eq!(
        sc.privileged,
        Some(false),
        "privileged must be written out as false"
    );
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(
            &[
                "BPF".to_owned(),
                "NET_ADMIN".to_owned(),
                "SYS_ADMIN".to_owned()
            ][..]
        )
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    for other in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        if other.name == "agent" {
            continue;
        }
        let sc = other.security_context.as_ref().expect("a securityContext");
        assert_eq!(sc.privileged, Some(false), "{}", other.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", other.name);
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{}",
            other.name
        );
        assert_eq!(caps.add, None, "{} needs no capability", other.name);
    }
}

#[test]
fn the_agent_shares_neither_the_nodes_network_nor_its_processes() {
    let pod = agent_pod();
    assert_ne!(
        pod.host_network,
        Some(true),
        "no hostNetwork: the agent works in each pod's namespace, and the surge pod must bind \
         its ports beside the old agent"
    );
    assert_ne!(
        pod.host_pid,
        Some(true),
        "no hostPID: /proc comes read-only through a mount"
    );
    assert_ne!(pod.host_ipc, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.expect("tolerations");
    assert_eq!(tolerations.len(), 1);
    let all = &tolerations[0];
    assert_eq!(
        (all.operator.as_deref(), &all.key, &all.effect),
        (Some("Exists"), &None, &None),
        "one toleration of every taint"
    );
}

#[test]
fn the_agents_mounts_are_where_its_flags_look() {
    let spec = agent().spec.expect("a spec");
    let pod = pod(spec.template);
    let agent = container(&pod, "agent");
    for (volume, host) in [
        ("bpffs", "/sys/fs/bpf"),
        ("cgroup", "/sys/fs/cgroup"),
        ("netns", "/var/run/netns"),
    ] {
        let (path, _, propagation) = mount(agent, volume);
        assert_eq!(host_path(&pod, volume), host);
        assert_eq!(path, host, "{volume} is seen where the host has it");
        assert_eq!(propagation.as_deref(), Some("HostToContainer"), "{volume}");
    }
    assert!(
        flag(agent, "--pods-cgroup").starts_with("/sys/fs/cgroup/"),
        "--pods-cgroup lies in the cgroup mount"
    );
    let (proc_path, read_only, _) = mount(agent, "host-proc");
    assert_eq!(
        (host_path(&pod, "host-proc").as_str(), read_only),
        ("/proc", true)
    );
    assert_eq!(flag(agent, "--host-proc"), proc_path);
    // The pods' net sysctls are written through it: its sys/net, and only
    // that, is writable.
    let (net, read_only, _) = mount(agent, "host-proc-sys-net");
    assert_eq!(
        (
            host_path(&pod, "host-proc-sys-net").as_str(),
            net.as_str(),
            read_only
        ),
        (
            "/proc/sys/net",
            format!("{proc_path}/sys/net").as_str(),
            false
        )
    );
    let (pins, _, _) = mount(agent, "netns");
    assert_eq!(flag(agent, "--netns-dir"), pins);
    let (run, _, _) = mount(agent, "run");
    assert_eq!(flag(agent, "--run-dir"), run);
    assert_eq!(
        host_path(&pod, "run"),
        run,
        "the CNI plugin dials cni.sock on the host"
    );
    let installer = container(&pod, "install-cni");
    assert_eq!(flag(installer, "--socket"), format!("{run}/cni.sock"));
    for (flag_name, volume, host) in [
        ("--cni-bin-dir", "cni-bin", "/opt/cni/bin"),
        ("--cni-conf-dir", "cni-conf", "/etc/cni/net.d"),
    ] {
        assert_eq!(flag(installer, flag_name), mount(installer, volume).0);
        assert_eq!(host_path(&pod, volume), host);
    }
    // No mount may propagate back to the host: that needs a privileged container.
    for c in &pod.containers {
        for m in c.volume_mounts.iter().flatten() {
            assert_ne!(
                m.mount_propagation.as_deref(),
                Some("Bidirectional"),
                "{}",
                m.name
            );
        }
    }
}

#[test]
fn the_agent_authenticates_with_a_projected_token_for_the_ca() {
    let pod = agent_pod();
    let agent = container(&pod, "agent");
    let (dir, read_only, _) = mount(agent, "ca-token");
    assert!(read_only);
    let token = volume(&pod, "ca-token")
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s.iter().find_map(|s| s.service_account_token.as_ref()))
        .expect("a projected service-account token");
    assert_eq!(token.audience.as_deref(), Some("nodemesh-ca"));
    assert_eq!(
        flag(agent, "--ca-token-file"),
        format!("{dir}/{}", token.path)
    );
    // The CA's public root arrives beside the token, from its ConfigMap.
    let root = volume(&pod, "ca-token")
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s.iter().find_map(|s| s.config_map.as_ref()))
        .expect("the CA root ConfigMap in the projected volume");
    assert_eq!(root.name, "nodemesh-ca-root");
    let item = &root.items.as_ref().expect("items")[0];
    assert_eq!(flag(agent, "--ca-root"), format!("{dir}/{}", item.path));
    let node = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from the downward API");
    assert_eq!(node.field_path, "spec.nodeName");
    assert_eq!(flag(agent, "--node"), "$(NODE_NAME)");
}

#[test]
fn the_agent_is_probed_on_its_readiness_port_and_rolls_with_a_surge() {
    let spec = agent().spec.expect("a spec");
    let strategy = spec.update_strategy.as_ref().expect("an updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let pod = pod(spec.template);
    let agent = container(&pod, "agent");
    let ready_port: i32 = flag(agent, "--ready-listen")
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("--ready-listen host:port");
    assert_eq!(ready_port, 15021);
    for probe in [&agent.startup_probe, &agent.readiness_probe] {
        assert_eq!(
            http_get(probe.as_ref()),
            ("/healthz/ready".to_owned(), IntOrString::Int(ready_port))
        );
    }
    let ports: Vec<i32> = agent
        .ports
        .iter()
        .flatten()
        .map(|p| {
            assert_eq!(
                p.host_port, None,
                "a host port keeps the surge pod off the node"
            );
            p.container_port
        })
        .collect();
    assert_eq!(ports, [15020, 15021]);
}

#[test]
fn every_container_has_requests_and_limits() {
    let mut pods = vec![agent_pod()];
    for d in documents().iter().filter(|d| d.kind() == "Deployment") {
        pods.push(pod(d.typed::<Deployment>().spec.expect("a spec").template));
    }
    for c in pods.iter().flat_map(|p| &p.containers) {
        let resources = c
            .resources
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no resources", c.name));
        for (what, set) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            let set = set
                .as_ref()
                .unwrap_or_else(|| panic!("{}: no {what}", c.name));
            assert!(
                set.contains_key("cpu") && set.contains_key("memory"),
                "{}: {what} need cpu and memory",
                c.name
            );
        }
    }
}

#[test]
fn the_namespace_enforces_the_privileged_pod_security_level() {
    let namespace: Namespace = find("Namespace", NAMESPACE).typed();
    let labels = namespace.metadata.labels.expect("labels");
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
    let text = std::fs::read_to_string(repo().join("deploy/namespace.yaml")).unwrap();
    assert!(
        text.contains("baseline"),
        "namespace.yaml says why the baseline level is not enough"
    );
    assert_eq!(agent().metadata.namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn the_ca_runs_without_any_privilege_behind_its_service() {
    let ca: Deployment = find("Deployment", "nodemesh-ca").typed();
    let spec = ca.spec.expect("a spec");
    assert_eq!(spec.replicas, Some(1));
    let pod = pod(spec.template.clone());
    assert_ne!(pod.host_network, Some(true));
    let pod_sc = pod
        .security_context
        .as_ref()
        .expect("a pod securityContext");
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    let ca_container = container(&pod, "ca");
    let sc = ca_container
        .security_context
        .as_ref()
        .expect("a securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(caps.add, None);
    let root = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.is_some())
        .expect("the root from a Secret");
    assert_eq!(
        flag(ca_container, "--dir"),
        mount(ca_container, &root.name).0
    );
    assert!(flag(ca_container, "--listen").ends_with(":15012"));
    let service: Service = find("Service", "nodemesh-ca").typed();
    let service = service.spec.expect("a spec");
    assert_eq!(service.selector, spec.selector.match_labels);
    let port = &service.ports.expect("ports")[0];
    assert_eq!(
        (port.port, &port.target_port),
        (15012, &Some(IntOrString::Int(15012)))
    );
}

/// Read-only everywhere but three writes, each for one named reason.
#[test]
fn rbac_is_read_only_but_for_the_taint_tokenreviews_and_status() {
    const READ: [&str; 3] = ["get", "list", "watch"];
    let allowed_writes = BTreeSet::from([
        ("nodemesh-agent", "", "nodes", "patch"),
        (
            "nodemesh-ca",
            "authentication.k8s.io",
            "tokenreviews",
            "create",
        ),
        (
            "nodemesh-ca",
            "nodemesh.io",
            "authorizationpolicies/status",
            "patch",
        ),
        (
            "nodemesh-ca",
            "nodemesh.io",
            "peerauthentications/status",
            "patch",
        ),
        (
            "nodemesh-ca",
            "nodemesh.io",
            "trafficpolicies/status",
            "patch",
        ),
    ]);
    let mut writes = BTreeSet::new();
    for document in documents().iter().filter(|d| d.kind() == "ClusterRole") {
        let role: ClusterRole = document.typed();
        let name = role.metadata.name.clone().unwrap_or_default();
        for rule in role.rules.iter().flatten() {
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        assert!(
                            group != "*" && resource != "*" && verb != "*",
                            "{name}: no wildcards"
                        );
                        if !READ.contains(&verb.as_str()) {
                            writes.insert((
                                name.clone(),
                                group.clone(),
                                resource.clone(),
                                verb.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    let allowed: BTreeSet<(String, String, String, String)> = allowed_writes
        .iter()
        .map(|(a, b, c, d)| ((*a).into(), (*b).into(), (*c).into(), (*d).into()))
        .collect();
    assert_eq!(writes, allowed);
}

/// The tag is set once, by the kustomization's `images`; the example (not
/// in the kustomization) carries the same.
#[test]
fn the_image_is_named_once_and_tagged_by_the_kustomization() {
    let kustomization: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("deploy/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let image = &kustomization["images"][0];
    assert_eq!(image["name"], IMAGE);
    let tag = image["newTag"].as_str().expect("images[0].newTag");
    for document in documents() {
        let template = &document.value["spec"]["template"]["spec"];
        for c in template["containers"].as_array().into_iter().flatten() {
            let expected = if document.file.starts_with("deploy/examples/") {
                format!("{IMAGE}:{tag}")
            } else {
                IMAGE.to_owned()
            };
            assert_eq!(c["image"], expected.as_str(), "{}", document.origin());
        }
    }
}

#[test]
fn the_cni_installer_never_holds_back_the_agents_own_pods() {
    let pod = agent_pod();
    let installer = pod
        .containers
        .iter()
        .find(|c| c.name == "install-cni")
        .expect("an install-cni container");
    let line = command_line(installer);
    let excluded: Vec<&str> = line
        .windows(2)
        .filter(|w| w[0] == "--exclude-namespace")
        .map(|w| w[1].as_str())
        .collect();
    // A surge agent pod goes through nodemesh-cni too: waiting for an agent
    // would be waiting for itself.
    assert!(excluded.contains(&NAMESPACE), "{excluded:?}");
    assert!(excluded.contains(&"kube-system"), "{excluded:?}");
    assert!(line.iter().any(|a| *a == "--watch"));
}
