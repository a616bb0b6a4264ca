//! placeholder: tracker (being written)
