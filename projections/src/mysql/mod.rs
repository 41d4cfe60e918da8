//! mysql sink
