//! The `nodemesh-cni` chained plugin: run by the container runtime after the
//! plugin that gives a pod sandbox its interface, it asks the node agent to
//! enrol the pod and fails ADD until the agent has, so no pod of an enrolled
//! namespace starts uncaptured. The decision is the agent's: the plugin only
//! carries the sandbox's facts to it.
//!
//! CNI's protocol: the command and sandbox in environment variables, the
//! network configuration (with the previous plugin's result) on stdin, the
//! result or an error object on stdout.
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    protocol::{self, Command, Request},
    server::POD_WAIT,
};

/// The plugin's name in a `.conflist` (`"type"`).
pub const PLUGIN_TYPE: &str = "nodemesh-cni";
/// Where the DaemonSet's agent listens.
pub const DEFAULT_SOCKET: &str = "/var/run/nodemesh/cni.sock";
const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI's error codes (SPEC.md, "Error"): the runtime shows the message and,
/// for "try again later", retries the sandbox.
const INCOMPATIBLE_VERSION: u32 = 1;
const INVALID_ENVIRONMENT: u32 = 4;
const INVALID_CONFIG: u32 = 7;
const TRY_AGAIN_LATER: u32 = 11;

/// The plugin's entry in the network configuration list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    socket: Option<PathBuf>,
    /// Pods of these namespaces are never held back (the cluster's own
    /// system pods must start even while the agent is down).
    #[serde(default)]
    exclude_namespaces: Vec<String>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    prev_result: Option<Value>,
}

/// What the runtime gave the plugin.
pub struct Invocation<'a> {
    /// `CNI_*` variables by name.
    pub env: &'a BTreeMap<String, String>,
    pub stdin: &'a str,
}

/// What the plugin prints and how it exits.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
    /// A line for the runtime's log.
    pub log: Option<String>,
}

impl Outcome {
    fn ok(stdout: String, log: Option<String>) -> Self {
        Self {
            stdout,
            success: true,
            log,
        }
    }

    fn error(version: &str, code: u32, msg: &str, details: String) -> Self {
        let version = if version.is_empty() { "1.0.0" } else { version };
        let body = json!({"cniVersion": version, "code": code, "msg": msg, "details": details});
        Self {
            stdout: body.to_string(),
            success: false,
            log: Some(format!("{msg}: {details}")),
        }
    }
}

/// Runs one CNI command; `ask` reaches the agent (the socket in real life).
pub fn run(
    call: &Invocation<'_>,
    ask: impl FnOnce(
        &std::path::Path,
        &Request,
        Duration,
    ) -> Result<protocol::Reply, protocol::AskError>,
) -> Outcome {
    let var = |name: &str| call.env.get(name).map(String::as_str).unwrap_or_default();
    let command = var("CNI_COMMAND");
    if command == "VERSION" {
        let body = json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS});
        return Outcome::ok(body.to_string(), None);
    }
    let conf: NetConf = match serde_json::from_str(call.stdin) {
        Ok(conf) => conf,
        Err(e) => {
            return Outcome::error(
                "",
                INVALID_CONFIG,
                "nodemesh-cni: unreadable network configuration on stdin",
                e.to_string(),
            );
        }
    };
    let version = conf.cni_version.as_str();
    if !version.is_empty() && !SUPPORTED_VERSIONS.contains(&version) {
        return Outcome::error(
            version,
            INCOMPATIBLE_VERSION,
            "nodemesh-cni: unsupported cniVersion",
            format!("{version}; supported: {}", SUPPORTED_VERSIONS.join(", ")),
        );
    }
    // CNI 1.1: STATUS asks whether the plugin can take ADDs (the runtime
    // marks the node's network not ready otherwise) and GC lets plugins drop
    // state of sandboxes that are gone. Gating is ADD's job and the agent
    // forgets vanished namespaces itself, so both simply succeed.
    if command == "STATUS" || command == "GC" {
        return Outcome::ok(String::new(), None);
    }
    let command = match command {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        other => {
            return Outcome::error(
                version,
                INVALID_ENVIRONMENT,
                "nodemesh-cni: unknown CNI_COMMAND",
                format!("{other:?} (expected ADD, DEL, CHECK, STATUS, GC or VERSION)"),
            );
        }
    };
    let prev = conf.prev_result.clone();
    // What ADD prints when the pod goes ahead: the chain's result, unchanged.
    let pass = |log: Option<String>| match command {
        Command::Add => Outcome::ok(prev.as_ref().map(Value::to_string).unwrap_or_default(), log),
        _ => Outcome::ok(String::new(), log),
    };
    let args = parse_args(var("CNI_ARGS"));
    let (Some(namespace), Some(name)) = (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME"))
    else {
        // Not a Kubernetes pod sandbox: nothing for the mesh to do.
        return pass(None);
    };
    if conf.exclude_namespaces.iter().any(|n| n == namespace) {
        return pass(None);
    }
    let ips = match (command, &prev) {
        (Command::Add, None) => {
            return Outcome::error(
                version,
                INVALID_CONFIG,
                "nodemesh-cni is a chained plugin",
                "no prevResult: list it after the plugin that sets up the pod's interface".into(),
            );
        }
        (_, Some(prev)) => result_ips(prev),
        (_, None) => Vec::new(),
    };
    let request = Request {
        command,
        namespace: namespace.clone(),
        name: name.clone(),
        sandbox: var("CNI_CONTAINERID").to_owned(),
        netns: PathBuf::from(var("CNI_NETNS")),
        ips,
    };
    if command != Command::Del && request.netns.as_os_str().is_empty() {
        return Outcome::error(
            version,
            INVALID_ENVIRONMENT,
            "nodemesh-cni: CNI_NETNS is not set",
            "the runtime must name the sandbox's network namespace".into(),
        );
    }
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    // The agent waits up to POD_WAIT for its model to learn the pod.
    let timeout = conf
        .timeout_seconds
        .map_or(POD_WAIT + Duration::from_secs(10), Duration::from_secs);
    let pod = request.pod();
    match (command, ask(&socket, &request, timeout)) {
        (_, Ok(reply)) if reply.ok => pass(Some(format!("nodemesh-cni: {pod}: {}", reply.message))),
        (_, Ok(reply)) => Outcome::error(
            version,
            TRY_AGAIN_LATER,
            "nodemesh-cni: the node agent refused the pod",
            format!("{pod}: {}", reply.message),
        ),
        // Nothing to undo when the agent is away: it forgets namespaces that
        // are gone when it comes back.
        (Command::Del, Err(e)) => pass(Some(format!("nodemesh-cni: DEL {pod}: {e}"))),
        (_, Err(e)) => Outcome::error(
            version,
            TRY_AGAIN_LATER,
            "nodemesh-cni: the pod must wait for the nodemesh agent",
            format!("{pod}: {e}"),
        ),
    }
}

/// `CNI_ARGS`: `K1=V1;K2=V2`.
fn parse_args(text: &str) -> BTreeMap<String, String> {
    text.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The addresses in a CNI result (`ips[].address`, CIDR notation).
fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|cidr| cidr.split('/').next()?.parse::<IpAddr>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::cni::protocol::{AskError, Reply};

    const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.22.0.5/16","gateway":"10.22.0.1","interface":0}]}"#;

    fn env(command: &str, args: &str) -> BTreeMap<String, String> {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn conf(extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s","type":"nodemesh-cni","socket":"/s"{extra},"prevResult":{PREV}}}"#
        )
    }

    const POD: &str =
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=c0ffee";

    fn refused() -> AskError {
        AskError::Connect {
            socket: "/s".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
    }

    #[test]
    fn add_carries_the_sandbox_to_the_agent_and_passes_the_result_on() {
        let env = env("ADD", POD);
        let stdin = conf("");
        let mut asked = None;
        let out = run(
            &Invocation {
                env: &env,
                stdin: &stdin,
            },
            |socket, req, _| {
                asked = Some((socket.to_owned(), req.clone()));
                Ok(Reply {
                    ok: true,
                    message: "enrolled".into(),
                })
            },
        );
        assert!(out.success, "{out:?}");
        let printed: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(printed, serde_json::from_str::<Value>(PREV).unwrap());
        let (socket, req) = asked.unwrap();
        assert_eq!(socket, PathBuf::from("/s"));
        assert_eq!(req.pod(), "shop/a");
        assert_eq!(req.sandbox, "c0ffee");
        assert_eq!(req.netns, PathBuf::from("/var/run/netns/cni-1"));
        assert_eq!(req.ips, ["10.22.0.5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn add_fails_to_try_again_while_the_agent_is_away_or_refuses() {
        let env = env("ADD", POD);
        let stdin = conf("");
        let call = Invocation {
            env: &env,
            stdin: &stdin,
        };
        let away = run(&call, |_, _, _| Err(refused()));
        assert!(!away.success);
        let error: Value = serde_json::from_str(&away.stdout).unwrap();
        assert_eq!(error["code"], TRY_AGAIN_LATER);
        assert!(
            error["details"].as_str().unwrap().contains("shop/a"),
            "{error}"
        );
        let no = run(&call, |_, _, _| {
            Ok(Reply {
                ok: false,
                message: "listeners failed".into(),
            })
        });
        assert!(!no.success);
        assert!(no.stdout.contains("listeners failed"), "{}", no.stdout);
    }

    #[test]
    fn excluded_namespaces_and_non_pods_pass_without_asking() {
        let stdin = conf(r#","excludeNamespaces":["shop"]"#);
        for env in [env("ADD", POD), env("ADD", "IgnoreUnknown=1")] {
            let out = run(
                &Invocation {
                    env: &env,
                    stdin: &stdin,
                },
                |_, _, _| panic!("the agent must not be asked"),
            );
            assert!(out.success, "{out:?}");
            assert!(out.stdout.contains("10.22.0.5/16"));
        }
    }

    #[test]
    fn del_succeeds_even_when_the_agent_is_away() {
        let env = env("DEL", POD);
        let stdin = conf("");
        let out = run(
            &Invocation {
                env: &env,
                stdin: &stdin,
            },
            |_, _, _| Err(refused()),
        );
        assert!(out.success, "{out:?}");
        assert!(out.stdout.is_empty());
    }

    /// Runs the plugin where it must not ask the agent; returns its output.
    fn unasked(command: &str, stdin: &str) -> (bool, Value) {
        let env = env(command, POD);
        let out = run(&Invocation { env: &env, stdin }, |_, _, _| {
            panic!("the agent must not be asked")
        });
        (out.success, serde_json::from_str(&out.stdout).unwrap())
    }

    #[test]
    fn bad_input_gets_cni_error_codes() {
        let no_prev = r#"{"cniVersion":"1.0.0","name":"k8s","type":"nodemesh-cni"}"#;
        let (_, error) = unasked("ADD", no_prev);
        assert_eq!(error["code"], INVALID_CONFIG);
        assert!(
            error["msg"].as_str().unwrap().contains("chained"),
            "{error}"
        );
        let old = r#"{"cniVersion":"0.2.0","name":"k8s","type":"nodemesh-cni"}"#;
        assert_eq!(unasked("ADD", old).1["code"], INCOMPATIBLE_VERSION);
        assert_eq!(unasked("FROB", &conf("")).1["code"], INVALID_ENVIRONMENT);
        let (ok, version) = unasked("VERSION", "");
        assert!(ok && version["supportedVersions"].is_array(), "{version}");
    }

    #[test]
    fn status_and_gc_of_cni_1_1_succeed_without_the_agent() {
        let stdin = r#"{"cniVersion":"1.1.0","name":"k8s","type":"nodemesh-cni"}"#;
        for command in ["STATUS", "GC"] {
            let env = env(command, "");
            let out = run(&Invocation { env: &env, stdin }, |_, _, _| {
                panic!("the agent must not be asked")
            });
            assert!(out.success && out.stdout.is_empty(), "{command}: {out:?}");
        }
    }
}
