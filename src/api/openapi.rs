//! The OpenAPI description, generated from the handlers' annotations and the DTO types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::dto::{
    BlobBody, ChunkBody, CommandResponse, ErrorBody, ErrorDetail, PutBody, StoresBody,
};
use super::{documents, ops};
use crate::actors::projector::{PartitionStatus, StoreStatus};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "docledger",
        description = "Keeps a RAG knowledge base's S3 blob, MySQL row and Milvus vectors consistent through one event log. Bearer tokens are required on /v1 when DOCLEDGER_API_TOKENS is set."
    ),
    paths(
        documents::put,
        documents::delete,
        documents::erase,
        documents::get,
        documents::events,
        documents::batch,
        documents::list,
        documents::retry,
        documents::compensations,
        ops::projections,
        ops::projection_action,
        ops::healthz,
        ops::readyz,
        ops::metrics
    ),
    components(schemas(
        PutBody,
        BlobBody,
        ChunkBody,
        CommandResponse,
        StoresBody,
        ErrorBody,
        ErrorDetail,
        StoreStatus,
        PartitionStatus,
        crate::rebuild::RebuildStatus
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
