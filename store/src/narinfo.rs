//! placeholder: narinfo
