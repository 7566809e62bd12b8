//! Peer-authentication mode: may plaintext reach a namespace's pods?
use super::{ROOT_NAMESPACE, api::Mode};

/// A PeerAuthentication object, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuth {
    pub namespace: String,
    pub name: String,
    pub mode: Mode,
}

/// Where a namespace's mode came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeSource {
    /// A PeerAuthentication in the namespace itself (`namespace/name`).
    Namespace(String),
    /// The mesh-wide one in [`ROOT_NAMESPACE`].
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
            Self::Default => f.write_str("default"),
        }
    }
}

/// The mode for `namespace`: its own PeerAuthentication, else the mesh-wide
/// one, else PERMISSIVE. Several in one place: the first by name wins, so the
/// answer never depends on file order.
pub fn mode_for(all: &[PeerAuth], namespace: &str) -> (Mode, ModeSource) {
    let first_in = |ns: &str| {
        all.iter()
            .filter(|p| p.namespace == ns)
            .min_by(|a, b| a.name.cmp(&b.name))
    };
    if let Some(p) = first_in(namespace) {
        return (
            p.mode,
            ModeSource::Namespace(format!("{}/{}", p.namespace, p.name)),
        );
    }
    if let Some(p) = first_in(ROOT_NAMESPACE) {
        return (
            p.mode,
            ModeSource::MeshWide(format!("{}/{}", p.namespace, p.name)),
        );
    }
    (Mode::Permissive, ModeSource::Default)
}
