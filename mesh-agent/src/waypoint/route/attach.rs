//! Which routes a parent serves: a route attaches when one of its
//! `parentRefs` names the parent's Service (GAMMA) or the waypoint Gateway
//! itself. Everything else belongs to another parent and is ignored, not
//! reported: this waypoint cannot judge another parent's routes.
//!
//! `sectionName` is not compared (the parent carries no port or listener
//! names), and a Gateway `port` neither, as a waypoint has the one listener.
use super::Parent;
use crate::state::gateway::{HttpRoute, ParentRef};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The namespace of a route written without one.
pub(super) const DEFAULT_NAMESPACE: &str = "default";

pub(super) fn attaches(route: &HttpRoute, parent: &Parent) -> bool {
    let namespace = route
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    route.spec.parent_refs.iter().any(|parent_ref| {
        names_service(parent_ref, namespace, parent)
            || names_waypoint(parent_ref, namespace, parent)
    })
}

fn names_service(parent_ref: &ParentRef, route_namespace: &str, parent: &Parent) -> bool {
    let core = matches!(parent_ref.group.as_deref(), None | Some("" | "core"));
    core && parent_ref.kind.as_deref() == Some("Service")
        && parent_ref.name == parent.service_name
        && parent_ref.namespace.as_deref().unwrap_or(route_namespace) == parent.service_namespace
        && parent_ref.port.is_none_or(|port| port == parent.port)
}

fn names_waypoint(parent_ref: &ParentRef, route_namespace: &str, parent: &Parent) -> bool {
    // Absent group and kind are the specification's defaults, a Gateway.
    matches!(parent_ref.group.as_deref(), None | Some(GATEWAY_GROUP))
        && matches!(parent_ref.kind.as_deref(), None | Some("Gateway"))
        && parent_ref.name == parent.waypoint_name
        && parent_ref.namespace.as_deref().unwrap_or(route_namespace) == parent.waypoint_namespace
}
