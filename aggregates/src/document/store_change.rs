//! Which event carries which store's state: the one place that maps the domain's events onto
//! the three stores. Every accepted put or delete yields exactly one change per store at its
//! version, so "store X holds version v" is well defined for every store and version.

use crate::document::event::DocumentEvent;
use crate::envelope::Version;

/// The three derived stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// The catalogue row.
    Mysql,
    /// The chunk vectors.
    Milvus,
    /// The raw blob.
    S3,
}

impl StoreKind {
    /// Every store, in a fixed order.
    pub const ALL: [StoreKind; 3] = [StoreKind::Mysql, StoreKind::Milvus, StoreKind::S3];

    /// The store's name in the API, metrics and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Mysql => "mysql",
            StoreKind::Milvus => "milvus",
            StoreKind::S3 => "s3",
        }
    }

    /// Parses a store name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What one store must do for one document at one version.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreChange<'a> {
    /// Hold exactly the state carried by this event.
    Upsert(&'a DocumentEvent),
    /// Hold nothing for this document.
    Remove(Version),
}

impl StoreChange<'_> {
    /// The version the store holds once the change is applied.
    pub fn version(&self) -> Version {
        match self {
            StoreChange::Upsert(e) => e.version(),
            StoreChange::Remove(v) => *v,
        }
    }
}

impl DocumentEvent {
    /// The change this event asks of `store`, if any.
    pub fn change_for(&self, store: StoreKind) -> Option<StoreChange<'_>> {
        use DocumentEvent as E;
        match (store, self) {
            (_, E::DocumentDeleted { version }) => Some(StoreChange::Remove(*version)),
            (StoreKind::Mysql, E::RowInserted { .. })
            | (StoreKind::Milvus, E::VectorsIndexed { .. })
            | (StoreKind::S3, E::BlobStored { .. }) => Some(StoreChange::Upsert(self)),
            // A version without blob removes the previous version's object.
            (
                StoreKind::S3,
                E::RowInserted {
                    version,
                    blob_sha256: None,
                    ..
                },
            ) => Some(StoreChange::Remove(*version)),
            _ => None,
        }
    }
}
