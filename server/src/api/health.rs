//! `GET /health` (the actors' and the store's real state) and `GET /metrics` (Prometheus
//! text exposition of every actor, build and cache metric).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::error::ApiResult;

pub async fn get_health(State(state): State<ApiState>) -> Response {
    let cache_running = state.cache().actor().is_running();
    let build_actors_running = state.build().is_alive();
    let store_database = state.cache().store().db().is_some();
    let healthy = cache_running && build_actors_running;
    let body = serde_json::json!({
        "status": if healthy { "healthy" } else { "degraded" },
        "cache_running": cache_running,
        "build_actors_running": build_actors_running,
        "store_database": store_database,
        "build_configured": state.inner.build_configured,
        "cache": state.cache().stats().snapshot(),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn get_metrics(State(state): State<ApiState>) -> ApiResult<Response> {
    let text = tailcache_actors::encode_text(&state.inner.registry)?;
    Ok((
        [(header::CONTENT_TYPE, tailcache_actors::TEXT_CONTENT_TYPE)],
        text,
    )
        .into_response())
}
