//! What the agent tells operators about itself: the status document in its
//! run directory, the admin API, Prometheus metrics, `meshctl why`, and
//! `meshctl check`.
pub mod api;
pub mod check;
pub mod client;
pub mod metrics;
pub mod status;
pub mod why;
