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

    /// The stored type names of the events that can carry a change for this store, derived
    /// from [`DocumentEvent::change_for`] (so a reader that only reads these types sees every
    /// change of the store, and nothing here can drift from that mapping).
    pub fn event_types(self) -> Vec<&'static str> {
        let mut types: Vec<&'static str> = one_of_each_shape()
            .iter()
            .filter(|e| e.change_for(self).is_some())
            .map(DocumentEvent::type_name)
            .collect();
        types.sort_unstable();
        types.dedup();
        types
    }
}

/// One event of every type and of every shape `change_for` tells apart.
fn one_of_each_shape() -> [DocumentEvent; 8] {
    use DocumentEvent as E;
    let row = |blob_sha256: Option<String>| E::RowInserted {
        version: 1,
        title: String::new(),
        source_type: String::new(),
        business_tag: None,
        attributes: serde_json::Map::new(),
        blob_size: blob_sha256.as_ref().map(|_| 0),
        blob_sha256,
        chunk_count: 0,
    };
    [
        E::BlobStored {
            version: 1,
            sha256: String::new(),
            size: 0,
            content_type: String::new(),
        },
        row(None),
        row(Some(String::new())),
        E::VectorsIndexed {
            version: 1,
            chunks: Vec::new(),
        },
        E::DocumentDeleted { version: 1 },
        E::DocumentErased { version: 1 },
        E::ContentRemoved {
            version: 1,
            cause: crate::document::RemovalCause::Retention,
            removed: Vec::new(),
        },
        E::CompensationRequested {
            version: 1,
            target: String::new(),
            reason: String::new(),
        },
    ]
}

#[cfg(test)]
mod event_type_tests {
    use super::*;
    use crate::document::{CONTENT_EVENT_TYPES, EVENT_TYPES};

    #[test]
    fn every_event_type_has_a_shape_and_each_store_reads_its_types() {
        let shapes: Vec<&str> = one_of_each_shape().iter().map(|e| e.type_name()).collect();
        for t in EVENT_TYPES {
            assert!(shapes.contains(&t), "{t} has no sample shape");
        }
        for e in one_of_each_shape() {
            assert_eq!(
                e.has_content(),
                CONTENT_EVENT_TYPES.contains(&e.type_name()),
                "{} in CONTENT_EVENT_TYPES iff it holds content",
                e.type_name()
            );
        }
        assert_eq!(
            StoreKind::Mysql.event_types(),
            ["DocumentDeleted", "DocumentErased", "RowInserted"]
        );
        assert_eq!(
            StoreKind::Milvus.event_types(),
            ["DocumentDeleted", "DocumentErased", "VectorsIndexed"]
        );
        assert_eq!(
            StoreKind::S3.event_types(),
            [
                "BlobStored",
                "DocumentDeleted",
                "DocumentErased",
                "RowInserted"
            ]
        );
    }
}

/// What one store must do for one document at one version.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreChange<'a> {
    /// Hold exactly the state carried by this event.
    Upsert(&'a DocumentEvent),
    /// Hold nothing for this document.
    Remove(Version),
    /// Hold nothing for this document and keep nothing recoverable of it (an erasure).
    Erase(Version),
}

impl StoreChange<'_> {
    /// The version the store holds once the change is applied.
    pub fn version(&self) -> Version {
        match self {
            StoreChange::Upsert(e) => e.version(),
            StoreChange::Remove(v) | StoreChange::Erase(v) => *v,
        }
    }
}

impl DocumentEvent {
    /// The change this event asks of `store`, if any.
    pub fn change_for(&self, store: StoreKind) -> Option<StoreChange<'_>> {
        use DocumentEvent as E;
        match (store, self) {
            (_, E::DocumentDeleted { version }) => Some(StoreChange::Remove(*version)),
            (_, E::DocumentErased { version }) => Some(StoreChange::Erase(*version)),
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
