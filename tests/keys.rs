//! Signing keys across the Nix boundary: keys made by
//! `nix-store --generate-binary-cache-key` load in `tailcache serve`, keys made by
//! `tailcache keygen` are accepted by Nix (as secret and as public key), a key is
//! generated on first start when none is configured, and a secret key file that
//! group or others can read is refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::nix::{Fetch, assert_client_matches, assert_success, client_store};
use common::{TestCache, TestStore};

fn pubkey(cache: &TestCache) -> String {
    let r = cache.get("/pubkey");
    assert_eq!(r.status, 200, "/pubkey: {}", r.text());
    r.text().trim().to_string()
}

#[test]
fn nix_generated_key_signs_what_nix_accepts() {
    let store = TestStore::build_small();
    let key = store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-nixkey-1");
    let cache = TestCache::builder()
        .store(&store)
        .secret_key(&key.secret)
        .start();
    assert_eq!(pubkey(&cache), key.public);

    let paths = store.closure();
    let client = client_store(&store.scratch("clients"), "substitute");
    let out = Fetch::Substitute.run(store.nix(), cache.url(), &client, &key.public, &paths);
    assert_success("nix-store -r trusting the nix-generated key", &out);
    assert_client_matches(&store, &client, &paths);
}

#[test]
fn tailcache_keygen_key_pair_is_accepted_by_nix() {
    let store = TestStore::build_small();
    let dir = store.scratch("keys");
    let (sec, public_file) = (dir.join("k.sec"), dir.join("k.pub"));
    let out = Command::new(env!("CARGO_BIN_EXE_tailcache"))
        .arg("keygen")
        .arg("itest-keygen-1")
        .arg(&sec)
        .arg(&public_file)
        .output()
        .unwrap();
    assert_success("tailcache keygen", &out);
    let public = std::fs::read_to_string(&public_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        public.starts_with("itest-keygen-1:"),
        "public key {public:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&public),
        "keygen did not print the public key"
    );
    let mode = std::fs::metadata(&sec).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key file mode {mode:o}");

    // Nix signs with the keygen secret key and verifies with the keygen public
    // key: both halves are in Nix's format and belong together.
    let nix = store.nix();
    let paths = store.closure();
    let filecache = store.scratch("filecache");
    store.copy_to_file_cache(&filecache, "none", &sec);
    let from_file = client_store(&store.scratch("clients"), "from-file");
    let url = format!("file://{}", filecache.display());
    let out = Fetch::Copy.run(nix, &url, &from_file, &public, &paths);
    assert_success("nix copy from a cache Nix signed with the keygen key", &out);

    // tailcache signs with it, and Nix trusting the keygen public key accepts.
    let cache = TestCache::builder().store(&store).secret_key(&sec).start();
    assert_eq!(pubkey(&cache), public);
    let client = client_store(&store.scratch("clients"), "copy");
    let out = Fetch::Copy.run(nix, cache.url(), &client, &public, &paths);
    assert_success("nix copy trusting the keygen public key", &out);
    assert_client_matches(&store, &client, &paths);
}

#[test]
fn key_is_generated_on_first_start() {
    let store = TestStore::build_small();
    let cache = TestCache::builder().store(&store).start();
    let public = pubkey(&cache);
    let (name, b64) = public.split_once(':').expect("name:base64");
    assert!(!name.is_empty() && b64.len() == 44, "public key {public:?}");
    let stdout = cache.stdout();
    assert!(
        stdout.contains(&public),
        "public key not printed:\n{stdout}"
    );
    assert!(
        stdout.contains("trusted-public-keys") && stdout.contains("substituters"),
        "the nix.conf lines are not printed:\n{stdout}"
    );
    let secret = cache.state_dir().join("secret-key");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "generated secret key mode {mode:o}");

    let paths = [store.path("refs")];
    let client = client_store(&store.scratch("clients"), "substitute");
    let out = Fetch::Substitute.run(store.nix(), cache.url(), &client, &public, &paths);
    assert_success("nix-store -r trusting the generated key", &out);
}

#[test]
fn secret_key_readable_by_others_is_refused() {
    let store = TestStore::build_small();
    let key = store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-loose-1");
    for mode in [0o644, 0o640] {
        std::fs::set_permissions(&key.secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = match TestCache::builder()
            .store(&store)
            .secret_key(&key.secret)
            .try_start()
        {
            Ok(cache) => panic!(
                "the server started with a {mode:o} secret key file at {}",
                cache.url()
            ),
            Err(e) => e,
        };
        let status = err.status.expect("exit status");
        assert!(!status.success(), "exit status {status}");
        let text = format!("{}{}", err.stdout, err.stderr).to_lowercase();
        assert!(
            text.contains("permission") || text.contains(&format!("{mode:o}")),
            "the refusal does not mention the file's permissions:\n{text}"
        );
    }
}

#[test]
fn generated_key_is_kept_across_restarts() {
    let store = TestStore::build_small();
    let state = store.scratch("state");
    let first = TestCache::builder().store(&store).state_dir(&state).start();
    let public = pubkey(&first);
    assert!(
        first.stdout().contains("generated signing key"),
        "{}",
        first.stdout()
    );
    drop(first);
    let second = TestCache::builder().store(&store).state_dir(&state).start();
    assert_eq!(
        pubkey(&second),
        public,
        "a restart must not replace the key"
    );
    assert!(
        !second.stdout().contains("generated signing key"),
        "a second key was generated:\n{}",
        second.stdout()
    );
}
