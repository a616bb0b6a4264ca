//! placeholder: verify (being written)
