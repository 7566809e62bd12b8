//! Peer-authentication mode: may plaintext reach a pod?
//!
//! Precedence follows Istio's PeerAuthentication: a workload-level object
//! (with a selector) beats the namespace-wide one, which beats the
//! mesh-wide one in a root namespace; a mode of UNSET inherits from the next
//! level; with none at all the mode is PERMISSIVE.
use std::collections::BTreeMap;

use super::{MESH_ROOTS, api::Mode};
use crate::state::PodInfo;

/// A PeerAuthentication object, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuth {
    pub namespace: String,
    pub name: String,
    /// Set for a workload-level object: the labels of the pods (of its
    /// namespace) it applies to.
    pub selector: Option<BTreeMap<String, String>>,
    /// `None`: UNSET, inherit from the next level.
    pub mode: Option<Mode>,
}

/// Where a pod's mode came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeSource {
    /// A PeerAuthentication in the pod's own namespace (`namespace/name`),
    /// namespace-wide or selecting the pod.
    Namespace(String),
    /// The mesh-wide one in a root namespace.
    MeshWide(String),
    /// None declared: PERMISSIVE.
    Default,
}

/// As refusals and `meshctl why` name it.
impl std::fmt::Display for ModeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Namespace(p) => write!(f, "PeerAuthentication {p}"),
            Self::MeshWide(p) => write!(f, "mesh-wide PeerAuthentication {p}"),
            Self::Default => write!(f, "default"),
        }
    }
}

/// The mode for `pod`. Several objects at one level: the first by name
/// wins, so the answer never depends on file order.
pub fn mode_for(all: &[PeerAuth], pod: &PodInfo) -> (Mode, ModeSource) {
    let first = |wanted: &dyn Fn(&PeerAuth) -> bool| {
        all.iter()
            .filter(|p| p.mode.is_some() && wanted(p))
            .min_by(|a, b| a.name.cmp(&b.name))
            .and_then(|p| Some((p.mode?, format!("{}/{}", p.namespace, p.name))))
    };
    let selects = |p: &PeerAuth| {
        p.selector
            .as_ref()
            .is_some_and(|labels| labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
    };
    if let Some((mode, id)) = first(&|p| p.namespace == pod.namespace && selects(p)) {
        return (mode, ModeSource::Namespace(id));
    }
    if let Some((mode, id)) = first(&|p| p.namespace == pod.namespace && p.selector.is_none()) {
        return (mode, ModeSource::Namespace(id));
    }
    for root in MESH_ROOTS {
        if let Some((mode, id)) = first(&|p| p.namespace == root && p.selector.is_none()) {
            return (mode, ModeSource::MeshWide(id));
        }
    }
    (Mode::Permissive, ModeSource::Default)
}
