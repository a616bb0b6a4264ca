//! The NAR format (Nix ARchive): the canonical serialisation of a store object that NAR hashes
//! and sizes in narinfos are computed over, as written by `nix-store --dump`.
//!
//! Wire format: the magic string `nix-archive-1`, then one node. Every token is a *string*: a
//! u64 little-endian length, the bytes, then zeros up to a multiple of 8. File contents are
//! one such string too, which is what lets every part of this module stream them.
//!
//! ```text
//! node      = "(" "type" ( regular | symlink | directory ) ")"
//! regular   = "regular" [ "executable" "" ] "contents" <bytes>
//! symlink   = "symlink" "target" <target>
//! directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//!
//! Directory entries are sorted bytewise by name with no duplicates; a name is never empty,
//! `.`, `..`, and never contains `/` or NUL. Nothing else (times, owners, other mode bits) is
//! recorded: a regular file is executable iff its owner-execute bit is set.
//!
//! # Layout
//! - `encode`: [`NarEncoder`] (a pull-based `Read` over a path, seekable by offset for HTTP
//!   Range requests), [`dump`] and [`nar_size`].
//! - `parse`: [`NarValidator`] (push-based, chunk by chunk) and [`verify`].
//! - `restore`: [`restore()`] — unpacking a NAR into the file system.

mod encode;
mod parse;
mod restore;

pub use encode::{NarEncoder, dump, nar_size};
pub use parse::{NarSummary, NarValidator, verify};
pub use restore::restore;

/// The first string of every NAR.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// Longest entry name accepted when parsing. File systems cap names at 255 bytes; this leaves
/// room for platforms that count characters, while bounding a parser's memory.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest symlink target accepted when parsing (Linux's `PATH_MAX`).
pub const MAX_TARGET_LEN: usize = 4096;
/// Deepest directory nesting accepted when parsing: deeper trees cannot be addressed by
/// path on Linux anyway, and the bound keeps a parser's per-level state small.
pub const MAX_DEPTH: usize = 2048;

/// Buffer size for reading file contents and NAR streams: large enough that a syscall
/// moves a meaningful amount of data, small enough to stay in L2.
pub(crate) const CHUNK: usize = 256 * 1024;

/// Zeros to pad a string of length `len` up to a multiple of 8.
pub(crate) fn padding(len: u64) -> usize {
    // Cast is fine: the result is always < 8.
    ((8 - (len % 8)) % 8) as usize
}

/// Appends a NAR string (length, bytes, zero padding) to `out`.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(&[0u8; 8][..padding(s.len() as u64)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_length_prefixed_and_zero_padded_to_eight() {
        let mut out = Vec::new();
        put_str(&mut out, b"");
        assert_eq!(out, [0u8; 8]);
        out.clear();
        put_str(&mut out, b"abcdefgh");
        assert_eq!(out.len(), 16);
        out.clear();
        put_str(&mut out, b"(");
        assert_eq!(out, [1, 0, 0, 0, 0, 0, 0, 0, b'(', 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            (0..=9).map(padding).collect::<Vec<_>>(),
            [0, 7, 6, 5, 4, 3, 2, 1, 0, 7]
        );
    }
}
