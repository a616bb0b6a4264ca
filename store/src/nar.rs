//! placeholder: nar
