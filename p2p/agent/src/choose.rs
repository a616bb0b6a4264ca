//! Which of a NAR's files the agent advertises to Nix: pure, no I/O, the measurements passed
//! in. Nix decodes while it downloads, so a file's expected end-to-end time is the slower of
//! its transfer (file bytes / the link's goodput) and its decoding (NAR bytes / the client's
//! decoding speed of that compression). On a very fast link the uncompressed NAR wins (no
//! decoding at all), on a slow one the smallest file, in between usually the server's own
//! (zstd). Without a goodput measured yet the agent has no basis to second-guess the server.

use serde::Deserialize;
use tailcache_p2p::files::{NarFile, NarFiles};
use tailcache_store::Compression;

/// `[agent] encoding`: which file the narinfos the agent serves name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The fastest end to end on this link, by [`choose`].
    #[default]
    Auto,
    /// The server's narinfo as it is.
    Server,
    /// The uncompressed NAR.
    None,
    /// The zstd file, when the server has one.
    Zstd,
    /// The xz file, when the server has one.
    Xz,
}

impl Encoding {
    /// The compression a pinned encoding names (`None` for `auto` and `server`).
    pub fn pinned(self) -> Option<Compression> {
        match self {
            Encoding::Auto | Encoding::Server => None,
            Encoding::None => Some(Compression::None),
            Encoding::Zstd => Some(Compression::Zstd),
            Encoding::Xz => Some(Compression::Xz),
        }
    }
}

/// How fast this client decodes each compression, in NAR bytes per second of one core.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DecodeSpeeds {
    pub zstd: Option<f64>,
    pub xz: Option<f64>,
}

impl DecodeSpeeds {
    /// The speed of `c`; unbounded for the uncompressed NAR, unknown for kinds never measured.
    pub fn of(&self, c: Compression) -> Option<f64> {
        match c {
            Compression::None => Some(f64::INFINITY),
            Compression::Zstd => self.zstd,
            Compression::Xz => self.xz,
            _ => None,
        }
    }
}

/// What the agent has measured so far. Goodputs are NAR-file bytes per second of wall time
/// while downloading, `None` until measured, one per way a file arrives: a compressed file
/// comes in verified pieces from peers and the server, the uncompressed NAR from the server
/// alone (at the pace Nix writes it) — on a slow link to the server next to a fast peer the
/// two differ. Either stands in for the other until that one is measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// Of compressed files fetched in pieces.
    pub goodput: Option<f64>,
    /// Of uncompressed NARs proxied from the server.
    pub uncompressed_goodput: Option<f64>,
    pub decode: DecodeSpeeds,
}

impl Measured {
    /// The goodput a file in compression `c` can expect.
    pub fn goodput_of(&self, c: Compression) -> Option<f64> {
        let positive = |g: &f64| *g > 0.0;
        let (own, other) = match c {
            Compression::None => (self.uncompressed_goodput, self.goodput),
            _ => (self.goodput, self.uncompressed_goodput),
        };
        own.filter(positive).or(other.filter(positive))
    }
}

/// Expected seconds from the first byte requested to the NAR decoded, for `file` of a NAR of
/// `nar_size` bytes; `None` when a speed it needs is not known.
pub fn expected_seconds(file: &NarFile, nar_size: u64, measured: &Measured) -> Option<f64> {
    let goodput = measured.goodput_of(file.compression)?;
    let decode = measured.decode.of(file.compression).filter(|d| *d > 0.0)?;
    let transfer = file.file_size as f64 / goodput;
    let decoding = nar_size as f64 / decode;
    Some(transfer.max(decoding))
}

/// Whether [`choose`] may pick another file than the server's under `encoding` with what is
/// `measured`: when not, the agent need not ask for the list of files at all.
pub fn may_rewrite(encoding: Encoding, measured: &Measured) -> bool {
    match encoding {
        Encoding::Server => false,
        Encoding::Auto => measured.goodput_of(Compression::None).is_some(),
        Encoding::None | Encoding::Zstd | Encoding::Xz => true,
    }
}

/// The file to advertise instead of the one the server's narinfo names (in `server`
/// compression), or `None` to pass the narinfo on as it is. A pinned encoding the server has
/// no file for, like an `auto` without measurements, keeps the server's choice; so do ties.
pub fn choose<'a>(
    encoding: Encoding,
    files: &'a NarFiles,
    server: Compression,
    measured: &Measured,
) -> Option<&'a NarFile> {
    let chosen = match encoding {
        Encoding::Server => return None,
        Encoding::Auto => fastest(files, server, measured)?,
        pinned => files.get(pinned.pinned()?)?,
    };
    (chosen.compression != server).then_some(chosen)
}

/// The file with the least expected time; the server's own wins ties and stands when it
/// cannot be estimated.
fn fastest<'a>(
    files: &'a NarFiles,
    server: Compression,
    measured: &Measured,
) -> Option<&'a NarFile> {
    let time = |f: &NarFile| expected_seconds(f, files.nar_size, measured);
    let current = files.get(server)?;
    let mut best = (current, time(current)?);
    for f in &files.files {
        if let Some(t) = time(f)
            && t < best.1
        {
            best = (f, t);
        }
    }
    Some(best.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tailcache_store::Sha256Hash;

    const MB: f64 = 1e6;

    /// A 100 MB NAR: uncompressed, zstd at 40%, xz at 33% (the proportions measured here on
    /// a real closure: 518 MB of zstd and 426 MB of xz for 1.46 GB of NAR).
    fn files(with_xz: bool) -> NarFiles {
        let nar_hash = Sha256Hash::digest(b"nar");
        let file = |c: Compression, size: u64| NarFile {
            url: format!(
                "nar/{}.nar{}",
                Sha256Hash::digest(c.name().as_bytes()).to_nix32(),
                c.extension()
            ),
            compression: c,
            file_hash: Sha256Hash::digest(c.name().as_bytes()),
            file_size: size,
        };
        let mut files = vec![
            file(Compression::Zstd, 40_000_000),
            file(Compression::None, 100_000_000),
        ];
        if with_xz {
            files.insert(1, file(Compression::Xz, 33_000_000));
        }
        NarFiles {
            nar_hash,
            nar_size: 100_000_000,
            files,
        }
    }

    /// zstd and xz as published for one core: ~800 and ~80 MB/s.
    fn measured(goodput: f64) -> Measured {
        Measured {
            goodput: Some(goodput),
            uncompressed_goodput: None,
            decode: DecodeSpeeds {
                zstd: Some(800.0 * MB),
                xz: Some(80.0 * MB),
            },
        }
    }

    fn auto(files: &NarFiles, m: &Measured) -> Option<Compression> {
        choose(Encoding::Auto, files, Compression::Zstd, m).map(|f| f.compression)
    }

    #[test]
    fn a_very_fast_link_gets_the_uncompressed_nar() {
        // 10 Gbit/s: 100 MB in 0.08 s uncompressed, while zstd takes 0.125 s to decode.
        assert_eq!(
            auto(&files(true), &measured(1250.0 * MB)),
            Some(Compression::None)
        );
    }

    #[test]
    fn a_slow_link_gets_the_smallest_file() {
        // 20 Mbit/s: xz's 33 MB take 13 s, zstd's 40 MB 16 s; decoding xz takes 1.25 s.
        assert_eq!(
            auto(&files(true), &measured(2.5 * MB)),
            Some(Compression::Xz)
        );
        // …unless the server has no xz file: then its zstd file stands.
        assert_eq!(auto(&files(false), &measured(2.5 * MB)), None);
    }

    #[test]
    fn in_between_the_servers_file_stands() {
        // 1 Gbit/s: zstd 0.32 s on the wire, none 0.8 s, xz decodes in 1.25 s.
        assert_eq!(auto(&files(true), &measured(125.0 * MB)), None);
        // A slow decoder makes xz lose even on a slowish link: 100 Mbit/s, xz at 8 MB/s.
        let mut m = measured(12.5 * MB);
        m.decode.xz = Some(8.0 * MB);
        assert_eq!(auto(&files(true), &m), None);
        m.decode.xz = Some(80.0 * MB);
        assert_eq!(auto(&files(true), &m), Some(Compression::Xz));
    }

    #[test]
    fn the_uncompressed_nar_is_judged_by_the_servers_own_goodput() {
        // A fast peer, a slow server: pieces arrive at 10 Gbit/s, but the uncompressed NAR
        // comes from the server alone, at 20 Mbit/s once measured.
        let mut m = measured(1250.0 * MB);
        assert_eq!(auto(&files(true), &m), Some(Compression::None));
        m.uncompressed_goodput = Some(2.5 * MB);
        assert_eq!(auto(&files(true), &m), None);
        // Measured only that way (the agent has fetched nothing but uncompressed NARs): it
        // stands in for the pieces too.
        m.goodput = None;
        assert_eq!(m.goodput_of(Compression::Xz), Some(2.5 * MB));
        assert_eq!(auto(&files(true), &m), Some(Compression::Xz));
    }

    #[test]
    fn without_a_goodput_or_a_file_list_entry_the_server_decides() {
        let mut m = measured(2.5 * MB);
        m.goodput = None;
        assert_eq!(auto(&files(true), &m), None);
        // A decoding speed never measured: that file is no candidate.
        let mut m = measured(2.5 * MB);
        m.decode.xz = None;
        assert_eq!(auto(&files(true), &m), None);
        // The server advertises a kind the list does not hold: left as it is.
        let m = measured(1250.0 * MB);
        assert!(choose(Encoding::Auto, &files(true), Compression::Bzip2, &m).is_none());
    }

    #[test]
    fn without_a_goodput_auto_needs_no_list() {
        let unmeasured = Measured::default();
        assert!(!may_rewrite(Encoding::Auto, &unmeasured));
        assert!(may_rewrite(Encoding::Auto, &measured(1.0)));
        assert!(!may_rewrite(Encoding::Server, &measured(1.0)));
        for pinned in [Encoding::None, Encoding::Zstd, Encoding::Xz] {
            assert!(may_rewrite(pinned, &unmeasured));
        }
        // Consistent with choose: what needs no list never rewrites.
        let f = files(true);
        for server in [Compression::Zstd, Compression::Xz, Compression::None] {
            assert!(choose(Encoding::Auto, &f, server, &unmeasured).is_none());
        }
    }

    #[test]
    fn pins_apply_when_the_server_has_the_file_and_server_never_rewrites() {
        let m = Measured::default();
        let f = files(false);
        let pick = |e| choose(e, &f, Compression::Zstd, &m).map(|f| f.compression);
        assert_eq!(pick(Encoding::None), Some(Compression::None));
        assert_eq!(pick(Encoding::Xz), None, "no xz file: the server's");
        assert_eq!(pick(Encoding::Zstd), None, "already the server's");
        assert_eq!(pick(Encoding::Server), None);
        let fx = files(true);
        assert_eq!(
            choose(Encoding::Xz, &fx, Compression::Zstd, &m).map(|f| f.compression),
            Some(Compression::Xz)
        );
        assert_eq!(
            choose(Encoding::Server, &fx, Compression::Zstd, &measured(1.0)),
            None
        );
    }

    #[test]
    fn expected_time_is_the_slower_of_wire_and_decoding() {
        let f = files(true);
        let m = measured(10.0 * MB);
        let t = |c| expected_seconds(f.get(c).unwrap(), f.nar_size, &m).unwrap();
        assert_eq!(t(Compression::None), 10.0);
        assert_eq!(t(Compression::Zstd), 4.0);
        assert_eq!(t(Compression::Xz), 3.3);
        assert_eq!(t_with(&f, Compression::Xz, &measured(1000.0 * MB)), 1.25);
        assert!(
            expected_seconds(f.get(Compression::Xz).unwrap(), 1, &Measured::default()).is_none()
        );
    }

    fn t_with(f: &NarFiles, c: Compression, m: &Measured) -> f64 {
        expected_seconds(f.get(c).unwrap(), f.nar_size, m).unwrap()
    }

    proptest! {
        /// Whatever the measurements, the advertised file is one of the list, never the
        /// server's kind again, and never expected slower than the server's file.
        #[test]
        fn auto_never_picks_a_slower_file(
            goodput in 1e3f64..1e10,
            uncompressed in 1e3f64..1e10,
            zstd in 1e6f64..2e9,
            xz in 1e5f64..5e8,
            zstd_size in 1u64..200_000_000,
            xz_size in 1u64..200_000_000,
        ) {
            let mut f = files(true);
            f.files[0].file_size = zstd_size;
            f.files[1].file_size = xz_size;
            let m = Measured {
                goodput: Some(goodput),
                uncompressed_goodput: Some(uncompressed),
                decode: DecodeSpeeds { zstd: Some(zstd), xz: Some(xz) },
            };
            let server_time = t_with(&f, Compression::Zstd, &m);
            match choose(Encoding::Auto, &f, Compression::Zstd, &m) {
                None => {
                    for c in [Compression::None, Compression::Xz] {
                        prop_assert!(t_with(&f, c, &m) >= server_time);
                    }
                }
                Some(file) => {
                    prop_assert!(file.compression != Compression::Zstd);
                    let t = t_with(&f, file.compression, &m);
                    prop_assert!(t < server_time);
                    for other in &f.files {
                        prop_assert!(t <= t_with(&f, other.compression, &m));
                    }
                }
            }
        }
    }
}
