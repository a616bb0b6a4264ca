//! The server's P2P endpoints: for every compressed NAR, a manifest
//! signed in the P2P domain (`/p2p/manifest/…`) and the BLAKE3 outboard (`/p2p/outboard/…`).
//! A client that trusts only the server's public key (from `/pubkey`, made by real Nix)
//! verifies the manifest, the outboard against its root and every byte of the NAR file; a
//! manifest checked with any other key is refused, and the endpoints survive a restart.

mod common;

use common::p2p_files::{advertised, fetch_verified, server_keys};
use common::{TestCache, TestStore, decompress, http};
use tailcache_p2p::Error;
use tailcache_p2p::manifest::SignedManifest;
use tailcache_store::Sha256Hash;
use tailcache_store::signing::PublicKey;

#[test]
fn manifests_and_outboards_verify_every_byte_with_the_servers_key_only() {
    let store = TestStore::build();
    let key = store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-p2p-1");
    let state = store.scratch("state");
    let start = || {
        TestCache::builder()
            .store(&store)
            .secret_key(&key.secret)
            .compression("xz")
            .state_dir(&state)
            .start()
    };
    let cache = start();
    // A 32 MiB random file (thousands of groups) and small single-group ones.
    let paths = [store.path("big"), store.path("leaf"), store.path("shapes")];
    let infos = cache.wait_compressed(&paths, "xz");
    let trusted = server_keys(&cache);
    assert_eq!(trusted.len(), 1);
    assert_eq!(trusted[0].to_nix_string(), key.public);

    let mut fetched = Vec::new();
    for (path, info) in paths.iter().zip(&infos) {
        let f = fetch_verified(&cache, &advertised(info), &trusted);
        assert_eq!(decompress("xz", &f.data), store.dump(path), "{path}");
        fetched.push(f);
    }
    let big = &fetched[0];
    assert!(
        big.outboard.group_count() > 1000,
        "the big file spans many groups"
    );
    assert_eq!(fetched[1].outboard.group_count(), 1);

    // A flipped byte in the file is caught in exactly its group.
    let mut bad = big.data.clone();
    let at = bad.len() / 2;
    bad[at] ^= 1;
    match big.outboard.verify_range(0, bad.len() as u64, &bad) {
        Err(Error::GroupsFailed { failed }) => {
            assert_eq!(failed, vec![at as u64 / big.outboard.group_size()]);
        }
        other => panic!("tampered NAR accepted: {other:?}"),
    }
    // Another file's bytes do not verify.
    assert!(
        big.outboard
            .verify_range(0, fetched[2].data.len() as u64, &fetched[2].data)
            .is_err()
    );

    // Any other key refuses the manifest: another name, and Nix's own key of the same name.
    let manifest = |c: &TestCache, file: &str| {
        SignedManifest::from_bytes(&c.get(&format!("/p2p/manifest/{file}")).body).unwrap()
    };
    let signed = manifest(&cache, &big.file);
    let other = store
        .nix()
        .generate_key(&store.scratch("other"), "itest-p2p-2");
    let same_name = store
        .nix()
        .generate_key(&store.scratch("same-name"), "itest-p2p-1");
    assert_ne!(same_name.public, key.public);
    let err = signed
        .verify(&[PublicKey::parse(&other.public).unwrap()])
        .unwrap_err();
    assert!(matches!(err, Error::UntrustedSigner { .. }), "{err:?}");
    let err = signed
        .verify(&[PublicKey::parse(&same_name.public).unwrap()])
        .unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");

    // The outboard is a plain resource: HEAD gives its length, Range a part of it.
    let obao = format!("/p2p/outboard/{}", big.file);
    let full = cache.get(&obao).body;
    let head = cache.head(&obao);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(full.len().to_string().as_str())
    );
    let part = http::request(cache.url(), "GET", &obao, &[("Range", "bytes=32-95")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, full[32..96]);

    // After a restart the same files keep their manifests and outboards.
    drop(cache);
    let cache = start();
    for (info, f) in infos.iter().zip(&fetched) {
        let again = fetch_verified(&cache, &advertised(info), &trusted);
        assert_eq!(again.file, f.file);
        assert_eq!(again.data, f.data);
    }
    assert_eq!(manifest(&cache, &big.file).manifest, signed.manifest);
}

#[test]
fn unknown_or_malformed_files_are_refused() {
    let store = TestStore::build_small();
    let cache = TestCache::builder().store(&store).compression("xz").start();
    let unknown = Sha256Hash::digest(b"no such file").to_nix32();
    for kind in ["manifest", "outboard"] {
        for (target, status) in [
            (format!("/p2p/{kind}/{unknown}.nar.xz"), 404),
            (format!("/p2p/{kind}/{unknown}.nar.zst"), 404),
            (format!("/p2p/{kind}/{unknown}.nar"), 400),
            (format!("/p2p/{kind}/{unknown}.nar.xz.obao"), 400),
            (format!("/p2p/{kind}/../{unknown}.nar.xz"), 404),
            (format!("/p2p/{kind}/x{unknown}.nar.xz"), 400),
        ] {
            let r = cache.get(&target);
            assert_eq!(r.status, status, "{target}: {}", r.text());
        }
    }
}
