//! The waypoint role: an L7 proxy for the Services (or namespaces) labelled
//! `nodemesh.io/use-waypoint`. It terminates HBONE with its own identity,
//! speaks HTTP/1.1 and HTTP/2 to the client, routes each request by the
//! Gateway API routes attached to the Service, and forwards it over its own
//! HBONE stream to the chosen endpoint.
//!
//! - [`route`]: HTTPRoute compilation (with per-field problems), matching
//!   with the specification's precedence, filters, weighted backends.
pub mod route;
