//! Test harness (being written)
