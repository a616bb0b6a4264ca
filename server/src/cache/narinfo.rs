//! `GET|HEAD /<hash>.narinfo`: the signed narinfo of a valid store path. It advertises the
//! compressed NAR once the background job has written it and the uncompressed, streamed NAR
//! until then (asking the CacheServer to compress the path). `URL`, `Compression`,
//! `FileHash` and `FileSize` are outside the signed fingerprint, so switching costs nothing.
//! Final texts (naming the configured compression's file) are kept rendered; see [`super::rendered`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tailcache_store::PathInfo;
use tailcache_store::StorePathHash;
use tailcache_store::narinfo::NarInfo;

use super::CacheState;
use super::actor::Compress;
use super::error::{CacheError, CacheResult};
use super::nar::uncompressed_url;
use super::nar_cache::NarEntry;
use crate::config::Compression;

pub async fn get_narinfo(
    State(state): State<CacheState>,
    Path(file): Path<String>,
) -> CacheResult<Response> {
    let hash = file
        .strip_suffix(".narinfo")
        .ok_or(CacheError::NotFound("no such file"))?;
    let hash =
        StorePathHash::parse(hash).map_err(|_| CacheError::BadRequest("not a store path hash"))?;
    let Some(db) = state.store().db() else {
        state.stats().narinfo(false);
        return Err(CacheError::NotFound("no such path"));
    };
    // Taken before the lookup, so a commit racing it makes the text it renders unusable later.
    let version = db.data_version();
    if let Some(v) = version
        && let Some(text) = state.rendered().get(&hash, v, state.nars())
    {
        state.stats().narinfo(true);
        return Ok(response(text));
    }
    let Some(info) = db.query_path_info(&hash)? else {
        state.stats().narinfo(false);
        return Err(CacheError::NotFound("no such path"));
    };
    state.stats().narinfo(true);
    let nar_hash = info.nar_hash;
    let (text, served) = render_served(&state, info);
    let text = Bytes::from(text);
    if let (Some(v), Served::Final(nar)) = (version, served) {
        state
            .rendered()
            .insert(hash, v, nar_hash, nar, text.clone());
    }
    Ok(response(text))
}

fn response(text: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "text/x-nix-narinfo")], text).into_response()
}

/// Which file a rendered narinfo advertises.
enum Served {
    /// The one the configuration asks for (`None`: the uncompressed NAR, compression being
    /// off): the text stays right while this file does.
    Final(Option<Arc<NarEntry>>),
    /// A stand-in while the configured compression is made (queued by the rendering).
    Pending,
}

/// The narinfo text for `info`, signed by every configured key (signatures are cached).
pub fn render(state: &CacheState, info: PathInfo) -> String {
    render_served(state, info).0
}

/// [`render`], also saying which file the text advertises.
fn render_served(state: &CacheState, mut info: PathInfo) -> (String, Served) {
    let store_dir = state.store_dir();
    let path_hash = info.path.hash();
    // Queues the compression this path lacks (never waits; see CacheHandle).
    let request_compression = || {
        if state.compression() != Compression::None {
            state.actor().request_compression(Compress {
                path_hash,
                physical_path: state.store().layout().physical_path(&info.path),
                nar_hash: info.nar_hash,
                nar_size: info.nar_size,
            });
        }
    };
    let (url, compression, file_hash, file_size, served) =
        match state.nars().get(&path_hash, &info.nar_hash) {
            Some(entry) => {
                entry.touch();
                // Compressed before the configuration changed: served as it is while the
                // configured compression is made.
                let served = if entry.compression == state.compression() {
                    Served::Final(Some(entry.clone()))
                } else {
                    request_compression();
                    Served::Pending
                };
                (
                    entry.url(),
                    entry.compression.kind(),
                    entry.file_hash,
                    entry.file_size,
                    served,
                )
            }
            None => {
                request_compression();
                let url = uncompressed_url(&path_hash, &info.nar_hash);
                let served = if state.compression() == Compression::None {
                    Served::Final(None)
                } else {
                    Served::Pending
                };
                (
                    url,
                    Compression::None.kind(),
                    info.nar_hash,
                    info.nar_size,
                    served,
                )
            }
        };
    let ours = state
        .signatures()
        .get_or_sign((path_hash, info.nar_hash), || {
            let fingerprint = info.fingerprint(store_dir);
            state.keys().iter().map(|k| k.sign(&fingerprint)).collect()
        });
    for sig in ours.iter() {
        info.add_signature(sig.clone());
    }
    let narinfo = NarInfo {
        info,
        url,
        compression,
        file_hash: Some(file_hash),
        file_size: Some(file_size),
    };
    (narinfo.render(store_dir), served)
}
