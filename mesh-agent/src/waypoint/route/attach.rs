//! Which routes a parent serves: a route attaches when one of its
//! `parentRefs` names the parent's Service (GAMMA) or the waypoint Gateway
//! itself. Everything else belongs to another parent and is ignored, not
//! reported: this waypoint cannot judge another parent's routes.
//!
//! `sectionName` is not compared (the parent carries no port or listener
//! names), and a Gateway `port` neither, as a waypoint has the one listener.
//!
//! An HTTPRoute and a GRPCRoute attached to one parent with overlapping
//! hostnames conflict: the GRPCRoute specification says exactly one of
//! the two is accepted, the oldest, then the first by `namespace/name`, and
//! the other is rejected (here: a [`RouteProblem`] at `spec.hostnames`).
//! So a host group of the table never mixes the two kinds, and neither
//! kind's precedence has to be weighed against the other's.
use super::{Parent, RouteProblem, compile::CompiledRoute, matching::hostnames_overlap};
use crate::state::gateway::{ParentRef, RouteMeta};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The namespace of a route written without one.
pub(super) const DEFAULT_NAMESPACE: &str = "default";

pub(super) fn attaches(meta: &RouteMeta, parent_refs: &[ParentRef], parent: &Parent) -> bool {
    let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    parent_refs.iter().any(|parent_ref| {
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

/// The routes left once every conflict between an HTTPRoute and a GRPCRoute
/// is settled in favour of the senior one; each loser is reported.
pub(super) fn without_conflicts(
    routes: Vec<CompiledRoute>,
    problems: &mut Vec<RouteProblem>,
) -> Vec<CompiledRoute> {
    let mut by_seniority: Vec<usize> = (0..routes.len()).collect();
    by_seniority.sort_by(|&a, &b| routes[a].seniority().cmp(&routes[b].seniority()));
    let mut accepted = vec![false; routes.len()];
    for i in by_seniority {
        let route = &routes[i];
        let winner = (0..routes.len()).find(|&j| {
            accepted[j]
                && routes[j].kind != route.kind
                && hostnames_overlap(&routes[j].hostnames, &route.hostnames)
        });
        match winner {
            None => accepted[i] = true,
            Some(j) => problems.push(RouteProblem {
                kind: route.kind,
                route: route.key.clone(),
                field: "spec.hostnames".to_owned(),
                message: format!(
                    "{} {} is attached to the same parent with overlapping hostnames and is older (or first by namespace/name), so this route is not accepted: an HTTPRoute and a GRPCRoute cannot share a hostname; give them disjoint hostnames or attach them to different parents",
                    routes[j].kind, routes[j].key
                ),
            }),
        }
    }
    routes
        .into_iter()
        .zip(accepted)
        .filter_map(|(route, accepted)| accepted.then_some(route))
        .collect()
}
