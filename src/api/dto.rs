//! Request and response shapes of the HTTP API, and their mapping to commands. Unknown
//! fields are refused so a pipeline's typo never passes silently.

use aggregates::{BlobRef, Chunk, PutDocument};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::Config;

/// A blob in a request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlobBody {
    /// Bytes, standard base64.
    pub content_base64: String,
    /// MIME type.
    pub content_type: String,
}

/// A chunk in a request: its text and its embedding, as JSON numbers (`vector`) or as
/// base64 of little-endian float32 (`vector_b64`, exactly `DOCLEDGER_VECTOR_DIM` × 4 bytes,
/// stored and projected bit for bit); exactly one of the two.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChunkBody {
    /// Text.
    pub text: String,
    /// Embedding as JSON numbers.
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// Embedding as standard base64 of little-endian IEEE 754 float32 values.
    #[serde(default)]
    pub vector_b64: Option<String>,
}

impl ChunkBody {
    /// The embedding of chunk `i`, checked: one encoding, `dim` finite values.
    ///
    /// # Errors
    /// [`ApiError::InvalidField`] naming the chunk and the broken rule.
    fn embedding(
        vector: Option<Vec<f32>>,
        b64: Option<String>,
        i: usize,
        dim: usize,
    ) -> Result<Vec<f32>, ApiError> {
        let vector = match (vector, b64) {
            (Some(v), None) => {
                if v.len() != dim {
                    return Err(ApiError::InvalidField(format!(
                        "chunks[{i}].vector has {} values, expected {dim}",
                        v.len()
                    )));
                }
                v
            }
            (None, Some(text)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| {
                        ApiError::InvalidField(format!("chunks[{i}].vector_b64 is not base64: {e}"))
                    })?;
                if bytes.len() != dim * 4 {
                    return Err(ApiError::InvalidField(format!(
                        "chunks[{i}].vector_b64 holds {} bytes, expected {} ({dim} float32 values)",
                        bytes.len(),
                        dim * 4
                    )));
                }
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidField(format!(
                    "chunks[{i}] has both vector and vector_b64; send one"
                )))
            }
            (None, None) => {
                return Err(ApiError::InvalidField(format!(
                    "chunks[{i}] needs vector or vector_b64"
                )))
            }
        };
        if let Some(j) = vector.iter().position(|x| !x.is_finite()) {
            return Err(ApiError::InvalidField(format!(
                "chunks[{i}].vector[{j}] is not a finite 32-bit float"
            )));
        }
        Ok(vector)
    }
}

/// `PUT /v1/documents/{doc_id}` body (and a batch put line without `op`/`doc_id`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// Required title.
    pub title: String,
    /// Required source type.
    pub source_type: String,
    /// Optional tag.
    #[serde(default)]
    pub business_tag: Option<String>,
    /// Optional attributes object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
    /// Optional blob.
    #[serde(default)]
    pub blob: Option<BlobBody>,
    /// Optional chunks.
    #[serde(default)]
    pub chunks: Option<Vec<ChunkBody>>,
    /// Optional expected version.
    #[serde(default)]
    pub expected_version: Option<u64>,
}

/// A validated put: the command and the blob bytes.
pub struct ValidPut {
    /// The command.
    pub command: PutDocument,
    /// Blob bytes.
    pub blob: Option<Bytes>,
}

/// Longest blob text (base64) whose body [`PutBody::validate`] may check on an async worker:
/// decoding and hashing 64 KiB takes a few tens of microseconds, less than handing the body
/// to the blocking pool and back (a thread wake-up each way, a thread started after an idle
/// spell); a larger blob (up to `DOCLEDGER_MAX_BLOB_BYTES`) would hold up the worker's other
/// connections.
const INLINE_VALIDATION_MAX_BLOB_TEXT: usize = 64 * 1024;

impl PutBody {
    /// Whether [`PutBody::validate`] is cheap enough to run on an async worker (see
    /// [`INLINE_VALIDATION_MAX_BLOB_TEXT`]); otherwise it belongs on a blocking thread.
    pub fn validates_inline(&self) -> bool {
        self.blob
            .as_ref()
            .is_none_or(|b| b.content_base64.len() <= INLINE_VALIDATION_MAX_BLOB_TEXT)
    }

    /// Checks what needs the configuration (dimension, sizes), decodes and hashes the blob.
    /// CPU-heavy for large blobs: call from a blocking thread unless
    /// [`PutBody::validates_inline`].
    ///
    /// # Errors
    /// [`ApiError`] for the first broken rule.
    pub fn validate(self, config: &Config) -> Result<ValidPut, ApiError> {
        let chunks = self.chunks.unwrap_or_default();
        if chunks.len() > config.max_chunks {
            return Err(ApiError::InvalidField(format!(
                "{} chunks, at most {} allowed",
                chunks.len(),
                config.max_chunks
            )));
        }
        let chunks = chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(Chunk {
                    index: i as u32,
                    vector: ChunkBody::embedding(c.vector, c.vector_b64, i, config.vector_dim)?,
                    text: c.text,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let (blob_ref, blob) = match self.blob {
            None => (None, None),
            Some(b) => {
                if b.content_type.trim().is_empty() || b.content_type.len() > 255 {
                    return Err(ApiError::InvalidField(
                        "blob.content_type must be 1-255 characters".into(),
                    ));
                }
                // Decoded size is at most 3/4 of the text: refuse early without decoding.
                if b.content_base64.len() / 4 * 3 > config.max_blob_bytes + 3 {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "blob is larger than {} bytes",
                        config.max_blob_bytes
                    )));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b.content_base64.as_bytes())
                    .map_err(|e| {
                        ApiError::InvalidField(format!("blob.content_base64 is not base64: {e}"))
                    })?;
                if bytes.len() > config.max_blob_bytes {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "blob is {} bytes, at most {} allowed",
                        bytes.len(),
                        config.max_blob_bytes
                    )));
                }
                let sha256 = hex::encode(Sha256::digest(&bytes));
                (
                    Some(BlobRef {
                        sha256,
                        size: bytes.len() as u64,
                        content_type: b.content_type,
                    }),
                    Some(Bytes::from(bytes)),
                )
            }
        };
        let command = PutDocument {
            title: self.title,
            source_type: self.source_type,
            business_tag: self.business_tag,
            attributes: self.attributes.unwrap_or_default(),
            blob: blob_ref,
            chunks,
            expected_version: self.expected_version,
        };
        command.validate().map_err(ApiError::InvalidField)?;
        Ok(ValidPut { command, blob })
    }
}

/// Per-store applied versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StoresBody {
    /// MySQL.
    pub mysql: Option<u64>,
    /// Milvus.
    pub milvus: Option<u64>,
    /// S3.
    pub s3: Option<u64>,
}

/// Answer to a put or delete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CommandResponse {
    /// The document.
    pub doc_id: String,
    /// Its version after the command.
    pub version: u64,
    /// Position of the command's last event (null when nothing was appended).
    pub log_position: Option<i64>,
    /// Nothing changed.
    pub unchanged: bool,
    /// Applied versions.
    pub stores: StoresBody,
    /// All three stores hold `version`.
    pub consistent: bool,
}

/// Query options of put and delete.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// `accepted` (default) or `applied`.
    #[serde(default)]
    pub consistency: Option<String>,
    /// Wait at most this long for `applied`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// snake_case code: invalid_json, invalid_doc_id, invalid_field, invalid_query,
    /// invalid_idempotency_key, unauthorized, not_found, version_conflict,
    /// payload_too_large, request_timeout, rebuild_running, unavailable.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_with_blob_text(len: Option<usize>) -> PutBody {
        let mut body = serde_json::json!({"title": "t", "source_type": "s"});
        if let Some(len) = len {
            body["blob"] =
                serde_json::json!({"content_base64": "A".repeat(len), "content_type": "a/b"});
        }
        serde_json::from_value(body).expect("a put body")
    }

    #[test]
    fn bodies_with_up_to_64_kib_of_blob_text_are_validated_in_place() {
        assert!(body_with_blob_text(None).validates_inline());
        assert!(body_with_blob_text(Some(0)).validates_inline());
        assert!(body_with_blob_text(Some(64 * 1024)).validates_inline());
        assert!(!body_with_blob_text(Some(64 * 1024 + 1)).validates_inline());
        assert!(!body_with_blob_text(Some(1 << 20)).validates_inline());
    }
}
