//! What the agent hands Nix for a NAR file: only bytes it has verified against the signed
//! BLAKE3 root. A download in progress is streamed up to its verified prefix
//! ([`stream_download`]); a file from the agent's cache is read and checked group by group
//! as it is sent ([`CachedFile`]), so bytes that rotted on disk never leave the agent: the
//! response stops before them and the file is reported corrupt (the caller evicts it, and
//! the next request fetches it again).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use tailcache_p2p::verify::VerifiedOutboard;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::watch;

use crate::error::FetchError;
use crate::fetch::Progress;

/// Bytes read (and verified) from a file at a time.
const CHUNK: u64 = 256 * 1024;

pub fn plain(status: StatusCode, msg: &'static str) -> Response {
    (status, msg).into_response()
}

/// A 200 response of `size` bytes of NAR file.
pub fn nar_response(
    size: u64,
    body: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::CONTENT_LENGTH, size)
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response\n"))
}

/// The bytes of the file a download writes, in order, as its verified prefix (from
/// `progress`) grows.
pub fn stream_download(
    file: tokio::fs::File,
    size: u64,
    progress: watch::Receiver<Progress>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(
        (file, 0u64, progress),
        move |(mut file, pos, mut progress)| async move {
            loop {
                if pos >= size {
                    return Ok(None);
                }
                let verified = match &*progress.borrow_and_update() {
                    Progress::Verified(n) => *n,
                    Progress::Failed(e) => return Err(std::io::Error::other(e.clone())),
                };
                if pos < verified {
                    let n = (verified - pos).min(CHUNK);
                    let buf = read_at(&mut file, pos, n).await?;
                    return Ok(Some((buf, (file, pos + n, progress))));
                }
                if progress.changed().await.is_err() {
                    // The download ended: the last value is final.
                    if let Progress::Verified(n) = &*progress.borrow()
                        && *n > pos
                    {
                        continue;
                    }
                    return Err(std::io::Error::other(FetchError::Ended));
                }
            }
        },
    )
}

async fn read_at(file: &mut tokio::fs::File, pos: u64, n: u64) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; usize::try_from(n).map_err(std::io::Error::other)?];
    file.seek(std::io::SeekFrom::Start(pos)).await?;
    file.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

/// A file of the agent's cache, checked against its verified outboard as it is read.
pub struct CachedFile {
    file: tokio::fs::File,
    outboard: Arc<VerifiedOutboard>,
    /// Bytes read and checked at a time: whole verification groups.
    chunk: u64,
    /// The first chunk, already checked.
    first: Bytes,
}

impl std::fmt::Debug for CachedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedFile")
            .field("size", &self.outboard.file_size())
            .finish_non_exhaustive()
    }
}

impl CachedFile {
    /// Opens the file and checks its size and first chunk, so that a file corrupt there is
    /// refused before any response starts.
    pub async fn open(
        file: tokio::fs::File,
        outboard: Arc<VerifiedOutboard>,
    ) -> Result<Self, FetchError> {
        let read = |e: std::io::Error| FetchError::Read {
            reason: e.to_string(),
        };
        let size = file.metadata().await.map_err(read)?.len();
        if size != outboard.file_size() {
            return Err(FetchError::Corrupt {
                offset: size.min(outboard.file_size()),
            });
        }
        let group = outboard.group_size().max(1);
        let chunk = group * (CHUNK / group).max(1);
        let mut cached = CachedFile {
            file,
            outboard,
            chunk,
            first: Bytes::new(),
        };
        cached.first = cached.read_checked(0).await?;
        Ok(cached)
    }

    pub fn size(&self) -> u64 {
        self.outboard.file_size()
    }

    /// The chunk at `pos`, if it verifies.
    async fn read_checked(&mut self, pos: u64) -> Result<Bytes, FetchError> {
        let n = (self.size() - pos).min(self.chunk);
        let buf = read_at(&mut self.file, pos, n)
            .await
            .map_err(|e| FetchError::Read {
                reason: e.to_string(),
            })?;
        match self.outboard.verify_range(pos, n, &buf) {
            Ok(()) => Ok(buf),
            Err(tailcache_p2p::Error::GroupsFailed { failed }) => Err(FetchError::Corrupt {
                offset: failed
                    .first()
                    .map_or(pos, |g| g * self.outboard.group_size()),
            }),
            Err(_) => Err(FetchError::Corrupt { offset: pos }),
        }
    }

    /// The verified bytes, in order; at the first chunk that does not verify the stream
    /// ends in an error, after `on_corrupt` is called with it.
    pub fn into_stream(
        mut self,
        on_corrupt: impl FnOnce(&FetchError) + Send + 'static,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let first = std::mem::take(&mut self.first);
        let first_len = first.len() as u64;
        let head = futures::stream::iter([Ok(first)]);
        let rest = futures::stream::try_unfold(
            (self, first_len, Some(on_corrupt)),
            |(mut this, pos, mut on_corrupt)| async move {
                if pos >= this.size() {
                    return Ok(None);
                }
                match this.read_checked(pos).await {
                    Ok(buf) => {
                        let next = pos + buf.len() as u64;
                        Ok(Some((buf, (this, next, on_corrupt))))
                    }
                    Err(e) => {
                        if let Some(f) = on_corrupt.take() {
                            f(&e);
                        }
                        Err(std::io::Error::other(e))
                    }
                }
            },
        );
        futures::StreamExt::chain(head, rest)
    }
}
