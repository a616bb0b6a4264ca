//! placeholder: db
