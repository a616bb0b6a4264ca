//! The compression of a file in a Nix binary cache: the narinfo's `Compression:` field and
//! the file name suffix Nix gives such a file (`nar/<file hash>.nar.xz`, …).
//!
//! The names are Nix's (`libutil/compression.cc`: `none`, `xz`, `bzip2`, `zstd`, `br`, and
//! the libarchive filters); the suffixes are those of Nix's `BinaryCacheStore::addToStore`.
//! Nix reads a narinfo without a Compression field (or an empty one) as `bzip2`.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// How the file a narinfo's `URL` names is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Xz,
    Bzip2,
    Zstd,
    /// Brotli (`br`).
    Brotli,
    Gzip,
    Lzip,
    Lz4,
    Lzma,
    Lzop,
    Grzip,
    Lrzip,
    /// Unix `compress` (`.Z`).
    Compress,
}

impl Compression {
    /// Every kind, in the order of [`Compression::name`]'s table.
    pub const ALL: [Compression; 13] = [
        Compression::None,
        Compression::Xz,
        Compression::Bzip2,
        Compression::Zstd,
        Compression::Brotli,
        Compression::Gzip,
        Compression::Lzip,
        Compression::Lz4,
        Compression::Lzma,
        Compression::Lzop,
        Compression::Grzip,
        Compression::Lrzip,
        Compression::Compress,
    ];

    /// What Nix calls a file compressed with this when a narinfo has no Compression field.
    pub const NARINFO_DEFAULT: Compression = Compression::Bzip2;

    /// The narinfo `Compression:` value.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
            Compression::Zstd => "zstd",
            Compression::Brotli => "br",
            Compression::Gzip => "gzip",
            Compression::Lzip => "lzip",
            Compression::Lz4 => "lz4",
            Compression::Lzma => "lzma",
            Compression::Lzop => "lzop",
            Compression::Grzip => "grzip",
            Compression::Lrzip => "lrzip",
            Compression::Compress => "compress",
        }
    }

    /// The kind a narinfo `Compression:` value names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// What Nix appends to `.nar` in the file's name (empty for kinds it gives none).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Xz => ".xz",
            Compression::Bzip2 => ".bz2",
            Compression::Zstd => ".zst",
            Compression::Lzip => ".lzip",
            Compression::Lz4 => ".lz4",
            Compression::Brotli => ".br",
            _ => "",
        }
    }

    /// Splits `<stem>.nar<extension>` for one of `kinds`; `None` when no kind's suffix fits.
    pub fn split_file_name<'a>(
        name: &'a str,
        kinds: &[Compression],
    ) -> Option<(&'a str, Compression)> {
        kinds.iter().find_map(|&c| {
            let rest = name.strip_suffix(c.extension())?;
            Some((rest.strip_suffix(".nar")?, c))
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::from_name(s).ok_or_else(|| Error::UnknownCompression { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for c in Compression::ALL {
            assert_eq!(c.name().parse::<Compression>().unwrap(), c);
            assert_eq!(c.to_string(), c.name());
        }
        let err = "lz5".parse::<Compression>().unwrap_err();
        assert!(err.to_string().contains("lz5"), "{err}");
        assert!("XZ".parse::<Compression>().is_err());
        assert!("".parse::<Compression>().is_err());
    }

    #[test]
    fn file_names_split_like_nix_names_them() {
        let kinds = [Compression::Xz, Compression::Zstd];
        assert_eq!(
            Compression::split_file_name("abc.nar.xz", &kinds),
            Some(("abc", Compression::Xz))
        );
        assert_eq!(
            Compression::split_file_name("abc.nar.zst", &kinds),
            Some(("abc", Compression::Zstd))
        );
        assert_eq!(Compression::split_file_name("abc.nar", &kinds), None);
        assert_eq!(Compression::split_file_name("abc.xz", &kinds), None);
        assert_eq!(
            Compression::split_file_name("abc.nar", &[Compression::None]),
            Some(("abc", Compression::None))
        );
        assert_eq!(Compression::Bzip2.extension(), ".bz2");
    }
}
