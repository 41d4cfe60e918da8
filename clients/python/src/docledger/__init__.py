"""docledger's Python client: puts, deletes, erasures, reads and NDJSON batches with
automatic idempotency keys and retries (`Client`, `AsyncClient`), a full-sync mode that
deletes what a run did not send, and LangChain / LlamaIndex vector stores
(`docledger.langchain`, `docledger.llama_index`, with the `langchain` / `llama-index`
extras)."""

from ._core import RetryPolicy
from .aio import AsyncClient
from .client import Client
from .errors import (
    ApiError,
    DocledgerError,
    InvalidDocId,
    InvalidField,
    InvalidIdempotencyKey,
    InvalidJson,
    InvalidQuery,
    NotFound,
    PayloadTooLarge,
    RebuildRunning,
    RequestTimeout,
    SyncFailed,
    TransportError,
    Unauthorized,
    Unavailable,
    VersionConflict,
)
from .models import (
    BatchResult,
    Blob,
    BlobInfo,
    Chunk,
    CommandResult,
    Compensation,
    Delete,
    Document,
    DocumentPage,
    Erase,
    Event,
    ListedDocument,
    Projection,
    Put,
    Stores,
    SyncReport,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "BatchResult",
    "Blob",
    "BlobInfo",
    "Chunk",
    "Client",
    "CommandResult",
    "Compensation",
    "Delete",
    "DocledgerError",
    "Document",
    "DocumentPage",
    "Erase",
    "Event",
    "InvalidDocId",
    "InvalidField",
    "InvalidIdempotencyKey",
    "InvalidJson",
    "InvalidQuery",
    "ListedDocument",
    "NotFound",
    "PayloadTooLarge",
    "Projection",
    "Put",
    "RebuildRunning",
    "RequestTimeout",
    "RetryPolicy",
    "Stores",
    "SyncFailed",
    "SyncReport",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "VersionConflict",
]
