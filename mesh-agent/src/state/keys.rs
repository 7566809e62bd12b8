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

/// Service or Namespace label naming the waypoint its traffic goes through
/// (Istio's `istio.io/use-waypoint`). The Service's label wins over its
/// namespace's; the value `none` on a Service opts it out.
pub const USE_WAYPOINT_LABEL: &str = "nodemesh.io/use-waypoint";
/// Beside [`USE_WAYPOINT_LABEL`]: the waypoint's namespace when it is not
/// the Service's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "nodemesh.io/use-waypoint-namespace";
/// Pod label marking a waypoint's pods (`gateway.networking.k8s.io/
/// gateway-name`, as Gateway API implementations label a Gateway's pods).
/// Waypoint pods serve HBONE themselves, so they are never enrolled.
pub const WAYPOINT_POD_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
