//! What the agent tells operators about itself: the status document in its
//! run directory, the admin API, Prometheus metrics, and `meshctl why`.
pub mod api;
pub mod client;
pub mod metrics;
pub mod status;
pub mod why;
