//! What the agent tells operators about itself. For now a status document
//! the agent rewrites in its run directory and `meshctl status` reads.
pub mod status;
