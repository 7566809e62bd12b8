//! Every label and annotation key nodemesh reads, in one place.

/// Namespace label that puts a namespace in the mesh (value [`ENABLED`]),
/// and pod label that takes one pod out of it (value [`DISABLED`]).
pub const DATAPLANE_LABEL: &str = "nodemesh.io/dataplane";
pub const ENABLED: &str = "enabled";
pub const DISABLED: &str = "disabled";

/// Local mode: the pod's network namespace file (e.g. `/run/netns/x`). In
/// Kubernetes the CNI plugin's record plays this part.
pub const NETNS_ANNOTATION: &str = "nodemesh.io/netns";
/// Local mode: the pod's cgroup v2 directory.
pub const CGROUP_ANNOTATION: &str = "nodemesh.io/cgroup";
