//! The cache routes over plain HTTP (the Nix binary cache protocol):
//! `/nix-cache-info`, narinfo fields against `nix path-info` ground truth, HEAD,
//! NARs equal to `nix-store --dump` (whole, by Range, in nix-serve's and
//! harmonia's URL forms, and compressed), rendered narinfos that follow the store, build
//! logs, `/pubkey`, a store without
//! a database, and hostile request targets that must get 400/404 and never a
//! byte from outside the store.

mod common;

use std::collections::BTreeSet;

use common::nix::{base_name, hash_part, unknown_store_path};
use common::{NarInfo, TestCache, TestStore, decompress, http};

fn key(store: &TestStore) -> common::KeyPair {
    store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-http-1")
}

/// `sha256:<nix32>` of `data`, computed by Nix.
fn nix_file_hash(store: &TestStore, data: &[u8]) -> String {
    let f = store.scratch("hash").join("file");
    std::fs::write(&f, data).unwrap();
    let out = store.nix().run(
        "nix-hash",
        &[
            "--type",
            "sha256",
            "--flat",
            "--base32",
            f.to_str().unwrap(),
        ],
    );
    format!("sha256:{}", out.trim())
}

#[test]
fn nix_cache_info_fields() {
    let store = TestStore::build_small();
    let cache = TestCache::builder().store(&store).priority(42).start();
    let r = cache.get("/nix-cache-info");
    assert_eq!(r.status, 200);
    let text = r.text();
    let lines: BTreeSet<&str> = text.lines().collect();
    for want in ["StoreDir: /nix/store", "WantMassQuery: 1", "Priority: 42"] {
        assert!(
            lines.contains(want),
            "nix-cache-info lacks {want:?}:\n{text}"
        );
    }
}

#[test]
fn narinfo_fields_match_ground_truth() {
    let store = TestStore::build();
    let key = key(&store);
    let cache = TestCache::builder()
        .store(&store)
        .secret_key(&key.secret)
        .start();
    for path in store.closure() {
        let want = store.info(path);
        let n = cache.narinfo(path);
        assert_eq!(n.get("StorePath"), Some(path));
        assert_eq!(
            n.get("NarHash"),
            Some(want.nar_hash.as_str()),
            "NarHash of {path}"
        );
        assert_eq!(
            n.get("NarSize"),
            Some(want.nar_size.to_string().as_str()),
            "NarSize of {path}"
        );
        let refs: Vec<String> = want
            .references
            .iter()
            .map(|r| base_name(r).to_string())
            .collect();
        assert_eq!(n.references(), refs, "References of {path}");
        assert_eq!(
            n.get("Deriver"),
            want.deriver.as_deref().map(base_name),
            "Deriver of {path}"
        );
        assert_eq!(n.get("CA"), want.ca.as_deref(), "CA of {path}");
        assert_eq!(n.get("Compression"), Some("none"), "Compression of {path}");
        assert!(n.get("URL").unwrap().starts_with("nar/"), "URL of {path}");
        let sigs = n.sigs();
        let prefix = format!("{}:", key.name());
        assert!(
            sigs.iter()
                .any(|s| s.starts_with(&prefix) && s.len() == prefix.len() + 88),
            "no signature by {} on {path}: {sigs:?}",
            key.name()
        );
    }
    // The self-reference and a plain reference are both there.
    let refs = cache.narinfo(store.path("refs")).references();
    assert!(refs.contains(&base_name(store.path("refs")).to_string()));
    assert!(refs.contains(&base_name(store.path("leaf")).to_string()));
    assert!(
        cache
            .narinfo(store.path("ca"))
            .get("CA")
            .unwrap()
            .starts_with("fixed:r:sha256:")
    );

    let missing = format!("/{}.narinfo", hash_part(&unknown_store_path()));
    assert_eq!(cache.get(&missing).status, 404);
    assert_eq!(cache.head(&missing).status, 404);
}

#[test]
fn head_answers_like_get() {
    let store = TestStore::build_small();
    let cache = TestCache::builder().store(&store).start();
    let path = store.path("shapes");
    let target = format!("/{}.narinfo", hash_part(path));
    let (g, h) = (cache.get(&target), cache.head(&target));
    assert_eq!((g.status, h.status), (200, 200));
    if let Some(len) = h.header("content-length") {
        assert_eq!(len, g.body.len().to_string());
    }
    let nar = format!("/{}", cache.narinfo(path).get("URL").unwrap());
    let h = cache.head(&nar);
    assert_eq!(h.status, 200, "HEAD {nar}");
    assert_eq!(
        h.header("content-length"),
        Some(store.info(path).nar_size.to_string().as_str()),
        "HEAD {nar}"
    );
}

#[test]
fn every_nar_equals_nix_store_dump() {
    let store = TestStore::build();
    let cache = TestCache::builder().store(&store).start();
    for path in store.closure() {
        let n = cache.narinfo(path);
        let r = cache.get(&format!("/{}", n.get("URL").unwrap()));
        assert_eq!(r.status, 200, "NAR of {path}");
        let dump = store.dump(path);
        assert_eq!(
            r.body.len() as u64,
            store.info(path).nar_size,
            "NAR size of {path}"
        );
        assert!(
            r.body == dump,
            "NAR of {path} differs from nix-store --dump"
        );
    }
}

#[test]
fn range_requests_on_the_uncompressed_nar() {
    let store = TestStore::build();
    let cache = TestCache::builder().store(&store).start();
    let path = store.path("big");
    let dump = store.dump(path);
    let n = dump.len();
    let url = format!("/{}", cache.narinfo(path).get("URL").unwrap());
    let cases: [(String, std::ops::Range<usize>); 5] = [
        ("bytes=0-99".into(), 0..100),
        (
            format!("bytes={}-{}", n / 2, n / 2 + 65535),
            n / 2..n / 2 + 65536,
        ),
        (format!("bytes={}-", n - 5000), n - 5000..n),
        ("bytes=-500".into(), n - 500..n),
        (format!("bytes={}-{}", n - 10, n + 1000), n - 10..n),
    ];
    for (range, slice) in cases {
        let r = http::request(cache.url(), "GET", &url, &[("Range", &range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {}-{}/{n}", slice.start, slice.end - 1).as_str()),
            "{range}"
        );
        assert!(
            r.body == dump[slice.clone()],
            "{range}: body is not dump[{slice:?}]"
        );
    }
    for range in [
        format!("bytes={n}-"),
        format!("bytes={}-{}", n + 10, n + 20),
    ] {
        let r = http::request(cache.url(), "GET", &url, &[("Range", &range)]);
        assert_eq!(r.status, 416, "{range}");
    }
}

#[test]
fn nix_serve_and_harmonia_nar_urls() {
    let store = TestStore::build_small();
    let cache = TestCache::builder().store(&store).start();
    let path = store.path("shapes");
    let dump = store.dump(path);
    let out = hash_part(path);
    let nar = store
        .info(path)
        .nar_hash
        .strip_prefix("sha256:")
        .unwrap()
        .to_string();
    for target in [
        format!("/nar/{out}-{nar}.nar"),
        format!("/nar/{nar}.nar?hash={out}"),
    ] {
        let r = cache.get(&target);
        assert_eq!(r.status, 200, "{target}");
        assert!(r.body == dump, "{target} is not the NAR of {path}");
    }
    // The NAR hash of another path does not name this one.
    let other = store
        .info(store.path("leaf"))
        .nar_hash
        .strip_prefix("sha256:")
        .unwrap()
        .to_string();
    for target in [
        format!("/nar/{out}-{other}.nar"),
        format!("/nar/{other}.nar?hash={out}"),
    ] {
        let r = cache.get(&target);
        assert!(matches!(r.status, 400 | 404), "{target}: {}", r.status);
    }
}

fn compressed_nars(method: &str, ext: &str) {
    let store = TestStore::build_small();
    let cache = TestCache::builder()
        .store(&store)
        .compression(method)
        .start();
    let paths = store.closure();
    let infos: Vec<NarInfo> = cache.wait_compressed(&paths, method);
    for (path, n) in paths.iter().zip(&infos) {
        let url = n.get("URL").unwrap();
        assert!(
            url.starts_with("nar/") && url.ends_with(ext),
            "URL of {path}: {url}"
        );
        assert_eq!(n.get("NarHash"), Some(store.info(path).nar_hash.as_str()));
        let r = cache.get(&format!("/{url}"));
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(
            n.get("FileSize"),
            Some(r.body.len().to_string().as_str()),
            "FileSize of {path}"
        );
        assert_eq!(
            n.get("FileHash"),
            Some(nix_file_hash(&store, &r.body).as_str()),
            "FileHash of {path}"
        );
        assert!(
            decompress(method, &r.body) == store.dump(path),
            "{url} does not decompress to the NAR"
        );
        let h = cache.head(&format!("/{url}"));
        assert_eq!(h.status, 200, "HEAD {url}");
    }
}

#[test]
fn xz_nars_are_advertised_and_served() {
    compressed_nars("xz", ".nar.xz");
}

#[test]
fn zstd_nars_are_advertised_and_served() {
    compressed_nars("zstd", ".nar.zst");
}

#[test]
fn compressed_nars_are_advertised_at_once_after_a_restart() {
    let store = TestStore::build_small();
    let key = key(&store);
    let state = store.scratch("state");
    let paths = store.closure();
    let first = TestCache::builder()
        .store(&store)
        .secret_key(&key.secret)
        .compression("xz")
        .state_dir(&state)
        .start();
    let before = first.wait_compressed(&paths, "xz");
    drop(first);
    let second = TestCache::builder()
        .store(&store)
        .secret_key(&key.secret)
        .compression("xz")
        .state_dir(&state)
        .start();
    for (path, old) in paths.iter().zip(&before) {
        let now = second.narinfo(path);
        assert_eq!(now.get("Compression"), Some("xz"), "{path} after restart");
        assert_eq!(
            now.get("URL"),
            old.get("URL"),
            "{path}: same file after restart"
        );
        let r = second.get(&format!("/{}", now.get("URL").unwrap()));
        assert_eq!(
            r.status, 200,
            "{path}: compressed file served after restart"
        );
    }
}

/// Narinfos are kept rendered once final; one must never outlive its path in the store.
#[test]
fn a_deleted_path_is_not_served_from_rendered_narinfos() {
    let store = TestStore::build_small();
    let cache = TestCache::builder().store(&store).start();
    let path = store.path("self");
    let target = format!("/{}.narinfo", hash_part(path));
    // The second and third answers come from the rendered narinfo; all are the same text.
    let first = cache.get(&target);
    assert_eq!(first.status, 200);
    for _ in 0..2 {
        let again = cache.get(&target);
        assert_eq!(again.status, 200);
        assert_eq!(again.body, first.body);
    }
    let root = store.root();
    store.nix().run(
        "nix-store",
        &["--store", root.to_str().unwrap(), "--delete", path],
    );
    assert_eq!(
        cache.get(&target).status,
        404,
        "{path} deleted from the store"
    );
    // Other paths still answer.
    let leaf = store.path("leaf");
    assert_eq!(cache.narinfo(leaf).get("StorePath"), Some(leaf));
}

#[test]
fn build_log_of_a_derivation() {
    let store = TestStore::build_small();
    let cache = TestCache::builder().store(&store).start();
    let drv = store
        .info(store.path("refs"))
        .deriver
        .clone()
        .expect("refs has a deriver");
    let r = cache.get(&format!("/log/{}", base_name(&drv)));
    assert_eq!(r.status, 200, "log of {drv}: {}", r.text());
    let want = format!("tailcache-itest build log of with-refs {}", store.nonce());
    assert!(
        r.text().contains(&want),
        "log of {drv} lacks {want:?}:\n{}",
        r.text()
    );
    let unknown = format!("{}.drv", base_name(&unknown_store_path()));
    assert_eq!(cache.get(&format!("/log/{unknown}")).status, 404);
}

#[test]
fn pubkey_is_the_configured_key() {
    let store = TestStore::build_small();
    let key = key(&store);
    let cache = TestCache::builder()
        .store(&store)
        .secret_key(&key.secret)
        .start();
    let r = cache.get("/pubkey");
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), key.public);
}

#[test]
fn store_root_without_database_starts_and_answers_404() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("nix/store")).unwrap();
    let cache = TestCache::builder().store_root(dir.path()).start();
    let said = format!("{}{}", cache.stdout(), cache.stderr());
    assert!(
        said.contains("no store database"),
        "no warning printed:\n{said}"
    );
    assert_eq!(cache.get("/nix-cache-info").status, 200);
    let missing = format!("/{}.narinfo", hash_part(&unknown_store_path()));
    assert_eq!(cache.get(&missing).status, 404);
    assert_eq!(cache.head(&missing).status, 404);
}

#[test]
fn hostile_targets_get_400_or_404_and_nothing_outside_the_store() {
    let store = TestStore::build_small();
    let cache = TestCache::builder().store(&store).start();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first_line = passwd.lines().next().unwrap().to_string();
    let out = hash_part(store.path("leaf")).to_string();
    let drv = base_name(store.info(store.path("refs")).deriver.as_deref().unwrap()).to_string();
    let long = "a".repeat(4000);
    let targets = [
        "/../etc/passwd".to_string(),
        "/../../../../etc/passwd".into(),
        "/%2e%2e/%2e%2e/etc/passwd".into(),
        "/nar/..%2F..%2Fetc%2Fpasswd.nar".into(),
        "/nar/../../etc/passwd".into(),
        "/nar/%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
        "/nar/x.nar?hash=..%2F..%2Fetc%2Fpasswd".into(),
        format!("/nar/{out}.nar?hash=../../etc/passwd"),
        "/log/../../etc/passwd".into(),
        "/log/..%2F..%2F..%2Fetc%2Fpasswd".into(),
        "/log/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
        format!("/log/{drv}%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd"),
        format!("/log/{drv}/../../../../etc/passwd"),
        "/log/%00".into(),
        "/etc/passwd".into(),
        format!("/{long}.narinfo"),
        format!("/nar/{long}.nar"),
        format!("/log/{long}.drv"),
        "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo".into(),
        "/0000000000000000000000000000000u.narinfo".into(),
        "/000000000000000000000000000000.narinfo".into(),
        "/0000000000000000000000000000000000.narinfo".into(),
        format!("/{}.narinfo", out.to_uppercase()),
        format!("/{out}%00.narinfo"),
        format!("/{out}.narinfo/../../etc/passwd"),
        "/nar/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.nar".into(),
        "/nar/00000000000000000000000000000000-.nar".into(),
        "/nar/.nar".into(),
        "/nar/.nar.xz".into(),
        format!("/nar/{out}.nar.gz"),
        "/nar/0000000000000000000000000000000000000000000000000000.nar.xz".into(),
        "/nar/0000000000000000000000000000000000000000000000000000.nar.zst".into(),
        "/nix-cache-info/../../etc/passwd".into(),
        "/%".into(),
        "/%zz.narinfo".into(),
    ];
    for target in &targets {
        for method in ["GET", "HEAD"] {
            let r = http::request(cache.url(), method, target, &[]);
            assert!(
                matches!(r.status, 400 | 404),
                "{method} {target}: status {} (want 400 or 404): {}",
                r.status,
                r.text()
            );
            let body = r.text();
            assert!(
                !body.contains(&first_line) && !body.contains("root:x:0:0"),
                "{method} {target} leaked /etc/passwd"
            );
        }
    }
    // Still serving after all that.
    assert_eq!(cache.get("/nix-cache-info").status, 200);
}
