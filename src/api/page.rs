//! `GET /`: a small HTML status page, served whole by the binary (no external assets). It
//! shows the cache's public key and the `nix.conf` lines to use it, the current or last build
//! and who triggered it, the last log lines (live, over the `/build/logs?follow=1` event
//! stream), and the cache's counters (from `/health`).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiState;

pub async fn get_status_page(State(state): State<ApiState>) -> Response {
    let keys: Vec<String> = state
        .cache()
        .keys()
        .iter()
        .map(|k| k.public().to_nix_string())
        .collect();
    let keys = keys.join(" ");
    let html = PAGE
        .replace("{{PUBKEY}}", &escape(&keys))
        .replace("{{CACHE_URL}}", &escape(&state.inner.cache_url));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tailcache</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 62rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  h2 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
  code, pre { font: 13px/1.4 ui-monospace, monospace; }
  pre { background: #f4f4f4; padding: .7rem; border-radius: 4px; overflow-x: auto; }
  #log { height: 22rem; overflow-y: auto; background: #111; color: #ddd; white-space: pre-wrap; }
  .success { color: #18794e; } .failed, .interrupted { color: #c62828; } .cancelled { color: #8a6d00; }
  .running { color: #1565c0; }
  table { border-collapse: collapse; } td { padding: .15rem 1rem .15rem 0; vertical-align: top; }
  button { font: inherit; padding: .3rem .9rem; }
</style>
</head>
<body>
<h1>tailcache</h1>
<p>Build server and Nix binary cache.</p>

<h2>Use this cache</h2>
<p>Public key: <code id="pubkey">{{PUBKEY}}</code></p>
<pre id="nixconf">extra-substituters = {{CACHE_URL}}
extra-trusted-public-keys = {{PUBKEY}}</pre>

<h2>Build</h2>
<div id="status">loading…</div>
<p><button id="trigger" type="button">Trigger a build</button> <span id="trigger-result"></span></p>

<h2>Log</h2>
<pre id="log"></pre>

<h2>Cache</h2>
<table id="cache"></table>

<script>
"use strict";
const $ = (id) => document.getElementById(id);
const text = (s) => document.createTextNode(s == null ? "–" : String(s));

// As RequestedBy's Display: who the tailnet says it is, else what the request claimed.
function who(r) {
  const t = r.tailnet;
  if (!t) return r.user + "@" + r.host;
  return t.tags && t.tags.length ? t.node + " [" + t.tags.join(", ") + "]" : t.user + "@" + t.node;
}
function row(table, k, v, cls) {
  const tr = document.createElement("tr");
  const a = document.createElement("td"); a.appendChild(text(k));
  const b = document.createElement("td"); b.appendChild(text(v));
  if (cls) b.className = cls;
  tr.append(a, b); table.appendChild(tr);
}

let following = false;
async function refreshStatus() {
  try {
    const s = await (await fetch("/build/status")).json();
    const t = document.createElement("table");
    if (s.is_running) {
      row(t, "state", "running" + (s.current_step ? " (" + s.current_step + ")" : ""), "running");
      row(t, "started", s.last_start);
    } else {
      row(t, "last result", s.last_status, s.last_status || "");
      row(t, "finished", s.last_finish);
      if (s.last_failing_step) row(t, "failing step", s.last_failing_step + " (exit " + s.last_exit_status + ")");
    }
    if (s.requested_by) row(t, "triggered by", who(s.requested_by));
    row(t, "commit", s.last_commit);
    $("status").replaceChildren(t);
    if (s.is_running && !following) follow(0);
  } catch (e) { $("status").textContent = "status unavailable: " + e; }
}

async function refreshCache() {
  try {
    const h = await (await fetch("/health")).json();
    const t = $("cache"); t.replaceChildren();
    row(t, "health", h.status);
    row(t, "narinfo hits / misses", h.cache.narinfo_hits + " / " + h.cache.narinfo_misses);
    row(t, "NAR bytes (none / xz / zstd)", h.cache.nar_bytes_none + " / " + h.cache.nar_bytes_xz + " / " + h.cache.nar_bytes_zstd);
    row(t, "compression queue", h.cache.compression_queue_length);
    row(t, "compressed NARs on disk", h.cache.nar_dir_bytes + " bytes");
  } catch (e) { /* the next refresh tries again */ }
}

function appendLine(line) {
  const log = $("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.appendChild(text(line + "\n"));
  while (log.childNodes.length > 1000) log.removeChild(log.firstChild);
  if (atEnd) log.scrollTop = log.scrollHeight;
}

function follow(lines) {
  following = true;
  const es = new EventSource("/build/logs?follow=1&lines=" + lines);
  es.onmessage = (ev) => appendLine(ev.data);
  es.addEventListener("lagged", (ev) => appendLine("[… " + ev.data + " lines skipped …]"));
  es.addEventListener("end", () => { es.close(); following = false; refreshStatus(); });
  es.onerror = () => { es.close(); following = false; };
}

$("trigger").addEventListener("click", async () => {
  const r = await fetch("/build/trigger", { method: "POST" });
  let msg;
  try { msg = (await r.json()).message; } catch (e) { msg = "HTTP " + r.status; }
  $("trigger-result").textContent = msg;
  refreshStatus();
});

follow(100);
refreshStatus(); refreshCache();
setInterval(refreshStatus, 3000); setInterval(refreshCache, 5000);
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape(r#"<a href="x">&"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
