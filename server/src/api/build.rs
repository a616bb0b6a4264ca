//! The build routes: `POST /build/trigger`, `POST /build/cancel`, `POST /build/webhook`
//! (GitHub push events, HMAC-SHA256 signed), `GET /build/status`, and `GET /build/logs`
//! (`?lines=N`, and `?follow=1` as Server-Sent Events until the build ends).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use tailcache_actors::LogEvent;
use tailcache_wire::build::{BuildStatus, CancelOutcome, RequestedBy, TriggerOutcome};
use tokio::sync::broadcast;

use super::error::{ApiError, ApiResult};
use super::{ApiState, BODY_LIMIT, WEBHOOK_BODY_LIMIT, read_body};

/// Header naming the user who asks (the CLI sends `$USER`).
pub const HEADER_USER: &str = "x-tailcache-user";
/// Header naming the host the request comes from (the CLI sends the hostname).
pub const HEADER_HOST: &str = "x-tailcache-host";
/// Lines `GET /build/logs` returns when `lines` is not given.
const DEFAULT_LINES: usize = 50;

/// Who the request claims to come from: the CLI's headers, else the peer's address.
fn requested_by(headers: &HeaderMap, peer: SocketAddr) -> RequestedBy {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            })
            .filter(|v| !v.trim().is_empty())
    };
    RequestedBy {
        host: header(HEADER_HOST).unwrap_or_else(|| peer.ip().to_string()),
        user: header(HEADER_USER).unwrap_or_else(|| "unknown".to_owned()),
        tailnet: None,
    }
}

/// Who calls a route that changes builds — token checked, named by the tailnet, admitted
/// by `[api] allow` (see [`ApiState::caller`]) — once the request's body was read within
/// its limit: unused, but an oversized body is refused, not ignored.
#[derive(Debug)]
pub struct Caller(pub RequestedBy);

impl FromRequest<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let claim = requested_by(&parts.headers, peer);
        let who = state.caller(&parts.headers, peer, claim).await?;
        let body = Bytes::from_request(Request::from_parts(parts, body), state).await;
        read_body(body, BODY_LIMIT)?;
        Ok(Caller(who))
    }
}

pub async fn post_trigger(
    State(state): State<ApiState>,
    Caller(who): Caller,
) -> ApiResult<Response> {
    trigger(&state, who, None).await
}

/// Triggers a build; `commit` is what a webhook push names (superseding compares it).
async fn trigger(
    state: &ApiState,
    who: RequestedBy,
    commit: Option<String>,
) -> ApiResult<Response> {
    if !state.inner.build_configured {
        return Err(ApiError::NotConfigured);
    }
    let outcome = state.build().trigger_for(who, commit).await?;
    let message = match &outcome {
        TriggerOutcome::Triggered { build_id } => format!("build {build_id} triggered"),
        TriggerOutcome::AlreadyRunning {
            build_id,
            since,
            requested_by,
        } => {
            format!("build {build_id} already running since {since} (triggered by {requested_by})")
        }
        TriggerOutcome::Queued { after_build } => {
            format!("a build is running; one more will run after build {after_build}")
        }
        TriggerOutcome::Superseding {
            cancelled_build,
            commit,
        } => format!("build {cancelled_build} is being cancelled; a build of {commit} runs next"),
        TriggerOutcome::ShuttingDown => return Err(ApiError::ShuttingDown),
    };
    Ok(Json(with_message(&outcome, message)).into_response())
}

/// `value`'s JSON object plus a human `message`.
fn with_message(value: &impl serde::Serialize, message: String) -> serde_json::Value {
    let mut v = serde_json::to_value(value).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(obj) = v.as_object_mut() {
        obj.insert("message".to_owned(), message.into());
    }
    v
}

pub async fn post_cancel(
    State(state): State<ApiState>,
    Caller(who): Caller,
) -> ApiResult<Response> {
    let outcome = state.build().cancel(who).await?;
    let message = match &outcome {
        CancelOutcome::Cancelling { build_id } => {
            format!("cancelling build {build_id}")
        }
        CancelOutcome::NotRunning => "no build is running".to_owned(),
    };
    Ok(Json(with_message(&outcome, message)).into_response())
}

pub async fn get_status(State(state): State<ApiState>) -> ApiResult<Json<BuildStatus>> {
    Ok(Json(state.build().status().await?))
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    lines: Option<usize>,
    #[serde(default)]
    follow: Option<String>,
}

pub async fn get_logs(
    State(state): State<ApiState>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let n = q
        .lines
        .unwrap_or(DEFAULT_LINES)
        .min(state.build().max_lines());
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes" | ""));
    if !follow {
        let logs = state.build().logs(n).await?;
        return Ok(Json(serde_json::json!({ "logs": logs })).into_response());
    }
    let (tail, rx) = state.build().follow(n).await?;
    // Asked after `follow`, and StatusStore handles messages in order, so a build that was
    // triggered before this request is seen as running here.
    let running = state.build().status().await?.is_running;
    let stream = follow_stream(tail, rx, running);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// SSE data cannot hold CR or LF; a progress line's carriage returns overwrite, as on a
/// terminal, so what a person would see is the last segment.
fn sse_data(line: &str) -> &str {
    line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("")
}

enum FollowState {
    Tail(
        std::vec::IntoIter<String>,
        broadcast::Receiver<LogEvent>,
        bool,
    ),
    Live(broadcast::Receiver<LogEvent>),
    Done,
}

/// The tail, then live lines until the build's end (an `end` event), then the stream closes.
fn follow_stream(
    tail: Vec<String>,
    rx: broadcast::Receiver<LogEvent>,
    running: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    futures::stream::unfold(
        FollowState::Tail(tail.into_iter(), rx, running),
        |st| async move {
            match st {
                FollowState::Tail(mut lines, rx, running) => match lines.next() {
                    Some(l) => {
                        let ev = Event::default().data(sse_data(&l));
                        Some((Ok(ev), FollowState::Tail(lines, rx, running)))
                    }
                    None if running => next_live(rx).await,
                    None => Some((Ok(end_event(None, None)), FollowState::Done)),
                },
                FollowState::Live(rx) => next_live(rx).await,
                FollowState::Done => None,
            }
        },
    )
}

async fn next_live(
    mut rx: broadcast::Receiver<LogEvent>,
) -> Option<(Result<Event, Infallible>, FollowState)> {
    loop {
        match rx.recv().await {
            Ok(LogEvent::Line(l)) => {
                return Some((
                    Ok(Event::default().data(sse_data(&l))),
                    FollowState::Live(rx),
                ));
            }
            Ok(LogEvent::Started { .. }) => continue,
            Ok(LogEvent::Ended { build_id, result }) => {
                let ev = end_event(Some(build_id), Some(result.as_str()));
                return Some((Ok(ev), FollowState::Done));
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let ev = Event::default().event("lagged").data(n.to_string());
                return Some((Ok(ev), FollowState::Live(rx)));
            }
            Err(broadcast::error::RecvError::Closed) => {
                return Some((Ok(end_event(None, None)), FollowState::Done));
            }
        }
    }
}

fn end_event(build_id: Option<u64>, result: Option<&str>) -> Event {
    let data = serde_json::json!({ "build_id": build_id, "result": result });
    Event::default().event("end").data(data.to_string())
}

/// The parts of a GitHub push event the webhook uses.
#[derive(Debug, Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
    /// The commit the branch points to after the push.
    after: Option<String>,
    pusher: Option<Pusher>,
}

#[derive(Debug, Deserialize)]
struct Pusher {
    name: String,
}

pub async fn post_webhook(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = read_body(body, WEBHOOK_BODY_LIMIT)?;
    let secret = state
        .inner
        .webhook_secret
        .as_deref()
        .ok_or(ApiError::NotFound)?;
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
        .ok_or(ApiError::BadSignature)?;
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|_| ApiError::BadSignature)?;
    mac.update(&body);
    mac.verify_slice(&signature)
        .map_err(|_| ApiError::BadSignature)?;

    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match event {
        "ping" => Ok(Json(serde_json::json!({ "status": "pong" })).into_response()),
        "push" => {
            let push: PushEvent = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("not a push event: {e}")))?;
            let wanted = format!("refs/heads/{}", state.inner.branch);
            if push.git_ref != wanted {
                let message = format!("push to {} ignored (building {wanted})", push.git_ref);
                let body = serde_json::json!({ "status": "ignored", "message": message });
                return Ok(Json(body).into_response());
            }
            let user = push.pusher.map_or_else(|| "unknown".to_owned(), |p| p.name);
            // A deleted branch's `after` is all zeros: no commit to build.
            let commit = push.after.filter(|c| {
                c.bytes().all(|b| b.is_ascii_hexdigit()) && c.bytes().any(|b| b != b'0')
            });
            trigger(
                &state,
                RequestedBy {
                    host: "github-webhook".to_owned(),
                    user,
                    tailnet: None,
                },
                commit,
            )
            .await
        }
        other => Err(ApiError::BadRequest(format!("unsupported event {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_data_keeps_what_a_terminal_shows() {
        assert_eq!(sse_data("plain"), "plain");
        assert_eq!(sse_data("10%\r50%\r100%"), "100%");
        assert_eq!(sse_data("done\r"), "done");
        assert_eq!(sse_data(""), "");
    }

    #[test]
    fn requested_by_prefers_headers_and_sanitises_them() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(requested_by(&h, peer).host, "127.0.0.1");
        assert_eq!(requested_by(&h, peer).user, "unknown");
        h.insert(HEADER_USER, "alice".parse().unwrap());
        h.insert(HEADER_HOST, "laptop\tx".parse().unwrap());
        let who = requested_by(&h, peer);
        assert_eq!((who.user.as_str(), who.host.as_str()), ("alice", "laptopx"));
    }
}
