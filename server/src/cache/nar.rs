//! `GET|HEAD /nar/…`: NARs. Three URL forms name an uncompressed NAR, dumped from the store on
//! the fly: ours and nix-serve's `<outhash>-<narhash>.nar`, harmonia's `<narhash>.nar?hash=<outhash>`,
//! and a bare `<narhash>.nar`. Compressed NARs are `<filehash>.nar.xz|.nar.zst`, served from
//! the NAR directories (primary and archive files alike). Every name is parsed into hashes
//! before anything touches the disk, so no URL can reach a file outside the store or those
//! directories. `Range` works for both.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde::Deserialize;
use tailcache_store::nar::NarEncoder;
use tailcache_store::{Sha256Hash, StorePathHash};

use super::CacheState;
use super::body::Resource;
use super::error::{CacheError, CacheResult};
use crate::config::Compression;

const NAR_CONTENT_TYPE: &str = "application/x-nix-nar";

#[derive(Debug, Deserialize)]
pub struct NarQuery {
    /// harmonia's `?hash=<outhash>`.
    hash: Option<String>,
}

/// A parsed NAR file name.
#[derive(Debug, PartialEq, Eq)]
enum NarName {
    Uncompressed {
        path: Option<StorePathHash>,
        nar_hash: Sha256Hash,
    },
    Compressed {
        file_hash: Sha256Hash,
        compression: Compression,
    },
}

/// `nar/<outhash>-<narhash>.nar`: the uncompressed NAR of a store path, relative to the cache
/// root (found by store path, not by a scan for its NAR hash).
pub fn uncompressed_url(path: &StorePathHash, nar_hash: &Sha256Hash) -> String {
    format!("nar/{path}-{}.nar", nar_hash.to_nix32())
}

const BAD_NAME: CacheError = CacheError::BadRequest("malformed NAR file name");

/// `<filehash>.nar.xz|.nar.zst` → its hash and compression; `None` for any other suffix.
pub(super) fn parse_compressed_name(file: &str) -> Option<CacheResult<(Sha256Hash, Compression)>> {
    [Compression::Xz, Compression::Zstd]
        .into_iter()
        .find_map(|compression| {
            let stem = file.strip_suffix(format!(".nar{}", compression.extension()).as_str())?;
            Some(
                Sha256Hash::from_nix32(stem)
                    .map(|h| (h, compression))
                    .map_err(|_| BAD_NAME),
            )
        })
}

fn parse_name(file: &str, query_hash: Option<&str>) -> CacheResult<NarName> {
    const BAD: CacheError = BAD_NAME;
    let nar_hash = |s: &str| Sha256Hash::from_nix32(s).map_err(|_| BAD);
    if let Some(parsed) = parse_compressed_name(file) {
        let (file_hash, compression) = parsed?;
        return Ok(NarName::Compressed {
            file_hash,
            compression,
        });
    }
    let stem = file.strip_suffix(".nar").ok_or(BAD)?;
    let (path, hash) = match stem.split_once('-') {
        Some((out, nar)) => (Some(out), nar),
        None => (query_hash, stem),
    };
    let path = path
        .map(StorePathHash::parse)
        .transpose()
        .map_err(|_| BAD)?;
    Ok(NarName::Uncompressed {
        path,
        nar_hash: nar_hash(hash)?,
    })
}

pub async fn get_nar(
    State(state): State<CacheState>,
    Path(file): Path<String>,
    Query(query): Query<NarQuery>,
    method: Method,
    headers: HeaderMap,
) -> CacheResult<Response> {
    let head = method == Method::HEAD;
    match parse_name(&file, query.hash.as_deref())? {
        NarName::Compressed {
            file_hash,
            compression,
        } => {
            // Open now: once open, eviction unlinking the file cannot cut the download short.
            let file = state
                .dirs()
                .open_file(&file_hash, compression)
                .ok_or(CacheError::NotFound("no such compressed NAR"))?;
            let stats = state.clone();
            state.reads().respond_file(
                &headers,
                head,
                file,
                NAR_CONTENT_TYPE,
                "compressed NAR",
                move |n| stats.stats().add_nar_bytes(compression, n),
            )
        }
        NarName::Uncompressed { path, nar_hash } => {
            let db = state
                .store()
                .db()
                .ok_or(CacheError::NotFound("no such NAR"))?;
            let info = match path {
                Some(p) => db.query_path_info(&p)?,
                None => db.query_by_nar_hash(&nar_hash)?,
            };
            let info = info
                .filter(|i| i.nar_hash == nar_hash)
                .ok_or(CacheError::NotFound("no such NAR"))?;
            let physical = state.store().layout().physical_path(&info.path);
            if std::fs::symlink_metadata(&physical).is_err() {
                return Err(CacheError::NotFound(
                    "store path is registered but missing on disk",
                ));
            }
            let stats = state.clone();
            state.reads().respond(
                &headers,
                head,
                Resource {
                    size: info.nar_size,
                    content_type: NAR_CONTENT_TYPE,
                },
                move |offset| NarEncoder::new_at(&physical, offset).map_err(std::io::Error::other),
                move |n| stats.stats().add_nar_bytes(Compression::None, n),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";
    const NAR: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    #[test]
    fn parses_every_url_form() {
        let nar_hash = Sha256Hash::from_nix32(NAR).unwrap();
        let out = StorePathHash::parse(OUT).unwrap();
        let want = NarName::Uncompressed {
            path: Some(out),
            nar_hash,
        };
        assert_eq!(parse_name(&format!("{OUT}-{NAR}.nar"), None).unwrap(), want);
        assert_eq!(parse_name(&format!("{NAR}.nar"), Some(OUT)).unwrap(), want);
        assert_eq!(
            parse_name(&format!("{NAR}.nar"), None).unwrap(),
            NarName::Uncompressed {
                path: None,
                nar_hash
            }
        );
        assert_eq!(
            parse_name(&format!("{NAR}.nar.zst"), None).unwrap(),
            NarName::Compressed {
                file_hash: nar_hash,
                compression: Compression::Zstd
            }
        );
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "../../etc/passwd",
            "..%2F..%2Fetc%2Fpasswd.nar",
            &format!("{NAR}.nar.gz"),
            &format!("{NAR}.nar.xz/x"),
            &format!("../{NAR}.nar.xz"),
            &format!("{OUT}-{NAR}x.nar"),
            &format!("{OUT}e-{NAR}.nar"),
            ".nar",
            "",
        ] {
            assert!(parse_name(bad, None).is_err(), "{bad} accepted");
        }
        assert!(parse_name(&format!("{NAR}.nar"), Some("../../x")).is_err());
    }
}
