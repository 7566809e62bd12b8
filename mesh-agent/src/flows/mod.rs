//! Flow records: what the mesh did with every captured connection, and why.
//!
//! - [`record`] — the record itself, in the stable JSON shape the admin API
//!   serves and `meshctl` reads;
//! - [`store`] — open flows plus a bounded ring of recent closed ones, and a
//!   live feed for `meshctl flows --follow`;
//! - [`filter`] — the one filter both the admin API and `meshctl` apply.
pub mod filter;
pub mod record;
pub mod render;
pub mod store;

pub use filter::Filter;
pub use record::FlowRecord;
pub use store::{FlowStore, FlowSubscriber, Progress};
