//! The cache judged by the stock Nix client: with
//! `require-sigs = true` and only the server's key trusted, `nix copy --from`
//! and `nix-store -r` get every store shape, uncompressed and xz, byte-identical
//! to the source store; and Nix refuses a wrong key, a tampered NAR and a path
//! the cache does not have.

mod common;

use common::nix::{
    Fetch, assert_client_matches, assert_success, client_store, is_valid, stderr_of,
    unknown_store_path,
};
use common::{TestCache, TestStore};

fn start(store: &TestStore, compression: &str, key: &common::KeyPair) -> TestCache {
    let cache = TestCache::builder()
        .store(store)
        .compression(compression)
        .secret_key(&key.secret)
        .start();
    if compression != "none" {
        // Nix must get the compressed files, so wait until they are advertised.
        let infos = cache.wait_compressed(&store.closure(), compression);
        for i in &infos {
            let url = i.get("URL").unwrap();
            assert!(url.ends_with(".nar.xz"), "xz narinfo with URL {url}");
        }
    }
    cache
}

fn copy_and_substitute_every_shape(compression: &str) {
    let store = TestStore::build();
    let key = store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-cache-1");
    let cache = start(&store, compression, &key);
    let paths = store.closure();
    assert!(paths.len() >= 7, "closure {paths:?}");
    let clients = store.scratch("clients");

    let copy = client_store(&clients, "copy");
    let out = Fetch::Copy.run(store.nix(), cache.url(), &copy, &key.public, &paths);
    assert_success("nix copy --from the cache", &out);
    assert_client_matches(&store, &copy, &paths);
    let got = common::nix::path_infos(store.nix(), &copy, &paths);
    for info in got.iter().filter(|i| store.info(&i.path).ca.is_none()) {
        let prefix = format!("{}:", key.name());
        assert!(
            info.signatures.iter().any(|s| s.starts_with(&prefix)),
            "{} arrived without the cache's signature: {:?}",
            info.path,
            info.signatures
        );
    }

    let subst = client_store(&clients, "substitute");
    let out = Fetch::Substitute.run(store.nix(), cache.url(), &subst, &key.public, &paths);
    assert_success("nix-store -r with the cache as substituter", &out);
    assert_client_matches(&store, &subst, &paths);
}

#[test]
fn stock_nix_gets_every_shape_uncompressed() {
    copy_and_substitute_every_shape("none");
}

#[test]
fn stock_nix_gets_every_shape_xz() {
    copy_and_substitute_every_shape("xz");
}

fn wrong_key_is_refused(compression: &str) {
    let store = TestStore::build_small();
    let keys = store.scratch("keys");
    let key = store.nix().generate_key(&keys, "itest-cache-1");
    let other = store.nix().generate_key(&keys, "itest-other-1");
    let cache = start(&store, compression, &key);
    // Input-addressed paths need a trusted signature (CA paths would not).
    let target = store.path("refs");
    let clients = store.scratch("clients");

    let copy = client_store(&clients, "copy");
    let out = Fetch::Copy.run(store.nix(), cache.url(), &copy, &other.public, &[target]);
    assert!(
        !out.status.success(),
        "nix copy trusted a path signed by an untrusted key"
    );
    let err = stderr_of(&out);
    assert!(
        err.contains("lacks a valid signature") || err.contains("not signed by any of the keys"),
        "nix copy failed for another reason:\n{err}"
    );
    assert!(!is_valid(store.nix(), &copy, target));

    let subst = client_store(&clients, "substitute");
    let out = Fetch::Substitute.run(store.nix(), cache.url(), &subst, &other.public, &[target]);
    assert!(
        !out.status.success(),
        "nix-store -r accepted an untrusted signature"
    );
    let err = stderr_of(&out);
    assert!(
        err.contains("not signed by any of the keys") || err.contains("lacks a valid signature"),
        "nix-store -r failed for another reason:\n{err}"
    );
    assert!(!is_valid(store.nix(), &subst, target));
}

#[test]
fn wrong_key_is_refused_uncompressed() {
    wrong_key_is_refused("none");
}

#[test]
fn wrong_key_is_refused_xz() {
    wrong_key_is_refused("xz");
}

fn tampered_nar_is_refused(compression: &str) {
    let store = TestStore::build_small();
    let key = store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-cache-1");
    let cache = start(&store, compression, &key);
    let target = store.path("leaf");
    cache.tamper_nar(&store, target, b"leaf-content");
    let clients = store.scratch("clients");

    let copy = client_store(&clients, "copy");
    let out = Fetch::Copy.run(store.nix(), cache.url(), &copy, &key.public, &[target]);
    assert!(!out.status.success(), "nix copy accepted a tampered NAR");
    let err = stderr_of(&out);
    assert!(
        err.contains("hash mismatch"),
        "nix copy failed for another reason:\n{err}"
    );
    assert!(!is_valid(store.nix(), &copy, target));

    let subst = client_store(&clients, "substitute");
    let out = Fetch::Substitute.run(store.nix(), cache.url(), &subst, &key.public, &[target]);
    assert!(
        !out.status.success(),
        "nix-store -r accepted a tampered NAR"
    );
    let err = stderr_of(&out);
    assert!(
        err.contains("hash mismatch"),
        "nix-store -r failed for another reason:\n{err}"
    );
    assert!(!is_valid(store.nix(), &subst, target));
}

#[test]
fn tampered_nar_is_refused_uncompressed() {
    tampered_nar_is_refused("none");
}

#[test]
fn tampered_nar_is_refused_xz() {
    tampered_nar_is_refused("xz");
}

fn unknown_path_is_not_substituted(compression: &str) {
    let store = TestStore::build_small();
    let key = store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-cache-1");
    let cache = start(&store, compression, &key);
    let missing = unknown_store_path();
    let clients = store.scratch("clients");

    let copy = client_store(&clients, "copy");
    let out = Fetch::Copy.run(store.nix(), cache.url(), &copy, &key.public, &[&missing]);
    assert!(
        !out.status.success(),
        "nix copy of a path the cache lacks succeeded"
    );
    let err = stderr_of(&out);
    assert!(
        err.contains("no substituter that can build it")
            || err.contains("does not exist")
            || err.contains("is not valid"),
        "nix copy failed for another reason:\n{err}"
    );
    assert!(!is_valid(store.nix(), &copy, &missing));

    let subst = client_store(&clients, "substitute");
    let out = Fetch::Substitute.run(store.nix(), cache.url(), &subst, &key.public, &[&missing]);
    assert!(
        !out.status.success(),
        "nix-store -r of a path the cache lacks succeeded"
    );
    let err = stderr_of(&out);
    assert!(
        err.contains("don't know how to build"),
        "nix-store -r failed for another reason:\n{err}"
    );
    assert!(!is_valid(store.nix(), &subst, &missing));
}

#[test]
fn unknown_path_is_not_substituted_uncompressed() {
    unknown_path_is_not_substituted("none");
}

#[test]
fn unknown_path_is_not_substituted_xz() {
    unknown_path_is_not_substituted("xz");
}

#[test]
fn stock_nix_log_reads_the_build_log() {
    let store = TestStore::build_small();
    let key = store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-cache-1");
    let cache = start(&store, "none", &key);
    // `nix log` looks up the output's Deriver in its narinfo, then GETs log/<drv>.
    let out = store
        .nix()
        .run("nix", &["log", "--store", cache.url(), store.path("refs")]);
    let want = format!("tailcache-itest build log of with-refs {}", store.nonce());
    assert!(out.contains(&want), "nix log printed:\n{out}");
}
