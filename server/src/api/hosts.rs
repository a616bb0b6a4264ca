//! The fleet's routes: `GET /hosts` (every build target: its state, its kept generations
//! with their signed records, the newest ready one), `GET /hosts/<name>` (one target; an
//! unknown name is a 404 naming the known ones) and `GET /locks/<hash>` (the `flake.lock` a
//! generation was built from, by the `lock_hash` its record names).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tailcache_store::IoError;
use tailcache_wire::hosts::{HostView, HostsReply};

use super::ApiState;
use super::error::{ApiError, ApiResult};

pub async fn get_hosts(State(state): State<ApiState>) -> ApiResult<Json<HostsReply>> {
    Ok(Json(state.build().hosts().await?))
}

pub async fn get_host(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<HostView>> {
    if let Some(view) = state.build().host(&name).await? {
        return Ok(Json(view));
    }
    let hosts = state.build().hosts().await?;
    let known: Vec<String> = hosts.hosts.into_iter().map(|h| h.name).collect();
    Err(ApiError::UnknownHost {
        name: name.chars().filter(|c| !c.is_control()).take(128).collect(),
        known: if known.is_empty() {
            "nothing yet (no build has evaluated any target)".to_owned()
        } else {
            known.join(", ")
        },
    })
}

pub async fn get_lock(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    let path = state.build().lock_path(&hash).ok_or(ApiError::NotFound)?;
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok((
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            bytes,
        )
            .into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::NotFound),
        Err(e) => Err(ApiError::Actors(
            IoError::new(format!("cannot read {}", path.display()), e).into(),
        )),
    }
}
