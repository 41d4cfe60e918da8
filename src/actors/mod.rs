//! The actors: one `DocumentActor` per document (decide → append → apply, one message at a
//! time), the registry that routes to them and passivates idle ones, the projectors, the
//! consistency tracker and the compensator.

pub mod compensator;
pub mod control;
pub mod document;
pub mod history;
pub mod lease;
pub mod projector;
pub mod registry;
pub mod tracker;
