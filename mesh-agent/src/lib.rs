//! The nodemesh agent library. One module per stage of a connection's path;
//! the binaries in `src/bin` are thin shells around it.
pub mod admin;
pub mod capture;
pub mod flows;
pub mod identity;
pub mod policy;
pub mod proxy;
pub mod state;
pub mod tunnel;
