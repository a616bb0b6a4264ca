//! One compression job: dump a store path as a NAR, check it against the NAR hash the store
//! database records, compress it (zstd, or xz with liblzma's multi-threaded encoder, its
//! single-threaded one for one thread) into a temporary file while hashing the compressed
//! bytes — SHA-256 for the narinfo, and the BLAKE3 tree for P2P verification — then rename
//! the outboard to `<filehash>.nar.xz.obao` and the file to `<filehash>.nar.xz` (both before
//! the index entry names them). Runs on a compression worker's thread (see `actor`); memory
//! is bounded by the encoders' buffers, not the NAR size (the outboard is 32 bytes per 16 KiB
//! of compressed file).

use std::path::PathBuf;

use tailcache_p2p::verify::{DEFAULT_BLOCK_LOG, Outboard, OutboardBuilder};
use tailcache_store::hash::{HashingCounter, TeeWriter};
use tailcache_store::nar::NarEncoder;
use tailcache_store::{IoError, Sha256Hash, StorePathHash};

use super::nar_cache::{NarCache, NarEntry};
use crate::config::Compression;

/// What to compress and how.
#[derive(Debug, Clone)]
pub struct Job {
    pub path_hash: StorePathHash,
    pub physical_path: PathBuf,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub compression: Compression,
    pub level: u32,
    pub threads: u32,
}

/// Why a job produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(
        "{path}: the store path's contents (NAR {got_hash}, {got_size} bytes) differ from the database's record ({want_hash}, {want_size} bytes); not caching it"
    )]
    Mismatch {
        path: String,
        got_hash: Sha256Hash,
        got_size: u64,
        want_hash: Sha256Hash,
        want_size: u64,
    },
    #[error("compression is disabled")]
    Disabled,
    #[error(transparent)]
    Io(#[from] IoError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CompressError {
    let context = context.into();
    move |source| IoError::new(context, source).into()
}

/// Runs `job`, leaving either a complete file in `cache`'s directory or nothing.
pub fn run(job: &Job, cache: &NarCache) -> Result<NarEntry, CompressError> {
    let tmp = cache.temp_path("nar");
    let tmp_outboard = cache.temp_path("obao");
    let result = compress_to(job, &tmp).and_then(|(file_hash, file_size, root, outboard)| {
        write_synced(&tmp_outboard, outboard.as_bytes())?;
        let dest = cache.outboard_path(&file_hash, job.compression);
        std::fs::rename(&tmp_outboard, &dest)
            .map_err(io(format!("rename to {}", dest.display())))?;
        Ok((file_hash, file_size, root))
    });
    let (file_hash, file_size, root) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&tmp_outboard);
            return Err(e);
        }
    };
    let entry = NarEntry::new(
        job.compression,
        file_hash,
        file_size,
        job.nar_hash,
        Some(root),
    );
    let dest = cache.file_path(&file_hash, job.compression);
    std::fs::rename(&tmp, &dest).map_err(io(format!("rename to {}", dest.display())))?;
    Ok(entry)
}

fn write_synced(path: &std::path::Path, bytes: &[u8]) -> Result<(), CompressError> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).map_err(io(format!("create {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("write {}", path.display())))
}

type Compressed = (Sha256Hash, u64, [u8; 32], Outboard);

fn compress_to(job: &Job, tmp: &std::path::Path) -> Result<Compressed, CompressError> {
    let file = std::fs::File::create(tmp).map_err(io(format!("create {}", tmp.display())))?;
    let mut tree = OutboardBuilder::new(DEFAULT_BLOCK_LOG)
        .map_err(|e| io("BLAKE3 outboard")(std::io::Error::other(e)))?;
    // The file hash and the BLAKE3 tree see exactly the compressed bytes on their way to
    // the file.
    let mut file_counter = HashingCounter::default();
    let file = std::io::BufWriter::with_capacity(256 * 1024, file);
    let out = TeeWriter::new(file, |bytes: &[u8]| {
        file_counter.update(bytes);
        tree.update(bytes);
    });
    let display = job.physical_path.display().to_string();
    let mut nar = NarEncoder::new(&job.physical_path)
        .map_err(|e| io(display.clone())(std::io::Error::other(e)))?;
    let mut nar_counter = HashingCounter::default();
    let out = match job.compression {
        Compression::None => return Err(CompressError::Disabled),
        Compression::Xz => {
            let threads = match job.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                n => n,
            };
            let check = liblzma::stream::Check::Crc64;
            // One thread: liblzma's single-threaded encoder, on this very thread (the
            // multi-threaded one would start a worker of its own even for one).
            let stream = if threads == 1 {
                liblzma::stream::Stream::new_easy_encoder(job.level, check)
            } else {
                liblzma::stream::MtStreamBuilder::new()
                    .threads(threads)
                    .preset(job.level)
                    .check(check)
                    .encoder()
            }
            .map_err(|e| io("xz encoder")(std::io::Error::other(e)))?;
            let mut enc = liblzma::write::XzEncoder::new_stream(out, stream);
            pump(&mut nar, &mut nar_counter, &mut enc, &display)?;
            enc.finish().map_err(io("xz finish"))?
        }
        Compression::Zstd => {
            let mut enc =
                zstd::stream::write::Encoder::new(out, job.level as i32).map_err(io("zstd"))?;
            // Workers only when asked for (compression_threads ≥ 2): they compress while this
            // thread dumps and hashes, ~1.7× faster on two cores, but the buffers of the
            // threads each job starts stay in the allocator's arenas and lift the server's
            // RSS under load afterwards (141 MB against 128 MB with 800 stalled readers).
            if job.threads > 1 {
                enc.multithread(job.threads).map_err(io("zstd workers"))?;
            }
            pump(&mut nar, &mut nar_counter, &mut enc, &display)?;
            enc.finish().map_err(io("zstd finish"))?
        }
    };
    let (got_hash, got_size) = nar_counter.finish();
    if got_hash != job.nar_hash || got_size != job.nar_size {
        return Err(CompressError::Mismatch {
            path: display,
            got_hash,
            got_size,
            want_hash: job.nar_hash,
            want_size: job.nar_size,
        });
    }
    let file = out
        .into_inner()
        .into_inner()
        .map_err(|e| io("flush")(e.into_error()))?;
    file.sync_all().map_err(io("fsync"))?;
    let (file_hash, file_size) = file_counter.finish();
    let (root, outboard) = tree.finish();
    Ok((file_hash, file_size, root, outboard))
}

/// Copies the NAR stream into the encoder, hashing the uncompressed bytes on the way.
fn pump(
    nar: &mut NarEncoder,
    counter: &mut HashingCounter,
    enc: &mut impl std::io::Write,
    display: &str,
) -> Result<(), CompressError> {
    use std::io::Read as _;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match nar.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(format!("dump {display}"))(e)),
        };
        counter.update(&buf[..n]);
        enc.write_all(&buf[..n])
            .map_err(io("write compressed NAR"))?;
    }
}
