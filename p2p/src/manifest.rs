//! placeholder: manifest (being written)
