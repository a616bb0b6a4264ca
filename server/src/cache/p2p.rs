//! `GET /p2p/files/<store path hash>`: every file the server serves for a valid path's NAR
//! (`tailcache_p2p::files::NarFiles`, JSON) — the primary compressed file and the archive file
//! when they are made, and always the uncompressed NAR — so an agent can advertise to Nix the
//! one that suits its link. 404 for a path that is not valid.
//! `GET /p2p/manifest/<filehash>.nar.xz|.nar.zst`: the P2P manifest of a compressed NAR
//! (`tailcache_p2p::manifest`: file hash, size, compression, BLAKE3 root), signed with the
//! server's first signing key in the P2P signature domain, as postcard bytes.
//! `GET|HEAD /p2p/outboard/<filehash>.nar.xz|.nar.zst`: the file's BLAKE3 outboard
//! (unsigned: the agent checks it against the manifest's root), with `Range` support.
//! Both are 404 for a file that is not (or no longer) in a NAR directory; primary and archive
//! files are served alike.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use tailcache_p2p::files::{NarFile, NarFiles};
use tailcache_p2p::manifest::P2pManifest;
use tailcache_store::{Sha256Hash, StorePathHash};

use super::CacheState;
use super::error::{CacheError, CacheResult};
use super::nar::{parse_compressed_name, uncompressed_url};
use crate::config::Compression;

const CONTENT_TYPE: &str = "application/octet-stream";

fn parse(file: &str) -> CacheResult<(Sha256Hash, Compression)> {
    parse_compressed_name(file).unwrap_or(Err(CacheError::BadRequest(
        "not a compressed NAR file name",
    )))
}

pub async fn get_files(
    State(state): State<CacheState>,
    Path(hash): Path<String>,
) -> CacheResult<Response> {
    let path_hash =
        StorePathHash::parse(&hash).map_err(|_| CacheError::BadRequest("not a store path hash"))?;
    let db = state
        .store()
        .db()
        .ok_or(CacheError::NotFound("no such path"))?;
    let info = db
        .query_path_info(&path_hash)?
        .ok_or(CacheError::NotFound("no such path"))?;
    let dirs = state.dirs();
    let compressed = [&dirs.primary, &dirs.archive]
        .into_iter()
        .filter_map(|d| d.get(&path_hash, &info.nar_hash))
        .map(|e| {
            // Asked for, as a narinfo is: recently used for eviction.
            e.touch();
            NarFile {
                url: e.url(),
                compression: e.compression.kind(),
                file_hash: e.file_hash,
                file_size: e.file_size,
            }
        });
    let uncompressed = NarFile {
        url: uncompressed_url(&path_hash, &info.nar_hash),
        compression: Compression::None.kind(),
        file_hash: info.nar_hash,
        file_size: info.nar_size,
    };
    let files = NarFiles {
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        files: compressed.chain([uncompressed]).collect(),
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        files.to_json(),
    )
        .into_response())
}

pub async fn get_manifest(
    State(state): State<CacheState>,
    Path(file): Path<String>,
) -> CacheResult<Response> {
    let (file_hash, compression) = parse(&file)?;
    let (_, entry) = state
        .dirs()
        .find_file(&file_hash, compression)
        .ok_or(CacheError::NotFound("no such compressed NAR"))?;
    let root = entry
        .blake3_root
        .ok_or(CacheError::NotFound("this NAR file has no P2P manifest"))?;
    let key = state
        .keys()
        .first()
        .ok_or(CacheError::NotFound("this cache has no signing key"))?;
    let manifest = P2pManifest::new(entry.file_hash, entry.file_size, compression.kind(), root);
    let body = manifest.sign(key).to_bytes();
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response())
}

pub async fn get_outboard(
    State(state): State<CacheState>,
    Path(file): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> CacheResult<Response> {
    let (file_hash, compression) = parse(&file)?;
    // Open now, as for NARs: eviction unlinking it cannot cut the response short.
    let file = state
        .dirs()
        .open_outboard(&file_hash, compression)
        .ok_or(CacheError::NotFound("no such outboard"))?;
    state.reads().respond_file(
        &headers,
        method == Method::HEAD,
        file,
        CONTENT_TYPE,
        "outboard",
        |_| {},
    )
}
