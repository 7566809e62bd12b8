//! The nodemesh agent library.
//!
//! Three layers, imports only downward:
//! - roles: [`node`] (per-pod enrolment) and [`waypoint`] (L7), composing
//! - stages of a connection's path: [`capture`], [`proxy`], [`tunnel`],
//!   [`identity`], [`policy`], [`flows`], [`admin`], which read
//! - the model: [`state`] (and `mesh-common` for kernel types).
//!
//! [`crd`] generates the CustomResourceDefinitions from the policy and model
//! types (above both; only the `mesh-agent crds` command uses it).
//!
//! The binaries in `src/bin` are thin shells around it.
pub mod admin;
pub mod capture;
pub mod crd;
pub mod flows;
pub mod identity;
pub mod node;
pub mod policy;
pub mod proxy;
pub mod state;
pub mod tunnel;
pub mod waypoint;
