//! The agent's HTTP side, a Nix substituter on 127.0.0.1: `GET /nix-cache-info` is the
//! server's with a priority [`PRIORITY_LEAD`] better; `GET|HEAD /<hash>.narinfo` is the
//! server's answer, naming the NAR file the configured encoding picks among those the server
//! lists (`GET /p2p/files/<hash>`, asked at the same time; [`crate::choose`]) — only the
//! unsigned file lines change ([`crate::narinfo`]), so Nix checks the server's signature
//! itself — or byte for byte when the list fails, matches another NAR, or changes nothing;
//! `GET /nar/<filehash>.nar.xz|.zst` comes from the agent's cache or is fetched in verified
//! pieces from peers and the server ([`crate::fetch`]) when a manifest signed by a trusted
//! key exists, and is proxied from the server otherwise, as is the uncompressed
//! `/nar/<outhash>-<narhash>.nar` (which Nix checks against the signed NarHash); `GET /metrics` is
//! Prometheus text.
//! Every byte of a NAR file the agent serves itself is verified first ([`crate::serve`]): a
//! kept file against the signed manifest and outboard kept beside it, so that it is served
//! (checked) even when the server cannot be asked.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use prometheus_client::registry::Registry;
use tailcache_p2p::FileId;
use tailcache_p2p::files::NarFiles;
use tailcache_p2p::manifest::{P2pManifest, SignedManifest};
use tailcache_p2p::node::{Client, PeerAddr};
use tailcache_p2p::tracker::FileAnnouncement;
use tailcache_p2p::verify::{Outboard, VerifiedOutboard};
use tailcache_store::signing::PublicKey;
use tailcache_store::{Compression, Sha256Hash, StorePathHash};
use tokio::sync::watch;

use crate::choose::{Encoding, Measured, choose, may_rewrite};
use crate::error::FetchError;
use crate::fetch::schedule::Limits;
use crate::fetch::{self, Download, Progress, Scores};
use crate::http_client::{self, Server};
use crate::measure::{Measurements, Route};
use crate::metrics::AgentMetrics;
use crate::narinfo;
use crate::prefetch::Prefetched;
use crate::serve::{CachedFile, nar_response, plain, stream_download};
use crate::store::{FileStore, Partial, Proof};

/// How much better (lower) the agent's `Priority` is than the server's.
pub const PRIORITY_LEAD: u32 = 10;

/// Compressions whose files the agent fetches in pieces (those the server makes).
const PIECEWISE: [Compression; 2] = [Compression::Xz, Compression::Zstd];

/// How long the server's list of a NAR's files may take; past it the narinfo goes as it is.
const FILES_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest list of files read (a few entries of a few hundred bytes).
const MAX_FILES_BODY: u64 = 64 << 10;

/// Everything a request handler needs.
pub(crate) struct Inner {
    pub server: Server,
    pub node: Client,
    pub tracker: Option<PeerAddr>,
    pub trusted: Vec<PublicKey>,
    pub store: Arc<FileStore>,
    pub reseed: bool,
    pub uploads: bool,
    pub min_p2p_size: u64,
    pub limits: Limits,
    pub metrics: AgentMetrics,
    pub registry: Registry,
    pub scores: Scores,
    pub encoding: Encoding,
    pub measurements: Measurements,
    pub prefetched: Prefetched,
}

#[derive(Clone)]
pub struct AgentState(pub(crate) Arc<Inner>);

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("peer_id", &self.0.node.peer_id())
            .finish_non_exhaustive()
    }
}

pub fn router(state: AgentState) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

async fn handle(State(state): State<AgentState>, method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
    }
    if path == "/nix-cache-info" {
        return state.cache_info().await;
    }
    if path == "/metrics" {
        return state.metrics_text();
    }
    if let Some(hash) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix(".narinfo"))
        .filter(|h| !h.contains('/'))
    {
        return state.narinfo(&method, path, hash).await;
    }
    if let Some(file) = path.strip_prefix("/nar/") {
        if !head && let Some(id) = compressed_file_id(file) {
            return state.get_nar(file, id).await;
        }
        return state.proxy(&method, path, true).await;
    }
    plain(StatusCode::NOT_FOUND, "not found\n")
}

/// The server's list of the files of one NAR; `None` when it fails in any way (an older
/// server without the route answers 404) or takes longer than [`FILES_TIMEOUT`].
async fn nar_files(server: Server, target: String) -> Option<NarFiles> {
    let fetch = async {
        let resp = http_client::request(&server, "GET", &target, None)
            .await
            .ok()?;
        if resp.status != 200 {
            tracing::debug!("{target}: status {}", resp.status);
            return None;
        }
        let body = resp.bytes_at_most(MAX_FILES_BODY).await.ok()?;
        NarFiles::from_json(&body)
            .map_err(|e| tracing::debug!("{target}: {e}"))
            .ok()
    };
    tokio::time::timeout(FILES_TIMEOUT, fetch)
        .await
        .ok()
        .flatten()
}

/// Whether `path` is `/nar/<…>.nar` (and not a compressed file).
fn is_uncompressed_nar(path: &str) -> bool {
    path.strip_prefix("/nar/")
        .is_some_and(|f| f.ends_with(".nar"))
}

/// The file id (FileHash) of `<nix32 sha256>.nar.xz|.nar.zst`.
fn compressed_file_id(file: &str) -> Option<FileId> {
    let (stem, _) = Compression::split_file_name(file, &PIECEWISE)?;
    Sha256Hash::from_nix32(stem).ok().map(FileId::from)
}

fn bad_gateway(e: impl std::fmt::Display) -> Response {
    tracing::warn!("cache server: {e}");
    plain(StatusCode::BAD_GATEWAY, "the cache server is unreachable\n")
}

impl AgentState {
    /// Tells the tracker this agent holds `files` (wholly, or `complete == false`: a
    /// download in progress). Only when it uploads.
    pub(crate) async fn announce(&self, files: Vec<FileId>, complete: bool) {
        let Some(tracker) = &self.0.tracker else {
            return;
        };
        if !self.0.uploads || files.is_empty() {
            return;
        }
        let addrs = self.0.node.listen_addrs().await.unwrap_or_default();
        let files = files
            .into_iter()
            .map(|file| FileAnnouncement { file, complete })
            .collect();
        if let Err(e) = self.0.node.announce(tracker.peer, files, addrs).await {
            tracing::warn!("announce to the tracker: {e}");
        }
    }

    /// Tells the tracker this agent no longer holds `files`.
    async fn withdraw(&self, files: Vec<FileId>) {
        if let Some(tracker) = &self.0.tracker
            && !files.is_empty()
        {
            let _ = self.0.node.withdraw(tracker.peer, files).await;
        }
    }

    async fn cache_info(&self) -> Response {
        let resp = match http_client::request(&self.0.server, "GET", "/nix-cache-info", None).await
        {
            Ok(r) => r,
            Err(e) => return bad_gateway(e),
        };
        let status = resp.status;
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return bad_gateway(e),
        };
        if status != 200 {
            return plain(
                StatusCode::BAD_GATEWAY,
                "the cache server has no nix-cache-info\n",
            );
        }
        let out = rewrite_cache_info(&String::from_utf8_lossy(&body));
        ([(header::CONTENT_TYPE, "text/x-nix-cache-info")], out).into_response()
    }

    fn metrics_text(&self) -> Response {
        let m = &self.0.metrics;
        let known = self
            .0
            .scores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        m.peers_known.set(known as i64);
        m.uploaded_bytes
            .set(i64::try_from(self.0.node.stats().uploaded_bytes).unwrap_or(i64::MAX));
        m.set_measured(&self.0.measurements.snapshot());
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.0.registry) {
            tracing::error!("encoding metrics: {e}");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "metrics\n");
        }
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    }

    /// The server's answer to the same request; `count` adds the body to the server bytes.
    /// The GET of an uncompressed NAR is measured too ([`Route::Uncompressed`]).
    async fn proxy(&self, method: &Method, path: &str, count: bool) -> Response {
        let measured = count && *method == Method::GET && is_uncompressed_nar(path);
        let transfer = measured.then(|| self.0.measurements.transfer(Route::Uncompressed));
        let resp = match http_client::request(&self.0.server, method.as_str(), path, None).await {
            Ok(r) => r,
            Err(e) => return bad_gateway(e),
        };
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY));
        for name in ["content-type", "content-length"] {
            if let Some(v) = resp.header(name)
                && let Ok(v) = HeaderValue::from_str(v)
            {
                builder = builder.header(name, v);
            }
        }
        let metrics = self.0.metrics.clone();
        let measurements = self.0.measurements.clone();
        let body = resp.into_stream().map(move |chunk| {
            if count && let Ok(c) = &chunk {
                metrics.server_bytes.inc_by(c.len() as u64);
                // Ends (dropped with the body) when the response does.
                if transfer.is_some() {
                    measurements.received(Route::Uncompressed, c.len() as u64);
                }
            }
            chunk
        });
        builder
            .body(Body::from_stream(body))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response\n"))
    }

    /// `GET|HEAD /<hash>.narinfo`: the server's narinfo naming the file the encoding picks.
    /// A HEAD is answered as the GET would be (its Content-Length included). When nothing
    /// could be picked but the server's file (`server`, or `auto` before a goodput is
    /// measured) the list is not asked for. The proof of the file the answer names is asked
    /// for at once ([`crate::prefetch`]): Nix's request for it comes next.
    async fn narinfo(&self, method: &Method, path: &str, hash: &str) -> Response {
        let measured = self.0.measurements.snapshot();
        let rewrite = may_rewrite(self.0.encoding, &measured) && StorePathHash::parse(hash).is_ok();
        // Asked beside the narinfo, so that a hit still costs one round trip.
        let files = rewrite.then(|| {
            tokio::spawn(nar_files(
                self.0.server.clone(),
                format!("/p2p/files/{hash}"),
            ))
        });
        let abort = |files: Option<tokio::task::JoinHandle<_>>| {
            if let Some(f) = files {
                f.abort();
            }
        };
        let resp = match http_client::request(&self.0.server, "GET", path, None).await {
            Ok(r) => r,
            Err(e) => {
                abort(files);
                return bad_gateway(e);
            }
        };
        let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = resp
            .header("content-type")
            .and_then(|v| HeaderValue::from_str(v).ok());
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                abort(files);
                return bad_gateway(e);
            }
        };
        let body = match String::from_utf8(body) {
            Ok(text) if status == StatusCode::OK => {
                let text = match files {
                    None => text,
                    Some(files) => match files.await.ok().flatten() {
                        Some(files) => self.advertised(&text, &files, &measured).unwrap_or(text),
                        None => {
                            self.0.metrics.file_lists_failed.inc();
                            text
                        }
                    },
                };
                if method == Method::GET {
                    self.ask_proof_ahead(&text);
                }
                text.into_bytes()
            }
            // A miss, an error or no text: passed on as it is.
            other => {
                abort(files);
                other.map_or_else(|e| e.into_bytes(), String::into_bytes)
            }
        };
        let mut response = (status, body).into_response();
        if let Some(v) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        response
    }

    /// Asks for the proof of the file narinfo `text` names, when that file would be fetched
    /// in pieces and is not kept already.
    fn ask_proof_ahead(&self, text: &str) {
        let field = |key| narinfo::field(text, key);
        let Some(file) = field("URL").and_then(|u| u.strip_prefix("nar/")) else {
            return;
        };
        let Some(id) = compressed_file_id(file) else {
            return;
        };
        let Some(size) = field("FileSize").and_then(|s| s.trim().parse::<u64>().ok()) else {
            return;
        };
        if self.0.trusted.is_empty()
            || size < self.0.min_p2p_size
            || (self.0.reseed && self.0.store.get(&id).is_some())
        {
            return;
        }
        self.0.prefetched.ask(file, size, || {
            let (this, file) = (self.clone(), file.to_owned());
            tokio::spawn(async move { this.fetch_proof(&file).await })
        });
    }

    /// `text` naming the file the encoding picks, when that is another than the server's.
    fn advertised(&self, text: &str, files: &NarFiles, measured: &Measured) -> Option<String> {
        let server = match narinfo::field(text, "Compression") {
            Some(name) => Compression::from_name(name)?,
            None => Compression::NARINFO_DEFAULT,
        };
        let file = choose(self.0.encoding, files, server, measured)?;
        let out = narinfo::advertise(text, files, file);
        match &out {
            Some(_) => self.0.metrics.narinfo_rewritten(file.compression),
            None => tracing::debug!("the file list does not fit the narinfo {text:?}"),
        }
        out
    }

    async fn get_json_bytes(&self, target: &str) -> Option<Vec<u8>> {
        let resp = http_client::request(&self.0.server, "GET", target, None)
            .await
            .ok()?;
        if resp.status != 200 {
            return None;
        }
        resp.bytes().await.ok()
    }

    /// A compressed NAR: from the local cache (checked against its kept proof before and
    /// while it is sent), in verified pieces, or proxied.
    async fn get_nar(&self, file: &str, id: FileId) -> Response {
        let target = format!("/nar/{file}");
        if self.0.reseed
            && !self.0.trusted.is_empty()
            && let Some(path) = self.0.store.get(&id)
        {
            match self.serve_kept(&path, file, id).await {
                Ok(response) => return response,
                // Evicted: fetched again below, for this very request.
                Err(e) => self.on_corrupt(id, &e).await,
            }
        }
        // Who holds the file is asked while its proof is fetched, not after; only for a file
        // whose narinfo said it goes in pieces (its proof asked ahead): a small file is
        // proxied, and a question about it would only load the tracker.
        let early = self
            .0
            .tracker
            .as_ref()
            .filter(|_| !self.0.trusted.is_empty() && self.0.prefetched.holds(file))
            .map(|t| {
                fetch::ask_tracker_early(
                    &self.0.node,
                    t,
                    id,
                    &self.0.scores,
                    self.0.limits.max_peers,
                )
            });
        match self.prepare(file, id).await {
            Some((mut download, proof)) => {
                download.tracker_answer = early;
                self.start(download, proof, &target, id).await
            }
            None => {
                if let Some(asked) = early {
                    asked.abort();
                }
                self.proxy(&Method::GET, &target, true).await
            }
        }
    }

    /// Serves a kept file, checked against the proof kept beside it (fetched from the
    /// server for a file kept without one).
    async fn serve_kept(
        &self,
        path: &std::path::Path,
        file: &str,
        id: FileId,
    ) -> Result<Response, FetchError> {
        let proof = match self.0.store.proof(&id) {
            Some(p) => p,
            None => self.fetch_proof(file).await.ok_or(FetchError::NoProof)?,
        };
        let unusable = |reason| FetchError::BadProof { reason };
        let manifest = self
            .check_manifest(file, id, &proof.manifest)
            .map_err(unusable)?;
        let outboard = check_outboard(&manifest, &proof.outboard).map_err(unusable)?;
        let cached = CachedFile::open(path.to_owned(), Arc::new(outboard)).await?;
        let size = cached.size();
        let this = self.clone();
        let body = cached.into_stream(move |e| {
            let e = e.clone();
            tokio::spawn(async move { this.on_corrupt(id, &e).await });
        });
        Ok(nar_response(size, body))
    }

    /// A kept file failed its check: it is evicted (and withdrawn), so that it is fetched
    /// again.
    async fn on_corrupt(&self, id: FileId, e: &FetchError) {
        self.0.metrics.corrupt_files.inc();
        tracing::warn!("cached file {id}: {e}");
        if self.0.store.remove(&id) {
            self.withdraw(vec![id]).await;
        }
    }

    /// The manifest and outboard of `file` from the server, unchecked. Asked together: one
    /// round trip before a download's first piece, not two (for a file too small to fetch in
    /// pieces the outboard, a few dozen bytes, is asked in vain).
    async fn fetch_proof(&self, file: &str) -> Option<Proof> {
        let (manifest, outboard) = (
            format!("/p2p/manifest/{file}"),
            format!("/p2p/outboard/{file}"),
        );
        let (manifest, outboard) = tokio::join!(
            self.get_json_bytes(&manifest),
            self.get_json_bytes(&outboard)
        );
        Some(Proof {
            manifest: manifest?,
            outboard: outboard?,
        })
    }

    /// The manifest in `bytes`, if a trusted key signed it for file `id`; a refusal is
    /// counted and its reason returned.
    fn check_manifest(&self, file: &str, id: FileId, bytes: &[u8]) -> Result<P2pManifest, String> {
        let refused = |reason: String| {
            self.0.metrics.manifests_refused.inc();
            tracing::warn!("manifest for {file} refused: {reason}");
            reason
        };
        let signed = SignedManifest::from_bytes(bytes).map_err(|e| refused(e.to_string()))?;
        match signed.verify(&self.0.trusted) {
            Ok(m) if FileId::from(m.file_hash) == id => Ok(m.clone()),
            Ok(_) => Err(refused("it names another file".into())),
            Err(e) => Err(refused(e.to_string())),
        }
    }

    /// Manifest (trusted signer only) and outboard (against the signed root), and their
    /// bytes to keep with the file; `None` means: fetch from the server alone. Peers are
    /// found by the download itself.
    async fn prepare(&self, file: &str, id: FileId) -> Option<(Download, Proof)> {
        if self.0.trusted.is_empty() {
            return None;
        }
        let ahead = match self.0.prefetched.take(file) {
            Some(asked) => asked.await.ok().flatten(),
            None => None,
        };
        let proof = match ahead {
            Some(p) => {
                self.0.metrics.proofs_prefetched.inc();
                p
            }
            None => self.fetch_proof(file).await?,
        };
        let manifest = self.check_manifest(file, id, &proof.manifest).ok()?;
        if manifest.file_size < self.0.min_p2p_size {
            return None;
        }
        let outboard = match check_outboard(&manifest, &proof.outboard) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("outboard for {file} refused: {e}");
                return None;
            }
        };
        let download = Download {
            node: self.0.node.clone(),
            server: self.0.server.clone(),
            target: format!("/nar/{file}"),
            file: id,
            manifest,
            outboard: Arc::new(outboard),
            tracker: self.0.tracker.clone(),
            scores: self.0.scores.clone(),
            metrics: self.0.metrics.clone(),
            measurements: self.0.measurements.clone(),
            limits: self.0.limits.clone(),
            partial: None,
            tracker_answer: None,
        };
        Some((download, proof))
    }

    async fn start(
        &self,
        mut download: Download,
        proof: Proof,
        target: &str,
        id: FileId,
    ) -> Response {
        let size = download.manifest.file_size;
        let partial = self.0.store.partial_path(&id);
        let opened = (|| -> std::io::Result<(std::fs::File, std::fs::File)> {
            let w = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&partial)?;
            w.set_len(size)?;
            let r = std::fs::File::open(&partial)?;
            Ok((w, r))
        })();
        let (w, r) = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot create {}: {e}; proxying", partial.display());
                return self.proxy(&Method::GET, target, true).await;
            }
        };
        let (tx, rx) = watch::channel(Progress::Verified(0));
        // Peers are served the verified pieces while the download runs.
        let shared = self.0.uploads.then(|| {
            let p = Arc::new(Partial::new(
                partial.clone(),
                u64::from(download.manifest.piece_size),
                size,
            ));
            self.0.store.register(&id, p.clone());
            p
        });
        download.partial = shared.clone();
        let this = self.clone();
        tokio::spawn(async move {
            if shared.is_some() {
                this.announce(vec![id], false).await;
            }
            let ok = download.run(Arc::new(w), &tx).await;
            this.finish_download(id, &partial, ok, shared.as_ref(), &proof)
                .await;
            // Only now: a client that saw the whole file may rely on it being announced.
            if ok {
                let _ = tx.send(Progress::Verified(size));
            }
        });
        nar_response(
            size,
            stream_download(tokio::fs::File::from_std(r), size, rx),
        )
    }

    /// Keeps a finished download (and announces it, withdrawing what it pushed out), or
    /// removes its partial file.
    async fn finish_download(
        &self,
        id: FileId,
        partial: &std::path::Path,
        ok: bool,
        shared: Option<&Arc<Partial>>,
        proof: &Proof,
    ) {
        let mut kept = false;
        if ok && self.0.reseed {
            match self.0.store.insert(&id, partial, proof) {
                Ok(evicted) => {
                    kept = true;
                    self.announce(vec![id], true).await;
                    self.withdraw(evicted).await;
                }
                Err(e) => tracing::warn!("keeping {}: {e}", partial.display()),
            }
        }
        if let Some(p) = shared {
            self.0.store.unregister(&id, p);
        }
        if !kept {
            // The response holds its own handle; unlinking is safe.
            let _ = std::fs::remove_file(partial);
            if shared.is_some() {
                self.withdraw(vec![id]).await;
            }
        }
    }
}

/// The outboard in `bytes`, if it hashes to the manifest's signed root.
fn check_outboard(manifest: &P2pManifest, bytes: &[u8]) -> Result<VerifiedOutboard, String> {
    Outboard::from_bytes(manifest.file_size, manifest.block_log, bytes.to_vec())
        .verify_against(&manifest.blake3_root)
        .map_err(|e| e.to_string())
}

/// The server's `nix-cache-info` with a priority [`PRIORITY_LEAD`] better (lower), so Nix
/// asks the agent first.
fn rewrite_cache_info(text: &str) -> String {
    let mut out = String::new();
    let mut priority_seen = false;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Priority:") {
            let p: u32 = v.trim().parse().unwrap_or(50);
            out.push_str(&format!("Priority: {}\n", p.saturating_sub(PRIORITY_LEAD)));
            priority_seen = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !priority_seen {
        // Nix's default for a cache that states none is 50.
        out.push_str(&format!("Priority: {}\n", 50 - PRIORITY_LEAD));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_info_priority_is_ahead_of_the_servers() {
        let out = rewrite_cache_info("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n");
        assert_eq!(
            out,
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 20\n"
        );
        assert_eq!(
            rewrite_cache_info("StoreDir: /nix/store\n"),
            "StoreDir: /nix/store\nPriority: 40\n"
        );
        assert_eq!(rewrite_cache_info("Priority: 5\n"), "Priority: 0\n");
    }

    /// A stand-in cache server on loopback whose `/p2p/files/<case>` answers as named: what
    /// an older server (404), a broken one (bad JSON, a body too large) or a hung one (no
    /// answer) would send. The agent must then pass the narinfo on as it is.
    #[tokio::test]
    async fn a_file_list_that_fails_in_any_way_is_no_list() {
        use axum::routing::get;
        let good = NarFiles {
            nar_hash: Sha256Hash::digest(b"nar"),
            nar_size: 3,
            files: Vec::new(),
        };
        let json = good.to_json();
        let app = axum::Router::new()
            .route("/p2p/files/good", get(move || async move { json }))
            .route("/p2p/files/bad", get(|| async { "{\"nar_hash\": 1}" }))
            .route(
                "/p2p/files/huge",
                get(|| async { vec![b' '; MAX_FILES_BODY as usize + 1] }),
            )
            .route("/p2p/files/hung", get(std::future::pending::<&'static str>));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let server = Server::new(&url.parse().unwrap()).unwrap();
        let list = |case: &str| nar_files(server.clone(), format!("/p2p/files/{case}"));
        assert_eq!(list("good").await, Some(good));
        for case in ["missing", "bad", "huge"] {
            assert_eq!(list(case).await, None, "{case}");
        }
        let started = std::time::Instant::now();
        assert_eq!(list("hung").await, None);
        assert!(started.elapsed() >= FILES_TIMEOUT);
    }

    #[test]
    fn only_compressed_file_names_are_fetched_in_pieces() {
        let h = Sha256Hash::digest(b"x");
        let n = h.to_nix32();
        assert_eq!(compressed_file_id(&format!("{n}.nar.xz")), Some(h.into()));
        assert_eq!(compressed_file_id(&format!("{n}.nar.zst")), Some(h.into()));
        assert_eq!(compressed_file_id(&format!("{n}.nar")), None);
        assert_eq!(compressed_file_id(&format!("{n}.nar.bz2")), None);
        assert_eq!(compressed_file_id("zzz.nar.xz"), None);
    }
}
