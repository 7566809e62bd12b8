//! The directory's lines carry exactly what the model needs: an agent that
//! watches its own node's pods and reads the others from the directory has
//! the model of one that watches every pod.
use std::{net::IpAddr, sync::Arc};

use super::{Line, Publisher, event, pod_object};
use crate::state::{
    Loaded, PodInfo, Snapshot,
    cluster::DIRECTORY,
    index::{Change, Index},
};

fn pod(name: &str, node: &str, ip: &str) -> PodInfo {
    PodInfo {
        namespace: "shop".into(),
        name: name.into(),
        node: node.into(),
        service_account: format!("{name}-sa"),
        ips: vec![ip.parse::<IpAddr>().unwrap()],
        labels: [("app".to_owned(), name.to_owned())].into(),
        netns: Default::default(),
        cgroup: Default::default(),
        ready: true,
    }
}

fn yaml(json: &serde_json::Value) -> serde_yaml_ng::Value {
    serde_yaml_ng::to_value(json).unwrap()
}

/// The model of these pods' objects, each fed as `resource`'s.
fn model(objects: &[(&str, serde_json::Value)]) -> Snapshot {
    let mut index = Index::default();
    for (resource, object) in objects {
        index.change(resource, Change::Apply(yaml(object)));
    }
    let loaded = index.load();
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    loaded.snapshot
}

#[test]
fn a_pod_object_reads_back_as_the_same_pod() {
    let mut dual = pod("cart-1", "n2", "10.1.0.11");
    dual.ips.push("fd00:10:1::b".parse().unwrap());
    let mut bare = pod("pay-1", "n2", "10.1.0.12");
    bare.labels.clear();
    bare.service_account = "default".into();
    for p in [dual, bare] {
        let read = model(&[("pods", pod_object(&p))]);
        assert_eq!(read.pods, [p]);
    }
}

fn loaded(snapshot: &Snapshot) -> Arc<Loaded> {
    Arc::new(Loaded {
        snapshot: snapshot.clone(),
        ..Default::default()
    })
}

#[test]
fn the_node_agent_is_sent_the_other_nodes_pods_then_their_changes() {
    let mut snapshot = Snapshot {
        pods: vec![pod("a", "n1", "10.1.0.11"), pod("b", "n2", "10.1.0.12")],
        ..Default::default()
    };
    let mut publisher = Publisher::new("n1");
    assert_eq!(
        publisher.list(&loaded(&snapshot)),
        [
            Line::Init,
            Line::InitApply(pod_object(&snapshot.pods[1])),
            Line::InitDone
        ],
        "only b: n1 watches its own pods"
    );
    assert!(
        publisher.update(&loaded(&snapshot)).is_empty(),
        "nothing changed"
    );
    // b is relabelled, c appears on n3, a (n1's) changes: b and c only.
    snapshot.pods[1]
        .labels
        .insert("track".into(), "canary".into());
    snapshot.pods.push(pod("c", "n3", "10.1.0.13"));
    snapshot.pods[0].labels.clear();
    assert_eq!(
        publisher.update(&loaded(&snapshot)),
        [
            Line::Apply(pod_object(&snapshot.pods[1])),
            Line::Apply(pod_object(&snapshot.pods[2])),
        ]
    );
    let b = snapshot.pods.remove(1);
    assert_eq!(
        publisher.update(&loaded(&snapshot)),
        [Line::Delete(pod_object(&b))]
    );
}

/// One model, two ways of watching pods.
#[test]
fn node_pods_and_the_directory_make_the_model_every_pod_makes() {
    let all = Snapshot {
        pods: vec![
            pod("a", "n1", "10.1.0.11"),
            pod("b", "n2", "10.1.0.12"),
            pod("c", "n3", "10.1.0.13"),
        ],
        ..Default::default()
    };
    let everything: Vec<(&str, serde_json::Value)> =
        all.pods.iter().map(|p| ("pods", pod_object(p))).collect();
    let mut scoped: Vec<(&str, serde_json::Value)> = vec![("pods", pod_object(&all.pods[0]))];
    for line in Publisher::new("n1").list(&loaded(&all)) {
        let text = serde_json::to_vec(&line).unwrap();
        if let Some(kube::runtime::watcher::Event::InitApply(object)) = event(&text).unwrap() {
            scoped.push((DIRECTORY, serde_json::to_value(object).unwrap()));
        }
    }
    // A pod both hold (passing from the directory to the node's watch) is
    // read once.
    scoped.push((DIRECTORY, pod_object(&all.pods[0])));
    assert_eq!(model(&scoped), model(&everything));
}

#[test]
fn lines_read_back_as_watch_events_and_bookmarks_as_nothing() {
    use kube::runtime::watcher::Event;
    let p = pod("a", "n2", "10.1.0.11");
    let text = |line: Line| serde_json::to_vec(&line).unwrap();
    assert!(matches!(
        event(&text(Line::Init)).unwrap(),
        Some(Event::Init)
    ));
    assert!(matches!(
        event(&text(Line::Delete(pod_object(&p)))).unwrap(),
        Some(Event::Delete(o)) if o.metadata.name.as_deref() == Some("a")
    ));
    assert!(event(&text(Line::Bookmark)).unwrap().is_none());
    assert_eq!(
        serde_json::to_string(&Line::InitDone).unwrap(),
        r#"{"type":"InitDone"}"#
    );
    let bad = event(br#"{"type":"Apply"}"#).unwrap_err();
    assert!(bad.to_string().contains("not understood"), "{bad}");
}
