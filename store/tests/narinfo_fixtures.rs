//! narinfos and keys written by real Nix 2.8 (see fixtures/narinfo/make.sh): our parser and
//! renderer reproduce them byte for byte, and our signing agrees with Nix's.

use std::path::PathBuf;

use rstest::rstest;
use tailcache_store::StorePath;
use tailcache_store::narinfo::NarInfo;
use tailcache_store::path_info::fingerprint;
use tailcache_store::signing::{PublicKey, SecretKey};

const DIR: &str = "/nix/store";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/narinfo")
}

fn read(rel: &str) -> String {
    let p = fixtures().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The store path of a fixture role, from paths.txt.
fn path_of(role: &str) -> StorePath {
    let list = read("paths.txt");
    let line = list
        .lines()
        .find(|l| l.split(' ').next() == Some(role))
        .unwrap_or_else(|| panic!("no {role} in paths.txt"));
    StorePath::from_absolute(DIR, line.split(' ').nth(1).unwrap()).unwrap()
}

fn narinfo_text(compression: &str, role: &str) -> String {
    read(&format!("{compression}/{}.narinfo", path_of(role).hash()))
}

fn nix_keys() -> (SecretKey, PublicKey) {
    (
        SecretKey::parse(&read("test-only-secret.key")).unwrap(),
        PublicKey::parse(&read("test-only-public.key")).unwrap(),
    )
}

#[rstest]
fn round_trips_and_signatures_match_nix(
    #[values("none", "xz")] compression: &str,
    #[values("dep", "withrefs", "text-ca", "tree-ca", "added-ca")] role: &str,
) {
    let text = narinfo_text(compression, role);
    let ni = NarInfo::parse(&text, DIR).unwrap();
    assert_eq!(ni.info.path, path_of(role));
    assert_eq!(ni.compression.name(), compression);
    assert_eq!(ni.render(DIR), text, "render(parse(x)) != x");

    let (sk, pk) = nix_keys();
    assert_eq!(ni.info.sigs.len(), 1);
    assert!(
        ni.info.verify(std::slice::from_ref(&pk), DIR),
        "Nix's Sig does not verify"
    );
    assert!(pk.verify(&ni.info.fingerprint(DIR), &ni.info.sigs[0]));

    // ed25519 is deterministic: signing the same fingerprint with the same key must give
    // Nix's exact signature.
    let mut ours = ni.clone();
    ours.info.sigs.clear();
    ours.info.sign(&sk, DIR);
    assert_eq!(ours.info.sigs, ni.info.sigs);

    // A key with the same name but other bytes does not verify it.
    let impostor = SecretKey::generate(pk.name()).unwrap().public();
    assert!(!ni.info.verify(&[impostor], DIR));
    // Changing a signed field breaks it.
    let mut tampered = ni.clone();
    tampered.info.nar_size += 1;
    assert!(!tampered.info.verify(&[pk], DIR));
}

#[test]
fn fields_are_what_nix_stored() {
    let dep = NarInfo::parse(&narinfo_text("none", "dep"), DIR).unwrap();
    let withrefs = NarInfo::parse(&narinfo_text("none", "withrefs"), DIR).unwrap();
    let note = NarInfo::parse(&narinfo_text("none", "text-ca"), DIR).unwrap();
    let added = NarInfo::parse(&narinfo_text("none", "added-ca"), DIR).unwrap();

    assert!(dep.info.references.is_empty());
    assert_eq!(dep.info.deriver.as_ref().unwrap().name(), "fixture-dep.drv");
    assert_eq!(dep.info.ca, None);

    let mut want = vec![path_of("dep"), path_of("withrefs"), path_of("text-ca")];
    want.sort_by_key(StorePath::base_name);
    assert_eq!(
        withrefs.info.references, want,
        "self reference included, sorted"
    );
    assert_eq!(
        withrefs.info.deriver.as_ref().unwrap().name(),
        "fixture-withrefs.drv"
    );
    let fp = withrefs.info.fingerprint(DIR);
    assert!(fp.starts_with(&format!(
        "1;{};{};{};",
        path_of("withrefs").to_absolute(DIR),
        withrefs.info.nar_hash,
        withrefs.info.nar_size
    )));
    assert_eq!(
        fp,
        fingerprint(
            DIR,
            &withrefs.info.path,
            &withrefs.info.nar_hash,
            withrefs.info.nar_size,
            &[path_of("text-ca"), path_of("withrefs"), path_of("dep")]
        )
    );

    assert_eq!(note.info.references, [path_of("tree-ca")]);
    assert!(note.info.ca.as_deref().unwrap().starts_with("text:sha256:"));

    // `nix-store --add` of a file: recursive sha256 ingestion, so the CA hash is the NAR hash.
    assert_eq!(
        added.info.ca.as_deref(),
        Some(format!("fixed:r:{}", added.info.nar_hash).as_str())
    );
    assert_eq!(added.info.deriver, None);

    // Uncompressed: the file is the NAR.
    assert_eq!(dep.file_hash, Some(dep.info.nar_hash));
    assert_eq!(dep.file_size, Some(dep.info.nar_size));
    assert!(dep.url.ends_with(".nar"));
    // xz: same signed content, different file.
    let dep_xz = NarInfo::parse(&narinfo_text("xz", "dep"), DIR).unwrap();
    assert_eq!(dep_xz.info.fingerprint(DIR), dep.info.fingerprint(DIR));
    assert_eq!(dep_xz.info.sigs, dep.info.sigs);
    assert_ne!(dep_xz.file_hash, dep.file_hash);
    assert!(dep_xz.url.ends_with(".nar.xz"));
    assert_eq!(
        dep_xz.url,
        format!("nar/{}.nar.xz", dep_xz.file_hash.unwrap().to_nix32())
    );
}

#[test]
fn every_committed_narinfo_is_covered() {
    // A new fixture file without a role would silently go untested.
    for c in ["none", "xz"] {
        let n = std::fs::read_dir(fixtures().join(c)).unwrap().count();
        assert_eq!(n, 5, "{c}/ has {n} narinfos, the tests cover 5 roles");
    }
}
