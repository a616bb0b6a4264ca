//! `GET /log/<drv>`: a derivation's build log from Nix's log directory
//! (`<root>/nix/var/log/nix/drvs/<first two chars>/<rest>`, plain or `.bz2`, which is
//! decompressed while streaming). The name is parsed as a store path before use.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use tailcache_store::StorePath;

use super::CacheState;
use super::error::{CacheError, CacheResult};

pub async fn get_build_log(
    State(state): State<CacheState>,
    Path(drv): Path<String>,
) -> CacheResult<Response> {
    let path = StorePath::from_base_name(&drv)
        .ok()
        .filter(|p| p.name().ends_with(".drv"))
        .ok_or(CacheError::BadRequest("not a derivation file name"))?;
    let base = path.base_name();
    let (prefix, rest) = base.split_at(2);
    let dir = state.log_dir().join(prefix);
    let body = if let Ok(f) = std::fs::File::open(dir.join(rest)) {
        state.reads().body(f, |_| {})
    } else if let Ok(f) = std::fs::File::open(dir.join(format!("{rest}.bz2"))) {
        state
            .reads()
            .body(bzip2::read::MultiBzDecoder::new(f), |_| {})
    } else {
        return Err(CacheError::NotFound("no build log for this derivation"));
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}
