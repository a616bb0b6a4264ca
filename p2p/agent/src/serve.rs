//! What the agent hands Nix for a NAR file: only bytes it has verified against the signed
//! BLAKE3 root. A download in progress is streamed up to its verified prefix
//! ([`stream_download`]); a file from the agent's cache is checked whole before the
//! response starts — a file that rotted on disk is refused, so the caller evicts it and
//! fetches it again for this very request — and every chunk is checked again as it is sent
//! ([`CachedFile`]): bytes that change after the check stop the response before them.

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

/// A file of the agent's cache, checked against its verified outboard before the response
/// starts and again chunk by chunk as it is sent.
pub struct CachedFile {
    file: tokio::fs::File,
    outboard: Arc<VerifiedOutboard>,
}

impl std::fmt::Debug for CachedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedFile")
            .field("size", &self.outboard.file_size())
            .finish_non_exhaustive()
    }
}

/// Bytes read and checked at a time: whole verification groups.
fn chunk_len(outboard: &VerifiedOutboard) -> u64 {
    let group = outboard.group_size().max(1);
    group * (CHUNK / group).max(1)
}

/// Whether `data` is the file's bytes at `pos`; `Corrupt` names the first bad byte's group.
fn check(outboard: &VerifiedOutboard, pos: u64, data: &[u8]) -> Result<(), FetchError> {
    match outboard.verify_range(pos, data.len() as u64, data) {
        Ok(()) => Ok(()),
        Err(tailcache_p2p::Error::GroupsFailed { failed }) => Err(FetchError::Corrupt {
            offset: failed.first().map_or(pos, |g| g * outboard.group_size()),
        }),
        Err(_) => Err(FetchError::Corrupt { offset: pos }),
    }
}

/// Reads all of the file at `path` and checks it; returns it opened at its start.
fn check_whole(
    path: &std::path::Path,
    outboard: &VerifiedOutboard,
) -> Result<std::fs::File, FetchError> {
    use std::io::{Read as _, Seek as _};
    let read = |e: std::io::Error| FetchError::Read {
        reason: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    let size = file.metadata().map_err(read)?.len();
    if size != outboard.file_size() {
        return Err(FetchError::Corrupt {
            offset: size.min(outboard.file_size()),
        });
    }
    let chunk = chunk_len(outboard);
    let mut buf = vec![0u8; usize::try_from(chunk).map_err(|e| read(std::io::Error::other(e)))?];
    let mut pos = 0;
    loop {
        let n = (size - pos).min(chunk) as usize;
        file.read_exact(&mut buf[..n]).map_err(read)?;
        check(outboard, pos, &buf[..n])?;
        pos += n as u64;
        if pos >= size {
            break;
        }
    }
    file.rewind().map_err(read)?;
    Ok(file)
}

impl CachedFile {
    /// Opens the file at `path` and checks all of it (on a blocking thread, a chunk at a
    /// time), so that a corrupt file is refused before any response starts and the caller
    /// can fetch it again at once.
    pub async fn open(
        path: std::path::PathBuf,
        outboard: Arc<VerifiedOutboard>,
    ) -> Result<Self, FetchError> {
        let ob = outboard.clone();
        let file = tokio::task::spawn_blocking(move || check_whole(&path, &ob))
            .await
            .map_err(|e| FetchError::Task {
                reason: e.to_string(),
            })??;
        Ok(CachedFile {
            file: tokio::fs::File::from_std(file),
            outboard,
        })
    }

    pub fn size(&self) -> u64 {
        self.outboard.file_size()
    }

    /// The file's bytes, in order, each chunk checked again as it is read (the file may
    /// change on disk after [`CachedFile::open`]); at a chunk that does not verify the
    /// stream ends in an error, after `on_corrupt` is called with it.
    pub fn into_stream(
        self,
        on_corrupt: impl FnOnce(&FetchError) + Send + 'static,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let chunk = chunk_len(&self.outboard);
        futures::stream::try_unfold(
            (self, 0u64, Some(on_corrupt)),
            move |(mut this, pos, mut on_corrupt)| async move {
                if pos >= this.size() {
                    return Ok(None);
                }
                let n = (this.size() - pos).min(chunk);
                let checked = match read_at(&mut this.file, pos, n).await {
                    Ok(buf) => check(&this.outboard, pos, &buf).map(|()| buf),
                    Err(e) => Err(FetchError::Read {
                        reason: e.to_string(),
                    }),
                };
                match checked {
                    Ok(buf) => Ok(Some((buf, (this, pos + n, on_corrupt)))),
                    Err(e) => {
                        if let Some(f) = on_corrupt.take() {
                            f(&e);
                        }
                        Err(std::io::Error::other(e))
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use tailcache_p2p::verify::{DEFAULT_BLOCK_LOG, outboard_of_reader};

    fn outboard_of(data: &[u8]) -> Arc<VerifiedOutboard> {
        let (root, ob) = outboard_of_reader(data, DEFAULT_BLOCK_LOG).unwrap();
        Arc::new(ob.verify_against(&root).unwrap())
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_file_corrupt_anywhere_is_refused_before_any_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let truth = data(3 * CHUNK as usize + 1000);
        let ob = outboard_of(&truth);
        std::fs::write(&path, &truth).unwrap();
        assert!(CachedFile::open(path.clone(), ob.clone()).await.is_ok());
        let mut rotten = truth.clone();
        rotten[2 * CHUNK as usize + 17] ^= 1;
        std::fs::write(&path, &rotten).unwrap();
        let err = CachedFile::open(path.clone(), ob.clone())
            .await
            .unwrap_err();
        let group = ob.group_size();
        assert_eq!(
            err,
            FetchError::Corrupt {
                offset: (2 * CHUNK + 17) / group * group
            }
        );
        std::fs::write(&path, &truth[..truth.len() - 1]).unwrap();
        assert!(matches!(
            CachedFile::open(path, ob).await,
            Err(FetchError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn bytes_that_rot_after_the_check_are_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let truth = data(3 * CHUNK as usize + 1000);
        std::fs::write(&path, &truth).unwrap();
        let cached = CachedFile::open(path.clone(), outboard_of(&truth))
            .await
            .unwrap();
        // Rots between the check and the send, in the third chunk.
        let mut rotten = truth.clone();
        rotten[2 * CHUNK as usize + 5] ^= 1;
        std::fs::write(&path, &rotten).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let items: Vec<std::io::Result<Bytes>> = cached
            .into_stream(move |e| tx.send(e.clone()).unwrap())
            .collect()
            .await;
        let sent: Vec<u8> = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .flat_map(|b| b.to_vec())
            .collect();
        assert_eq!(sent, truth[..2 * CHUNK as usize]);
        assert!(items.last().unwrap().is_err());
        assert!(matches!(rx.try_recv(), Ok(FetchError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn an_intact_file_streams_whole_even_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, CHUNK as usize, 2 * CHUNK as usize + 3] {
            let path = dir.path().join(format!("f{len}"));
            let truth = data(len);
            std::fs::write(&path, &truth).unwrap();
            let cached = CachedFile::open(path, outboard_of(&truth)).await.unwrap();
            let sent: Vec<u8> = cached
                .into_stream(|e| panic!("{e}"))
                .map(|b| b.unwrap().to_vec())
                .collect::<Vec<_>>()
                .await
                .concat();
            assert!(sent == truth, "len {len}");
        }
    }
}
