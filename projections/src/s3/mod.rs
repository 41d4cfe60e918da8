//! s3 sink
