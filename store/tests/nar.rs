//! NAR tests against real Nix: the encoder must reproduce `nix-store --dump` byte for byte
//! (committed fixtures for the small shapes, live `nix-store` for the large ones), ranges must
//! be exact suffixes, the validator must accept every real NAR however it is chunked and
//! reject each kind of damage, and restore → dump must round-trip.
//!
//! `nix-store` is required: without it these tests fail with a message, they never skip.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use proptest::prelude::*;
use rstest::rstest;
use tailcache_store::nar::{self, NarEncoder, NarSummary, NarValidator};
use tailcache_store::{Error, Sha256Hash};
use tailcache_testkit::NixEnv;
use tempfile::TempDir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nar");

const CASES: &[&str] = &[
    "regular",
    "empty",
    "eight",
    "exec",
    "empty-exec",
    "symlink-relative",
    "symlink-absolute",
    "symlink-dangling",
    "empty-dir",
    "names",
    "order",
    "deep",
    "mixed",
];

// ---------------------------------------------------------------------------------------
// helpers

fn make_tree(mode: &str, dir: &Path) {
    let st = Command::new("bash")
        .arg(Path::new(FIXTURES).join("make.sh"))
        .arg(mode)
        .arg(dir)
        .status()
        .expect("running make.sh");
    assert!(st.success(), "make.sh {mode} failed");
}

fn small_tree() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("tree");
    make_tree("tree", &root);
    (tmp, root)
}

fn fixture(name: &str) -> Vec<u8> {
    fs::read(Path::new(FIXTURES).join(format!("{name}.nar"))).unwrap()
}

/// `nix-store --dump` with a private Nix configuration.
fn nix_dump(path: &Path) -> Vec<u8> {
    let path = path.to_str().unwrap();
    let out = NixEnv::new().output("nix-store", &["--dump", path]);
    assert!(
        out.status.success(),
        "nix-store --dump {path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn encode(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    NarEncoder::new(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn encode_at(path: &Path, offset: u64) -> Vec<u8> {
    let mut v = Vec::new();
    NarEncoder::new_at(path, offset)
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

fn summary_of(nar: &[u8]) -> NarSummary {
    NarSummary {
        nar_hash: Sha256Hash::digest(nar),
        nar_size: nar.len() as u64,
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The large cases, built and dumped by real Nix once per test process.
struct Large {
    _tmp: TempDir,
    root: PathBuf,
    /// (path, NAR by nix-store --dump)
    nars: Vec<(PathBuf, Vec<u8>)>,
}

fn large() -> &'static Large {
    static LARGE: OnceLock<Large> = OnceLock::new();
    LARGE.get_or_init(|| {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("large");
        make_tree("large", &root);
        let nars = [root.clone(), root.join("many"), root.join("big")]
            .into_iter()
            .map(|p| {
                let nar = nix_dump(&p);
                (p, nar)
            })
            .collect();
        Large {
            _tmp: tmp,
            root,
            nars,
        }
    })
}

// ---------------------------------------------------------------------------------------
// a tiny independent reference model of the format, for synthetic and random NARs

#[derive(Debug, Clone)]
enum Node {
    File {
        executable: bool,
        contents: Vec<u8>,
    },
    Link(Vec<u8>),
    /// Entries in the order they are written (tests may make it wrong on purpose).
    Dir(Vec<(Vec<u8>, Node)>),
}

fn put(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len().next_multiple_of(8), 0);
}

fn write_node(out: &mut Vec<u8>, n: &Node) {
    put(out, b"(");
    put(out, b"type");
    match n {
        Node::File {
            executable,
            contents,
        } => {
            put(out, b"regular");
            if *executable {
                put(out, b"executable");
                put(out, b"");
            }
            put(out, b"contents");
            put(out, contents);
        }
        Node::Link(t) => {
            put(out, b"symlink");
            put(out, b"target");
            put(out, t);
        }
        Node::Dir(entries) => {
            put(out, b"directory");
            for (name, child) in entries {
                put(out, b"entry");
                put(out, b"(");
                put(out, b"name");
                put(out, name);
                put(out, b"node");
                write_node(out, child);
                put(out, b")");
            }
        }
    }
    put(out, b")");
}

fn nar_of(n: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, b"nix-archive-1");
    write_node(&mut out, n);
    out
}

fn materialize(n: &Node, path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    match n {
        Node::File {
            executable,
            contents,
        } => {
            fs::write(path, contents).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        Node::Link(t) => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), path).unwrap();
        }
        Node::Dir(entries) => {
            fs::create_dir(path).unwrap();
            for (name, child) in entries {
                materialize(child, &path.join(std::ffi::OsStr::from_bytes(name)));
            }
        }
    }
}

fn file(contents: &[u8]) -> Node {
    Node::File {
        executable: false,
        contents: contents.to_vec(),
    }
}

fn dir(names: &[&[u8]]) -> Node {
    Node::Dir(names.iter().map(|n| (n.to_vec(), file(b"x"))).collect())
}

fn invalid_offset(r: tailcache_store::Result<NarSummary>) -> u64 {
    match r {
        Err(Error::InvalidNar { offset, .. }) => offset,
        other => panic!("expected InvalidNar, got {other:?}"),
    }
}

fn validate(nar: &[u8]) -> tailcache_store::Result<NarSummary> {
    let mut v = NarValidator::new();
    v.feed(nar)?;
    v.finish()
}

// ---------------------------------------------------------------------------------------
// encoder vs. real Nix

#[test]
fn encoder_matches_committed_nix_fixtures() {
    let (_tmp, root) = small_tree();
    for case in CASES {
        let want = fixture(case);
        let path = root.join(case);
        assert!(
            encode(&path) == want,
            "{case}: encoder differs from nix-store --dump"
        );
        let mut sink = Vec::new();
        let (hash, size) = nar::dump(&path, &mut sink).unwrap();
        assert!(sink == want, "{case}: dump() differs");
        assert_eq!((hash, size), (Sha256Hash::digest(&want), want.len() as u64));
        assert_eq!(nar::nar_size(&path).unwrap(), want.len() as u64, "{case}");
    }
    let all = fixture("all");
    assert!(
        encode(&root) == all,
        "whole tree differs from nix-store --dump"
    );
    assert_eq!(nar::nar_size(&root).unwrap(), all.len() as u64);
}

#[test]
fn committed_fixtures_are_what_live_nix_dumps() {
    let (_tmp, root) = small_tree();
    for case in CASES {
        assert!(
            nix_dump(&root.join(case)) == fixture(case),
            "{case}: fixture is stale; run make.sh dump"
        );
    }
}

#[test]
fn large_cases_match_live_nix() {
    let l = large();
    for (path, want) in &l.nars {
        assert!(
            encode(path) == *want,
            "{}: encoder differs from nix-store --dump",
            path.display()
        );
        assert_eq!(nar::nar_size(path).unwrap(), want.len() as u64);
        let (hash, size) = nar::dump(path, std::io::sink()).unwrap();
        assert_eq!(hash, Sha256Hash::digest(want));
        assert_eq!(size, want.len() as u64);
    }
    // The big file really is ~5 MiB and the directory really is large.
    assert!(l.nars[2].1.len() > 5 << 20);
    assert_eq!(fs::read_dir(l.root.join("many")).unwrap().count(), 2100);
}

#[test]
fn small_and_odd_read_buffers_give_the_same_bytes() {
    let (_tmp, root) = small_tree();
    let want = fixture("all");
    for size in [1usize, 3, 8, 13, 4096] {
        let mut enc = NarEncoder::new(&root).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; size];
        loop {
            let n = enc.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == want, "buffer size {size}");
    }
}

// ---------------------------------------------------------------------------------------
// ranges

#[test]
fn new_at_is_the_suffix_at_every_offset_of_a_small_tree() {
    let (_tmp, root) = small_tree();
    let path = root.join("mixed");
    let full = fixture("mixed");
    for off in 0..=full.len() + 2 {
        let got = encode_at(&path, off as u64);
        let want = full.get(off..).unwrap_or(&[]);
        assert!(got == want, "offset {off}");
    }
    let all = fixture("all");
    for off in (0..all.len()).step_by(37).chain([all.len() - 1, all.len()]) {
        assert!(encode_at(&root, off as u64) == all[off..], "offset {off}");
    }
    assert!(encode_at(&root, u64::MAX).is_empty());
}

#[test]
fn new_at_is_the_suffix_in_large_cases() {
    let l = large();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for (path, full) in &l.nars {
        let len = full.len() as u64;
        let mut offsets = vec![
            0,
            1,
            7,
            8,
            9,
            23,
            24,
            100,
            len - 1,
            len,
            len + 1,
            len + 4096,
        ];
        if path.ends_with("big") {
            // Contents start after the fixed header; ")" (16 bytes) and 5 padding bytes end it.
            let size = fs::metadata(path).unwrap().len();
            let start = len - 16 - size.next_multiple_of(8);
            for d in [
                0,
                1,
                7,
                8,
                262_143,
                262_144,
                262_145,
                size - 1,
                size,
                size + 4,
                size + 5,
            ] {
                offsets.push(start + d);
            }
            offsets.push(start - 1);
        }
        for _ in 0..12 {
            offsets.push(rng.below(len));
        }
        for off in offsets {
            let got = encode_at(path, off);
            let want = full.get(off as usize..).unwrap_or(&[]);
            assert!(got == want, "{}: offset {off}", path.display());
        }
        assert!(encode_at(path, u64::MAX).is_empty());
    }
}

#[test]
fn new_at_and_nar_size_do_not_read_files_before_the_offset() {
    // "a" is a sparse 1 TiB file: reading it would take minutes, so only metadata can be used.
    const HUGE: u64 = 1 << 40;
    let tmp = TempDir::new().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    fs::File::create(real.join("a"))
        .unwrap()
        .set_len(HUGE)
        .unwrap();
    fs::write(real.join("b"), b"tail").unwrap();
    // The same tree with an 8-byte "a" (same padding): identical bytes after a's contents.
    let small = tmp.path().join("small");
    fs::create_dir(&small).unwrap();
    fs::write(small.join("a"), [0u8; 8]).unwrap();
    fs::write(small.join("b"), b"tail").unwrap();
    let reference = encode(&small);

    let real_len = nar::nar_size(&real).unwrap();
    assert_eq!(real_len, reference.len() as u64 - 8 + HUGE);
    let tail = 248; // everything after a's contents
    assert!(encode_at(&real, real_len - tail) == reference[reference.len() - tail as usize..]);
    // Inside the huge file, 3 bytes before its end: it is opened and seeked, not read through.
    let got = encode_at(&real, real_len - tail - 3);
    assert!(got[..3] == [0, 0, 0] && got[3..] == reference[reference.len() - tail as usize..]);
}

// ---------------------------------------------------------------------------------------
// validator

#[test]
fn validator_accepts_real_nars_in_random_chunks() {
    let mut rng = Rng(0xc0ff_ee00_1234_5678);
    let mut nars: Vec<Vec<u8>> = CASES.iter().map(|c| fixture(c)).collect();
    nars.push(fixture("all"));
    nars.extend(large().nars.iter().map(|(_, n)| n.clone()));
    for nar in &nars {
        let want = summary_of(nar);
        for max_chunk in [1u64, 9, 100, 70_000] {
            if max_chunk == 1 && nar.len() > 100_000 {
                continue;
            }
            let mut v = NarValidator::new();
            let mut rest = &nar[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(max_chunk) as usize).min(rest.len());
                v.feed(&rest[..n]).unwrap();
                rest = &rest[n..];
            }
            assert_eq!(v.finish().unwrap(), want);
        }
        assert_eq!(nar::verify(&nar[..]).unwrap(), want);
    }
}

#[test]
fn validator_rejects_every_truncation() {
    let nar = fixture("mixed");
    for len in 0..nar.len() {
        let r = validate(&nar[..len]);
        assert!(
            matches!(r, Err(Error::InvalidNar { .. })),
            "prefix of {len} bytes accepted"
        );
    }
    assert!(nar::verify(&nar[..nar.len() - 8]).is_err());
}

#[test]
fn validator_rejects_bad_magic_padding_and_trailing_data() {
    let nar = fixture("regular");

    let mut bad = nar.clone();
    bad[8] = b'N';
    assert_eq!(invalid_offset(validate(&bad)), 0);

    // "nix-archive-1" is 13 bytes, so bytes 21..24 are padding.
    let mut bad = nar.clone();
    bad[22] = 1;
    assert_eq!(invalid_offset(validate(&bad)), 22);

    let mut bad = nar.clone();
    bad.extend_from_slice(&[0; 8]);
    assert_eq!(invalid_offset(validate(&bad)), nar.len() as u64);

    let mut two = nar.clone();
    two.extend_from_slice(&nar);
    assert_eq!(invalid_offset(nar::verify(&two[..])), nar.len() as u64);

    // Padding after file contents ("hello, nar\n" is 11 bytes: 5 zero bytes follow).
    let contents_end = nar.len() - 16 - 5;
    let mut bad = nar.clone();
    bad[contents_end + 4] = 0xff;
    assert_eq!(invalid_offset(validate(&bad)), contents_end as u64 + 4);
}

#[test]
fn a_flipped_content_byte_changes_the_hash_but_stays_valid() {
    let nar = fixture("regular");
    let good = validate(&nar).unwrap();
    let mut flipped = nar.clone();
    let contents_start = nar.len() - 16 - 16;
    flipped[contents_start] ^= 0x20;
    let other = validate(&flipped).unwrap();
    assert_eq!(other.nar_size, good.nar_size);
    assert_ne!(other.nar_hash, good.nar_hash);
}

#[rstest]
#[case::unsorted(dir(&[b"b", b"a"]))]
#[case::bytewise_unsorted(dir(&[b"a", b"B"]))]
#[case::duplicate(dir(&[b"a", b"a"]))]
#[case::dot(dir(&[b"."]))]
#[case::dotdot(dir(&[b".."]))]
#[case::slash(dir(&[b"a/b"]))]
#[case::empty_name(dir(&[b""]))]
#[case::nul(dir(&[b"a\0b"]))]
#[case::empty_target(Node::Link(Vec::new()))]
#[case::nested_unsorted(Node::Dir(vec![(b"d".to_vec(), dir(&[b"z", b"y"]))]))]
fn validator_rejects_bad_structure(#[case] node: Node) {
    let nar = nar_of(&node);
    let off = invalid_offset(validate(&nar));
    assert!(off < nar.len() as u64);
    // restore refuses it too, and leaves nothing outside `dest`.
    let tmp = TempDir::new().unwrap();
    let dest = tmp.path().join("out");
    assert!(nar::restore(&nar[..], &dest).is_err());
    assert!(fs::read_dir(tmp.path()).unwrap().count() <= 1);
}

#[test]
fn validator_accepts_what_it_should_of_synthetic_nars() {
    // Bytewise order: "B" (0x42) < "_u" (0x5f) < "a" < "z" — unlike most locales.
    let nar = nar_of(&dir(&[b"B", b"_u", b"a", b"z"]));
    assert_eq!(validate(&nar).unwrap(), summary_of(&nar));
    // The same name may appear in different directories.
    let nar = nar_of(&Node::Dir(vec![
        (b"a".to_vec(), dir(&[b"a"])),
        (b"b".to_vec(), dir(&[b"a"])),
    ]));
    assert_eq!(validate(&nar).unwrap(), summary_of(&nar));
}

#[test]
fn validator_rejects_bad_tokens_and_huge_lengths() {
    let mut bad_type = Vec::new();
    put(&mut bad_type, b"nix-archive-1");
    put(&mut bad_type, b"(");
    put(&mut bad_type, b"type");
    put(&mut bad_type, b"fifo");
    assert_eq!(invalid_offset(validate(&bad_type)), 56);

    // A length that would need 2^64 bytes of memory if trusted.
    let mut huge = Vec::new();
    put(&mut huge, b"nix-archive-1");
    put(&mut huge, b"(");
    put(&mut huge, b"type");
    put(&mut huge, b"directory");
    put(&mut huge, b"entry");
    put(&mut huge, b"(");
    put(&mut huge, b"name");
    let at = huge.len() as u64;
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(invalid_offset(validate(&huge)), at);

    // "executable" must be followed by an empty string.
    let mut exec = Vec::new();
    put(&mut exec, b"nix-archive-1");
    put(&mut exec, b"(");
    put(&mut exec, b"type");
    put(&mut exec, b"regular");
    put(&mut exec, b"executable");
    put(&mut exec, b"x");
    assert!(validate(&exec).is_err());

    // After an error every further feed fails as well.
    let mut v = NarValidator::new();
    assert!(v.feed(&bad_type).is_err());
    assert!(v.feed(&[]).is_err() || v.finish().is_err());
}

// ---------------------------------------------------------------------------------------
// restore

#[test]
fn restore_then_dump_round_trips_every_fixture() {
    let mut nars: Vec<(String, Vec<u8>)> =
        CASES.iter().map(|c| (c.to_string(), fixture(c))).collect();
    nars.push(("all".into(), fixture("all")));
    nars.extend(
        large()
            .nars
            .iter()
            .map(|(p, n)| (p.display().to_string(), n.clone())),
    );
    for (name, nar) in &nars {
        let tmp = TempDir::new().unwrap();
        let dest = tmp.path().join("out");
        assert_eq!(nar::restore(&nar[..], &dest).unwrap(), summary_of(nar));
        assert!(encode(&dest) == *nar, "{name}: restore → dump differs");
        // dest must not exist.
        assert!(nar::restore(&nar[..], &dest).is_err(), "{name}");
    }
}

#[test]
fn restore_creates_symlinks_and_exec_bits() {
    let tmp = TempDir::new().unwrap();
    let dest = tmp.path().join("out");
    nar::restore(&fixture("mixed")[..], &dest).unwrap();
    let link = fs::symlink_metadata(dest.join("dangling")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(
        fs::read_link(dest.join("dangling")).unwrap(),
        Path::new("missing")
    );
    let abs = fs::read_link(dest.join("share/link-abs")).unwrap();
    assert_eq!(abs, Path::new("/etc/hostname"));
    let tool = fs::metadata(dest.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(tool & 0o100, 0, "bin/tool lost its exec bit: {tool:o}");
    let readme = fs::metadata(dest.join("share/doc/README")).unwrap();
    assert_eq!(readme.permissions().mode() & 0o111, 0);
}

// ---------------------------------------------------------------------------------------
// errors while dumping

#[test]
fn a_file_that_shrinks_or_grows_while_dumped_is_an_error() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("f");
    fs::write(&path, vec![7u8; 1 << 20]).unwrap();

    let mut enc = NarEncoder::new(&path).unwrap();
    let mut buf = vec![0u8; 4096];
    enc.read_exact(&mut buf).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10)
        .unwrap();
    let mut rest = Vec::new();
    assert!(
        enc.read_to_end(&mut rest).is_err(),
        "shrunk file not detected"
    );

    fs::write(&path, vec![7u8; 100_000]).unwrap();
    let mut enc = NarEncoder::new(&path).unwrap();
    let mut small = vec![0u8; 1000];
    enc.read_exact(&mut small).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[1u8; 5000])
        .unwrap();
    let mut big = vec![0u8; 1 << 20];
    let mut got_err = false;
    loop {
        match enc.read(&mut big) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => {
                got_err = true;
                break;
            }
        }
    }
    assert!(got_err, "grown file not detected");
}

#[test]
fn sockets_are_unsupported_and_missing_paths_are_io_errors() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("r");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("a"), b"x").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    let mut out = Vec::new();
    let err = NarEncoder::new(&root)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap_err();
    let inner = err.into_inner().unwrap().downcast::<Error>().unwrap();
    assert!(
        matches!(*inner, Error::UnsupportedFileType { ref path } if path.ends_with("sock")),
        "{inner:?}"
    );
    assert!(matches!(
        nar::dump(&root, std::io::sink()),
        Err(Error::UnsupportedFileType { .. })
    ));
    assert!(matches!(
        nar::nar_size(&root.join("sock")),
        Err(Error::UnsupportedFileType { .. })
    ));
    assert!(matches!(
        NarEncoder::new(&root.join("missing")),
        Err(Error::Io(_))
    ));
}

// ---------------------------------------------------------------------------------------
// property: random trees

fn name() -> impl Strategy<Value = Vec<u8>> {
    "[a-zA-Z0-9_ .é~-]{1,6}"
        .prop_filter("not . or ..", |s| s != "." && s != "..")
        .prop_map(String::into_bytes)
}

fn tree() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(executable, contents)| Node::File {
                executable,
                contents
            }
        ),
        "[a-z./ ]{1,12}".prop_map(|t| Node::Link(t.into_bytes())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        // A BTreeMap gives unique names in bytewise order, as a NAR needs.
        prop::collection::btree_map(name(), inner, 0..6)
            .prop_map(|m: BTreeMap<Vec<u8>, Node>| Node::Dir(m.into_iter().collect()))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_trees_dump_verify_restore_dump(node in tree(), off_frac in 0.0f64..1.1) {
        let tmp = TempDir::new().unwrap();
        let src = tmp.path().join("src");
        materialize(&node, &src);

        let expected = nar_of(&node);
        let nar = encode(&src);
        prop_assert!(nar == expected, "encoder differs from the reference model");
        prop_assert_eq!(nar::nar_size(&src).unwrap(), nar.len() as u64);

        let summary = nar::verify(&nar[..]).unwrap();
        prop_assert_eq!(summary, summary_of(&nar));

        let dest = tmp.path().join("dest");
        prop_assert_eq!(nar::restore(&nar[..], &dest).unwrap(), summary);
        prop_assert!(encode(&dest) == nar, "restore → dump differs");

        let off = (nar.len() as f64 * off_frac) as usize;
        prop_assert!(encode_at(&src, off as u64) == nar.get(off..).unwrap_or(&[]));
    }
}
