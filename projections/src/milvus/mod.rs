//! milvus sink
