//! `deploy/admission.yaml`: the ValidatingAdmissionPolicy that narrows the
//! agent's `patch nodes` to lifting its own taint off its own Node. No API
//! server runs here, so the policy's CEL, read from the file, is evaluated
//! with cel-rust in the API server's order: the match conditions (all true,
//! or the policy does not apply), the variables in turn, then every
//! validation (a false one refuses, with its message). An expression that
//! fails to evaluate fails the test: the API server would refuse the agent
//! with an error (failurePolicy Fail) instead of the message meant for the
//! operator, or refuse it where it should allow.
use std::{collections::BTreeMap, collections::HashMap, sync::Arc};

use cel::{Context, Env, Program, Value as Cel};
use k8s_openapi::{
    api::{
        admissionregistration::v1::{
            NamedRuleWithOperations, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        },
        authentication::v1::UserInfo,
        core::v1::{NodeConfigSource, NodeSpec, Taint},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use mesh_agent::node::taint::TAINT_KEY;
use serde_json::{Value, json};

use super::find;

const POLICY: &str = "nodemesh-agent-own-node-taint";
const AGENT: &str = "system:serviceaccount:nodemesh-system:nodemesh-agent";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const OWN_NODE: &str = "worker-1";
/// The start of each validation's message: which one refused.
const NOT_ITS_NODE: &str = "nodemesh-agent may update only the Node its own pod runs on";
const NOT_ITS_TAINT: &str = "nodemesh-agent may change a Node's spec.taints only";
const NOT_METADATA: &str = "nodemesh-agent may not change a Node's labels or annotations";
const NOT_SPEC: &str = "nodemesh-agent may not change a Node's spec beyond its taints";

/// One CEL expression of the policy, compiled.
struct Expression {
    source: String,
    program: Program,
}

impl Expression {
    fn compile(env: &Env, source: &str) -> Expression {
        let program = env
            .compile(source)
            .unwrap_or_else(|e| panic!("{POLICY}: `{source}` does not compile: {e}"));
        Expression {
            source: source.to_owned(),
            program,
        }
    }

    fn evaluate(&self, context: &Context) -> Cel {
        self.program
            .execute(context)
            .unwrap_or_else(|e| panic!("{POLICY}: `{}` fails to evaluate: {e}", self.source))
    }

    fn holds(&self, context: &Context) -> bool {
        match self.evaluate(context) {
            Cel::Bool(b) => b,
            other => panic!("{POLICY}: `{}` is {other:?}, not a bool", self.source),
        }
    }
}

enum Message {
    Fixed(String),
    Expression(Expression),
}

struct Validation {
    check: Expression,
    message: Message,
}

/// The policy's CEL, as deploy/admission.yaml has it.
struct Policy {
    env: Arc<Env>,
    match_conditions: Vec<Expression>,
    variables: Vec<(String, Expression)>,
    validations: Vec<Validation>,
}

/// What the API server would answer an update the policy's rules match.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// A match condition is false: the policy does not apply.
    NotMatched,
    Allowed,
    /// The message of every validation that is false.
    Refused(Vec<String>),
}

impl Policy {
    fn load() -> Policy {
        let policy: ValidatingAdmissionPolicy = find("ValidatingAdmissionPolicy", POLICY).typed();
        let spec = policy.spec.expect("a spec");
        let env = Env::stdlib();
        let compile = |source: &str| Expression::compile(&env, source);
        let match_conditions = spec
            .match_conditions
            .iter()
            .flatten()
            .map(|c| compile(&c.expression))
            .collect();
        let variables = spec
            .variables
            .iter()
            .flatten()
            .map(|v| (v.name.clone(), compile(&v.expression)))
            .collect();
        let validations = spec
            .validations
            .iter()
            .flatten()
            .map(|v| Validation {
                check: compile(&v.expression),
                message: match (&v.message_expression, &v.message) {
                    (Some(source), _) => Message::Expression(compile(source)),
                    (None, Some(text)) => Message::Fixed(text.clone()),
                    (None, None) => panic!("{POLICY}: `{}` has no message", v.expression),
                },
            })
            .collect();
        Policy {
            env: Arc::new(env),
            match_conditions,
            variables,
            validations,
        }
    }

    fn admit(&self, update: &Update) -> Verdict {
        let mut context = Context::with_env(Arc::clone(&self.env));
        for (name, value) in [
            ("request", &update.request),
            ("oldObject", &update.old),
            ("object", &update.new),
        ] {
            context
                .add_variable(name, value)
                .expect("JSON is a CEL value");
        }
        if !self.match_conditions.iter().all(|c| c.holds(&context)) {
            return Verdict::NotMatched;
        }
        // Each variable sees those before it, as in the API server.
        let mut variables = HashMap::new();
        for (name, expression) in &self.variables {
            context.add_variable_from_value("variables", variables.clone());
            variables.insert(name.clone(), expression.evaluate(&context));
        }
        context.add_variable_from_value("variables", variables);
        let refusals: Vec<String> = self
            .validations
            .iter()
            .filter(|v| !v.check.holds(&context))
            .map(|v| match &v.message {
                Message::Fixed(text) => text.clone(),
                Message::Expression(e) => match e.evaluate(&context) {
                    Cel::String(s) => s.to_string(),
                    other => panic!("{POLICY}: message `{}` is {other:?}", e.source),
                },
            })
            .collect();
        if refusals.is_empty() {
            Verdict::Allowed
        } else {
            Verdict::Refused(refusals)
        }
    }
}

/// An UPDATE of a Node as admission sees it.
#[derive(Clone)]
struct Update {
    /// What the case is, for failures.
    what: String,
    request: Value,
    old: Value,
    new: Value,
}

fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        effect: effect.to_owned(),
        ..Taint::default()
    }
}

/// A Node as it is before its agent is ready: the agent's taint between
/// others, one of them with the time the node controller stamps.
fn node(name: &str) -> Value {
    let not_ready = Taint {
        time_added: Some(Time("2025-03-01T08:00:00Z".parse().unwrap())),
        ..taint("node.kubernetes.io/not-ready", "NoExecute")
    };
    let dedicated = Taint {
        value: Some("mesh".to_owned()),
        ..taint("dedicated", "NoSchedule")
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "resourceVersion": "4242",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
            "providerID": format!("kind://docker/kind/{name}"),
            "taints": [not_ready, taint(TAINT_KEY, "NoExecute"), dedicated],
        },
    })
}

/// What the agent writes (mesh-agent/src/node/taint.rs): every taint of
/// its key gone, the others kept in order; no taint left is no `taints`.
fn lifted(node: &Value) -> Value {
    let mut node = node.clone();
    let kept: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] != TAINT_KEY)
        .cloned()
        .collect();
    let spec = node["spec"].as_object_mut().expect("a spec");
    if kept.is_empty() {
        spec.remove("taints");
    } else {
        spec.insert("taints".to_owned(), kept.into());
    }
    node
}

/// The request of `username`, with the extra a pod-bound token carries
/// (the node's only if `node`).
fn request_by(username: &str, node: Option<&str>) -> Value {
    let mut extra = BTreeMap::from([
        (
            "authentication.kubernetes.io/pod-name".to_owned(),
            vec!["nodemesh-agent-7xk2p".to_owned()],
        ),
        (
            "authentication.kubernetes.io/credential-id".to_owned(),
            vec!["JTI=5b1c9e0a-6f6e-4d1c-9a53-2f1b8f0e7c11".to_owned()],
        ),
    ]);
    if let Some(node) = node {
        extra.insert(NODE_NAME.to_owned(), vec![node.to_owned()]);
    }
    request_with(UserInfo {
        username: Some(username.to_owned()),
        uid: Some("0b9d5d0e-2c7b-4a57-8f0e-6d3c1e4a9b21".to_owned()),
        groups: Some(vec![
            "system:serviceaccounts".to_owned(),
            "system:serviceaccounts:nodemesh-system".to_owned(),
            "system:authenticated".to_owned(),
        ]),
        extra: Some(extra),
    })
}

fn request_with(user: UserInfo) -> Value {
    json!({
        "operation": "UPDATE",
        "resource": {"group": "", "version": "v1", "resource": "nodes"},
        "userInfo": user,
    })
}

/// An update of Node `name` by the agent on `OWN_NODE`.
fn by_agent(what: &str, name: &str, change: impl FnOnce(&Value) -> Value) -> Update {
    let old = node(name);
    Update {
        what: what.to_owned(),
        request: request_by(AGENT, Some(OWN_NODE)),
        new: change(&old),
        old,
    }
}

fn own_node(what: &str, change: impl FnOnce(&mut Value)) -> Update {
    by_agent(what, OWN_NODE, |old| {
        let mut new = lifted(old);
        change(&mut new);
        new
    })
}

/// Each of `updates` refused by exactly the validation whose message
/// starts with `by`, so that each check is shown to catch its own cases;
/// their messages.
fn assert_refused(updates: Vec<Update>, by: &str) -> Vec<String> {
    let policy = Policy::load();
    updates
        .iter()
        .map(|update| match policy.admit(update) {
            Verdict::Refused(mut messages)
                if messages.len() == 1 && messages[0].starts_with(by) =>
            {
                messages.remove(0)
            }
            other => panic!(
                "{}: expected refused by \"{by}…\", got {other:?}",
                update.what
            ),
        })
        .collect()
}

#[test]
fn the_agent_may_lift_its_taint_off_its_own_node() {
    let policy = Policy::load();
    let assert_allowed =
        |update: &Update| assert_eq!(policy.admit(update), Verdict::Allowed, "{}", update.what);
    assert_allowed(&own_node(
        "lifting the taint from between two others",
        |_| {},
    ));

    // The last taint lifted: the API server stores no `taints`, or an empty list.
    let mut last = own_node("lifting the last taint (no taints left)", |_| {});
    last.old["spec"]["taints"] = json!([taint(TAINT_KEY, "NoExecute")]);
    last.new = lifted(&last.old);
    assert!(last.new["spec"].get("taints").is_none());
    assert_allowed(&last);
    last.what = "lifting the last taint (an empty list left)".to_owned();
    last.new["spec"]["taints"] = json!([]);
    assert_allowed(&last);

    // Every taint of its key, whatever its effect (an operator may choose
    // NoSchedule), as the agent's own is_ours.
    let mut twice = own_node(
        "lifting the taint there as NoExecute and NoSchedule",
        |_| {},
    );
    taints(&mut twice.old).push(serde_json::to_value(taint(TAINT_KEY, "NoSchedule")).unwrap());
    twice.new = lifted(&twice.old);
    assert_allowed(&twice);
}

fn another_node() -> Vec<Update> {
    vec![by_agent(
        "lifting the taint off another Node",
        "worker-2",
        lifted,
    )]
}

/// Tokens that name no node: not pod-bound, from a cluster before 1.30,
/// or forged with two.
fn no_node_in_token() -> Vec<Update> {
    let with = |what: &str, request: Value| Update {
        request,
        ..own_node(what, |_| {})
    };
    let mut two_nodes = request_by(AGENT, None);
    two_nodes["userInfo"]["extra"][NODE_NAME] = json!([OWN_NODE, "worker-2"]);
    vec![
        with("a token without node-name", request_by(AGENT, None)),
        with(
            "a request without extra",
            request_with(UserInfo {
                username: Some(AGENT.to_owned()),
                ..UserInfo::default()
            }),
        ),
        with("a token naming two nodes", two_nodes),
    ]
}

/// The taints of `node`, which has some.
fn taints(node: &mut Value) -> &mut Vec<Value> {
    node["spec"]["taints"].as_array_mut().expect("taints left")
}

fn other_taint_changes() -> Vec<Update> {
    vec![
        own_node("adding a taint", |n| {
            taints(n)
                .push(serde_json::to_value(taint("example.com/quarantine", "NoExecute")).unwrap());
        }),
        own_node("lifting node.kubernetes.io/not-ready too", |n| {
            taints(n).remove(0);
        }),
        by_agent("lifting another taint but not its own", OWN_NODE, |old| {
            let mut new = old.clone();
            taints(&mut new).pop();
            new
        }),
        by_agent("turning its taint into NoSchedule", OWN_NODE, |old| {
            let mut new = old.clone();
            taints(&mut new)[1]["effect"] = json!("NoSchedule");
            new
        }),
        own_node("changing another taint's value", |n| {
            taints(n)[1]["value"] = json!("anything");
        }),
        own_node("clearing every taint", |n| {
            n["spec"]["taints"] = json!([]);
        }),
    ]
}

fn metadata_changes() -> Vec<Update> {
    vec![
        own_node("changing a label", |n| {
            n["metadata"]["labels"]["kubernetes.io/hostname"] = json!("worker-9");
        }),
        own_node("adding a label", |n| {
            n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
        }),
        own_node("removing every label", |n| {
            n["metadata"].as_object_mut().unwrap().remove("labels");
        }),
        own_node("adding an annotation", |n| {
            n["metadata"]["annotations"]["example.com/owner"] = json!("mallory");
        }),
        own_node("removing an annotation", |n| {
            n["metadata"]["annotations"] = json!({});
        }),
    ]
}

/// Every field of NodeSpec, set. Written without `..`, so that a field a
/// newer k8s-openapi brings fails to compile here until the policy is
/// checked against it.
fn every_spec_field() -> NodeSpec {
    NodeSpec {
        config_source: Some(NodeConfigSource::default()),
        external_id: Some("i-0a1b2c3d".to_owned()),
        pod_cidr: Some("10.244.1.0/24".to_owned()),
        pod_cidrs: Some(vec!["10.244.1.0/24".to_owned()]),
        provider_id: Some("kind://docker/kind/worker-1".to_owned()),
        taints: None,
        unschedulable: Some(false),
    }
}

/// Some other value of the same JSON type.
fn changed(value: &Value) -> Value {
    match value {
        Value::Bool(b) => json!(!b),
        Value::String(s) => json!(format!("{s}-changed")),
        Value::Array(items) => json!([&items[..], &[json!("changed")]].concat()),
        Value::Object(_) => json!({"configMap": {"name": "changed"}}),
        other => panic!("NodeSpec has no field like {other}"),
    }
}

/// Cordoning, then each spec field but taints added, removed and changed,
/// each while lifting the taint.
fn spec_changes() -> Vec<Update> {
    let mut updates = vec![own_node("cordoning (unschedulable: true)", |n| {
        n["spec"]["unschedulable"] = json!(true);
    })];
    let Value::Object(fields) = serde_json::to_value(every_spec_field()).unwrap() else {
        unreachable!("a NodeSpec is an object")
    };
    for (field, value) in fields {
        let set = |node: &mut Value, value: Option<&Value>| {
            let spec = node["spec"].as_object_mut().expect("a spec");
            match value {
                Some(value) => spec.insert(field.clone(), value.clone()),
                None => spec.remove(&field),
            };
        };
        let other = changed(&value);
        for (what, before, after) in [
            ("adding", None, Some(&value)),
            ("removing", Some(&value), None),
            ("changing", Some(&value), Some(&other)),
        ] {
            let mut update = own_node(&format!("{what} spec.{field}"), |_| {});
            set(&mut update.old, before);
            set(&mut update.new, after);
            updates.push(update);
        }
    }
    updates
}

/// Every update the agent must not make.
fn refused_updates() -> Vec<Update> {
    [
        another_node(),
        no_node_in_token(),
        other_taint_changes(),
        metadata_changes(),
        spec_changes(),
    ]
    .concat()
}

#[test]
fn the_agent_may_not_lift_its_taint_off_another_node() {
    for message in assert_refused(another_node(), NOT_ITS_NODE) {
        assert!(
            message.ends_with("is bound to Node worker-1, not to Node worker-2"),
            "{message}"
        );
    }
}

#[test]
fn a_token_that_names_no_node_may_update_no_node() {
    for message in assert_refused(no_node_in_token(), NOT_ITS_NODE) {
        assert!(message.contains("names no node"), "{message}");
    }
}

#[test]
fn the_agent_may_not_add_change_or_remove_any_other_taint() {
    assert_refused(other_taint_changes(), NOT_ITS_TAINT);
}

#[test]
fn the_agent_may_not_change_a_nodes_labels_or_annotations() {
    assert_refused(metadata_changes(), NOT_METADATA);
}

#[test]
fn the_agent_may_not_cordon_a_node_nor_change_any_other_spec_field() {
    let updates = spec_changes();
    assert_eq!(
        updates.len(),
        1 + 3 * 6,
        "cordoning, and 3 changes of each of 6 fields"
    );
    assert_refused(updates, NOT_SPEC);
}

/// Whoever else updates a Node, however, the policy does not even apply.
#[test]
fn nobody_but_the_agent_is_matched() {
    let policy = Policy::load();
    let others = [
        "kubernetes-admin",
        "system:node:worker-1",
        "system:serviceaccount:kube-system:node-controller",
        "system:serviceaccount:nodemesh-system:nodemesh-ca",
    ];
    for user in others {
        for update in refused_updates() {
            let update = Update {
                request: request_by(user, Some(OWN_NODE)),
                ..update
            };
            assert_eq!(
                policy.admit(&update),
                Verdict::NotMatched,
                "{user}: {}",
                update.what
            );
        }
    }
}

/// These tests catch a weaker or a stricter policy: with any one
/// validation always true, some refused update goes through; with a taint
/// check that forgets the filter, the agent's own lift is refused; with
/// every user matched, others are refused.
#[test]
fn a_policy_weakened_or_tightened_fails_these_tests() {
    let refused = refused_updates();
    let count = Policy::load().validations.len();
    for weakened in 0..count {
        let mut policy = Policy::load();
        let validation = &mut policy.validations[weakened];
        let source = std::mem::replace(
            &mut validation.check,
            Expression::compile(&policy.env, "true"),
        )
        .source;
        assert!(
            refused
                .iter()
                .any(|update| policy.admit(update) == Verdict::Allowed),
            "with `{source}` always true, no refused update goes through"
        );
    }

    let mut policy = Policy::load();
    let taints = policy
        .validations
        .iter_mut()
        .find(|v| matches!(&v.message, Message::Fixed(m) if m.starts_with(NOT_ITS_TAINT)))
        .expect("a taint check");
    taints.check = Expression::compile(&policy.env, "variables.newTaints == variables.oldTaints");
    assert!(matches!(
        policy.admit(&own_node("lifting the taint", |_| {})),
        Verdict::Refused(_)
    ));

    let mut policy = Policy::load();
    policy.match_conditions = vec![Expression::compile(&policy.env, "true")];
    let update = &refused[0];
    let update = Update {
        request: request_by("kubernetes-admin", None),
        ..update.clone()
    };
    assert!(matches!(policy.admit(&update), Verdict::Refused(_)));
}

/// The API server's side of the policy: what it matches, that a failing
/// expression refuses, and a binding that denies (not warns or audits)
/// everywhere the policy matches.
#[test]
fn the_policy_matches_node_updates_and_its_binding_denies() {
    let policy: ValidatingAdmissionPolicy = find("ValidatingAdmissionPolicy", POLICY).typed();
    let spec = policy.spec.expect("a spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    assert!(spec.param_kind.is_none());
    let constraints = spec.match_constraints.expect("matchConstraints");
    let strings = |items: &[&str]| Some(items.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        constraints.resource_rules,
        Some(vec![NamedRuleWithOperations {
            api_groups: strings(&[""]),
            api_versions: strings(&["v1"]),
            operations: strings(&["UPDATE"]),
            resources: strings(&["nodes"]),
            ..NamedRuleWithOperations::default()
        }])
    );
    for validation in spec.validations.iter().flatten() {
        assert_eq!(
            validation.reason.as_deref(),
            Some("Forbidden"),
            "{}",
            validation.expression
        );
    }

    let binding: ValidatingAdmissionPolicyBinding =
        find("ValidatingAdmissionPolicyBinding", POLICY).typed();
    let binding = binding.spec.expect("a spec");
    assert_eq!(binding.policy_name.as_deref(), Some(POLICY));
    assert_eq!(binding.validation_actions, strings(&["Deny"]));
    assert!(binding.match_resources.is_none() && binding.param_ref.is_none());
}
