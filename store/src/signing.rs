//! placeholder: signing
