//! placeholder: node (being written)
