//! A server's files of one NAR as a client sees them: the list (`GET /p2p/files/<hash>`),
//! and for a compressed file its signed manifest, BLAKE3 outboard and bytes, each verified
//! with the trusted keys only (what an agent does before using a file from peers).

use std::time::{Duration, Instant};

use tailcache_p2p::files::{NarFile, NarFiles};
use tailcache_p2p::manifest::SignedManifest;
use tailcache_p2p::verify::{Outboard, VerifiedOutboard};
use tailcache_store::signing::PublicKey;
use tailcache_store::{Compression, Sha256Hash};

use super::nix::hash_part;
use super::{NarInfo, TestCache};

/// What a client fetches and checks for one NAR file.
pub struct Fetched {
    /// `<filehash>.nar.<ext>`
    pub file: String,
    pub data: Vec<u8>,
    pub outboard: VerifiedOutboard,
}

/// Generous bound for archive files on a loaded machine (their worker runs only on otherwise
/// idle cores).
pub const ARCHIVE_DEADLINE: Duration = Duration::from_secs(300);

/// Polls `/p2p/files` of `paths` until each lists a file in `compression`; panics at the
/// deadline.
pub fn wait_listed(server: &TestCache, paths: &[&str], compression: Compression) -> Vec<NarFiles> {
    let deadline = Instant::now() + ARCHIVE_DEADLINE;
    loop {
        let files: Vec<NarFiles> = paths.iter().map(|p| nar_files(server, p)).collect();
        if files.iter().all(|f| f.get(compression).is_some()) {
            return files;
        }
        assert!(
            Instant::now() < deadline,
            "after {ARCHIVE_DEADLINE:?} not every path has its {compression:?} file\nstderr:\n{}",
            server.stderr()
        );
        // Polling the server's real state.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The server's public keys (`/pubkey`).
pub fn server_keys(cache: &TestCache) -> Vec<PublicKey> {
    let r = cache.get("/pubkey");
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .map(|l| PublicKey::parse(l).unwrap())
        .collect()
}

/// The file a narinfo advertises.
pub fn advertised(info: &NarInfo) -> NarFile {
    NarFile {
        url: info.get("URL").unwrap().to_owned(),
        compression: info.get("Compression").unwrap().parse().unwrap(),
        file_hash: Sha256Hash::parse(info.get("FileHash").unwrap()).unwrap(),
        file_size: info.get("FileSize").unwrap().parse().unwrap(),
    }
}

/// `GET /p2p/files/<hash>` of a store path: 200 and the JSON of the type agents read.
pub fn nar_files(cache: &TestCache, store_path: &str) -> NarFiles {
    let r = cache.get(&format!("/p2p/files/{}", hash_part(store_path)));
    assert_eq!(r.status, 200, "files of {store_path}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    NarFiles::from_json(&r.body).unwrap_or_else(|e| panic!("files of {store_path}: {e}"))
}

/// Fetches manifest, outboard and bytes of a compressed file, and verifies all three with
/// `trusted` only, and the manifest against what `f` says of the file.
pub fn fetch_verified(cache: &TestCache, f: &NarFile, trusted: &[PublicKey]) -> Fetched {
    let file = f.url.strip_prefix("nar/").unwrap().to_owned();

    let r = cache.get(&format!("/p2p/manifest/{file}"));
    assert_eq!(r.status, 200, "manifest of {file}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let signed = SignedManifest::from_bytes(&r.body).unwrap();
    let m = signed.verify(trusted).unwrap().clone();
    assert_eq!(m.file_hash, f.file_hash);
    assert_eq!(m.file_size, f.file_size);
    assert_eq!(m.compression, f.compression);

    let r = cache.get(&format!("/p2p/outboard/{file}"));
    assert_eq!(r.status, 200, "outboard of {file}: {}", r.text());
    let outboard = Outboard::from_bytes(m.file_size, m.block_log, r.body)
        .verify_against(&m.blake3_root)
        .unwrap();

    let r = cache.get(&format!("/{}", f.url));
    assert_eq!(r.status, 200);
    let mut stream = outboard.stream();
    let mut data = Vec::new();
    for piece in r.body.chunks(100_000) {
        stream.push(piece, &mut data).unwrap();
    }
    stream.finish().unwrap();
    assert_eq!(data, r.body);
    assert_eq!(Sha256Hash::digest(&data), m.file_hash);
    Fetched {
        file,
        data,
        outboard,
    }
}
