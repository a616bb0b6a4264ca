//! `GET /`: a small HTML status page, served whole by the binary (no external assets). It
//! shows the cache's public key and the `nix.conf` lines to use it, a card per host (state,
//! generation, closure size, what changed — from `/hosts`), the current or last build and
//! who triggered it, the build history's durations as an inline SVG chart, the last log
//! lines (live, over the `/build/logs?follow=1` event stream), and the cache's counters
//! (from `/health`).

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

const PAGE: &str = r##"<!doctype html>
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
  .hosts { display: flex; flex-wrap: wrap; gap: .8rem; }
  .host-card { border: 1px solid #ddd; border-left: 6px solid #999; border-radius: 6px; padding: .6rem .9rem; min-width: 15rem; max-width: 29rem; flex: 1; }
  .host-card.ready { border-left-color: #18794e; } .host-card.failed { border-left-color: #c62828; }
  .host-card.building, .host-card.compressing { border-left-color: #1565c0; }
  .host-card h3 { font-size: 1rem; margin: 0 0 .2rem; } .host-card .kind { color: #777; font-weight: normal; font-size: .85rem; }
  .host-card .state { font-weight: 600; text-transform: uppercase; font-size: .8rem; letter-spacing: .04em; }
  .host-card .changes { color: #444; font-size: .9rem; margin-top: .3rem; overflow-wrap: anywhere; }
  #history-chart .bar.success { fill: #18794e; } #history-chart .bar.failed, #history-chart .bar.interrupted { fill: #c62828; }
  #history-chart .bar.cancelled { fill: #c9a400; } #history-chart text { font: 11px system-ui, sans-serif; fill: #555; }
</style>
</head>
<body>
<h1>tailcache</h1>
<p>Build server and Nix binary cache.</p>

<h2>Use this cache</h2>
<p>Public key: <code id="pubkey">{{PUBKEY}}</code></p>
<pre id="nixconf">extra-substituters = {{CACHE_URL}}
extra-trusted-public-keys = {{PUBKEY}}</pre>

<h2>Hosts</h2>
<div id="hosts" class="hosts">loading…</div>

<h2>Build</h2>
<div id="status">loading…</div>
<p><button id="trigger" type="button">Trigger a build</button> <span id="trigger-result"></span></p>

<h2>Build history</h2>
<div id="history"></div>

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

function el(tag, cls, content) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (content != null) e.appendChild(text(content));
  return e;
}

function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Math.abs(n), u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return (n < 0 ? "−" : "") + (u ? v.toFixed(1) : v) + " " + units[u];
}

function versions(v) { return v.length === 0 ? "∅" : v.map((x) => x === "" ? "ε" : x).join(", "); }

function hostCard(h) {
  const card = el("div", "host-card " + h.state);
  card.dataset.host = h.name;
  card.dataset.state = h.state;
  const title = el("h3", null, h.name + " ");
  title.appendChild(el("span", "kind", h.kind));
  card.appendChild(title);
  card.appendChild(el("div", "state " + h.state, h.state));
  const newest = h.generations[0];
  let record = null;
  try { if (newest) record = JSON.parse(newest.signed.record); } catch (e) { record = null; }
  if (record) {
    const current = h.current == null ? "" : " · current " + h.current;
    card.appendChild(el("div", "generation", "generation " + record.generation + " (" + newest.state + ")" + current));
    card.appendChild(el("div", "closure", size(record.closure_nar_size) + " in " + record.closure_paths + " paths · built " + record.built_at.replace("T", " ").slice(0, 16) + " UTC"));
    const d = record.diff;
    let changes;
    if (d.previous == null) {
      changes = "first generation";
    } else {
      const delta = d.packages.reduce((a, p) => a + p.size_delta, 0);
      const pk = d.packages.filter((p) => versions(p.before) !== versions(p.after)).slice(0, 4)
        .map((p) => p.name + " " + versions(p.before) + " → " + versions(p.after));
      changes = "+" + d.added.length + " −" + d.removed.length + " paths, " + (delta >= 0 ? "+" : "") + size(delta) + " since " + d.previous + (pk.length ? ": " + pk.join(", ") : "");
    }
    card.appendChild(el("div", "changes", changes));
  }
  const o = h.last_outcome;
  if (o && o.result !== "built" && o.result !== "building") {
    const why = o.failed_derivations.length ? o.failed_derivations.join(", ") : (o.error || "");
    card.appendChild(el("div", "changes failure", "build " + o.build_id + " " + o.result + (why ? ": " + why : "")));
  }
  return card;
}

async function refreshHosts() {
  try {
    const r = await (await fetch("/hosts")).json();
    const box = $("hosts");
    if (r.hosts.length === 0) { box.textContent = "no targets yet (a build evaluates them)"; return; }
    box.replaceChildren(...r.hosts.map(hostCard));
  } catch (e) { $("hosts").textContent = "hosts unavailable: " + e; }
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, content) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (content != null) e.appendChild(text(content));
  return e;
}

function drawHistory(history) {
  const builds = history.slice(0, 30).reverse();
  const box = $("history");
  if (builds.length === 0) { box.textContent = "no builds yet"; return; }
  const w = 620, h = 150, top = 16, bottom = 22, left = 46;
  const max = Math.max(1, ...builds.map((b) => b.duration_seconds));
  const step = (w - left) / builds.length, bw = Math.max(4, Math.min(28, step * 0.7));
  const chart = svg("svg", { id: "history-chart", width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img", "aria-label": "build durations" });
  chart.appendChild(svg("line", { x1: left, y1: h - bottom, x2: w, y2: h - bottom, stroke: "#bbb" }));
  chart.appendChild(svg("text", { x: 2, y: top + 4 }, max.toFixed(max < 10 ? 1 : 0) + " s"));
  chart.appendChild(svg("text", { x: 2, y: h - bottom }, "0 s"));
  builds.forEach((b, i) => {
    const bh = Math.max(2, (h - top - bottom) * b.duration_seconds / max);
    const x = left + i * step + (step - bw) / 2;
    const bar = svg("rect", { class: "bar " + b.result, x: x.toFixed(1), y: (h - bottom - bh).toFixed(1), width: bw.toFixed(1), height: bh.toFixed(1) });
    bar.dataset.build = b.build_id;
    bar.appendChild(svg("title", {}, "build " + b.build_id + ": " + b.result + " in " + b.duration_seconds.toFixed(1) + " s"));
    chart.appendChild(bar);
    chart.appendChild(svg("text", { x: (x + bw / 2).toFixed(1), y: h - 6, "text-anchor": "middle" }, String(b.build_id)));
  });
  box.replaceChildren(chart);
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
      if (s.last_failing_step) row(t, "failing step", s.last_failing_step + (s.last_exit_status == null ? "" : " (exit " + s.last_exit_status + ")"));
      if (s.last_error) row(t, "error", s.last_error);
    }
    if (s.requested_by) row(t, "triggered by", who(s.requested_by));
    row(t, "commit", s.last_commit);
    $("status").replaceChildren(t);
    drawHistory(s.history || []);
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
  es.addEventListener("end", () => { es.close(); following = false; refreshStatus(); refreshHosts(); });
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
refreshStatus(); refreshCache(); refreshHosts();
setInterval(refreshStatus, 3000); setInterval(refreshCache, 5000); setInterval(refreshHosts, 3000);
</script>
</body>
</html>
"##;

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
