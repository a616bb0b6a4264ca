//! `GET /p2p/manifest/<filehash>.nar.xz|.nar.zst`: the P2P manifest of a compressed NAR
//! (`tailcache_p2p::manifest`: file hash, size, compression, BLAKE3 root), signed with the
//! server's first signing key in the P2P signature domain, as postcard bytes.
//! `GET|HEAD /p2p/outboard/<filehash>.nar.xz|.nar.zst`: the file's BLAKE3 outboard
//! (unsigned: the agent checks it against the manifest's root), with `Range` support.
//! Both are 404 for a file that is not (or no longer) in the NAR directory.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use tailcache_p2p::manifest::P2pManifest;
use tailcache_store::Sha256Hash;

use super::CacheState;
use super::error::{CacheError, CacheResult};
use super::nar::parse_compressed_name;
use crate::config::Compression;

const CONTENT_TYPE: &str = "application/octet-stream";

fn parse(file: &str) -> CacheResult<(Sha256Hash, Compression)> {
    parse_compressed_name(file).unwrap_or(Err(CacheError::BadRequest(
        "not a compressed NAR file name",
    )))
}

pub async fn get_manifest(
    State(state): State<CacheState>,
    Path(file): Path<String>,
) -> CacheResult<Response> {
    let (file_hash, compression) = parse(&file)?;
    let entry = state
        .nars()
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
    let path = state.nars().outboard_path(&file_hash, compression);
    // Open now, as for NARs: eviction unlinking it cannot cut the response short.
    let file = std::fs::File::open(&path).map_err(|_| CacheError::NotFound("no such outboard"))?;
    state.reads().respond_file(
        &headers,
        method == Method::HEAD,
        file,
        CONTENT_TYPE,
        "outboard",
        |_| {},
    )
}
