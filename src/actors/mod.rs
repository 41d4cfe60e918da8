//! The actors: one `DocumentActor` per document (decide → append → apply, one message at a
//! time), the registry that routes to them and passivates idle ones, the projectors and the
//! consistency tracker.

pub mod document;
pub mod projector;
pub mod registry;
pub mod tracker;
