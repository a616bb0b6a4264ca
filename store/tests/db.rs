//! Tests of `tailcache_store::db` against stores that the real Nix (2.8) creates at test time in
//! a temporary root: content-addressed paths from `nix-store --add`, input-addressed paths with
//! a deriver, a self-reference and two outputs from `nix-build`. Every field is compared with
//! what `nix-store -q` / `nix path-info --json` report for the same store. Nix must be
//! installed; without it these tests fail.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tailcache_store::db::{StoreDb, StoreLayout};
use tailcache_store::{Error, IoError, Sha256Hash, StorePath, StorePathHash};
use tailcache_testkit::NixEnv;

const STORE_DIR: &str = "/nix/store";

/// A private Nix configuration and a store under `<tmp>/store`.
struct TestStore {
    nix: NixEnv,
}

impl TestStore {
    fn new() -> Self {
        TestStore { nix: NixEnv::new() }
    }

    fn root(&self) -> PathBuf {
        self.nix.dir().join("store")
    }

    fn layout(&self) -> StoreLayout {
        StoreLayout::under_root(self.root())
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.nix.dir().join("files").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        p
    }

    fn command(&self, program: &str) -> Command {
        self.nix.command(program)
    }

    /// Runs a Nix command against this store and returns its stdout; any failure is fatal.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let root = self.root();
        let out = self
            .command(program)
            .arg("--store")
            .arg(&root)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run `{program}` ({e}): these tests need Nix 2.8 (apt-get install nix-bin)")
            });
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn add(&self, files: &[PathBuf]) -> Vec<StorePath> {
        let mut args = vec!["--add"];
        args.extend(files.iter().map(|f| f.to_str().unwrap()));
        self.run("nix-store", &args).lines().map(abs).collect()
    }

    /// Builds `dep` and a two-output `top` whose `out` refers to `dep` and to itself.
    /// Returns (top.out, top.lib, dep).
    fn build(&self) -> (StorePath, StorePath, StorePath) {
        let expr = self.file(
            "e.nix",
            r#"let
  sh = { builder = "/bin/sh"; system = builtins.currentSystem; PATH = "/usr/bin:/bin"; };
  dep = builtins.derivation (sh // { name = "dep"; args = [ "-c" "echo dep > $out" ]; });
in builtins.derivation (sh // {
  name = "top";
  outputs = [ "out" "lib" ];
  args = [ "-c" "mkdir $out $lib; echo ${dep} > $out/dep; echo $out > $out/self; echo lib > $lib/x" ];
})
"#,
        );
        let out = self.run("nix-build", &[expr.to_str().unwrap(), "--no-out-link"]);
        // nix-build prints only `out`; the derivation knows the others.
        let top = abs(&out);
        let drv = abs(&self.query("--deriver", &top));
        let lib = self
            .query("--outputs", &drv)
            .lines()
            .map(abs)
            .find(|p| p.name() == "top-lib")
            .unwrap();
        let dep_line = self.run(
            "nix-store",
            &["-q", "--references", &top.to_absolute(STORE_DIR)],
        );
        let dep = dep_line
            .lines()
            .map(abs)
            .find(|p| p.name() == "dep")
            .unwrap();
        (top, lib, dep)
    }

    /// A store with CA paths (a file, a directory), IA paths from a build and a signature.
    fn populated() -> (Self, Vec<StorePath>) {
        let s = TestStore::new();
        let file = s.file("hello.txt", "hello\n");
        let tree = s.file("tree/sub/data", "some data\n");
        let mut paths = s.add(&[file, tree.parent().unwrap().parent().unwrap().to_owned()]);
        let (top, lib, dep) = s.build();
        let key = s.nix.dir().join("secret");
        let public = s.nix.dir().join("public");
        let out = s
            .command("nix-store")
            .args(["--generate-binary-cache-key", "test-1"])
            .arg(&key)
            .arg(&public)
            .output()
            .unwrap();
        assert!(out.status.success());
        s.run(
            "nix",
            &[
                "store",
                "sign",
                "--key-file",
                key.to_str().unwrap(),
                &top.to_absolute(STORE_DIR),
            ],
        );
        paths.extend([top, lib, dep]);
        (s, paths)
    }

    fn query(&self, flag: &str, p: &StorePath) -> String {
        self.run("nix-store", &["-q", flag, &p.to_absolute(STORE_DIR)])
    }
}

impl Drop for TestStore {
    /// Nix makes store paths read-only; without write permission back, a non-root user could
    /// not remove the temporary directory.
    fn drop(&mut self) {
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.nix.dir())
            .status();
    }
}

fn abs(line: &str) -> StorePath {
    StorePath::from_absolute(STORE_DIR, line.trim()).unwrap()
}

/// The raw text of `"key":<value>` in a one-object `nix path-info --json` output. Nix's values
/// here (paths, hashes, ca strings, signatures, numbers) contain no quotes or brackets.
fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[start..];
    let end = if rest.starts_with('[') {
        rest.find(']')? + 1
    } else if let Some(r) = rest.strip_prefix('"') {
        r.find('"')? + 2
    } else {
        rest.find([',', '}'])?
    };
    Some(&rest[..end])
}

fn json_strings(raw: &str) -> Vec<String> {
    raw.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches('"').to_owned())
        .collect()
}

#[test]
fn path_info_matches_nix_for_every_path() {
    let (s, created) = TestStore::populated();
    let db = StoreDb::open(&s.layout()).unwrap();
    let all = db.all_paths().unwrap();
    for p in &created {
        assert!(all.contains(p), "{p} missing from all_paths");
    }
    let listed = s.run("nix", &["path-info", "--all"]);
    // all_paths is sorted by path string (`nix path-info --all` uses another order).
    let mut expected: Vec<StorePath> = listed.lines().map(abs).collect();
    expected.sort_by_key(StorePath::base_name);
    assert_eq!(all, expected);
    // CA files, a CA directory, two .drv files, dep, top, top-lib.
    assert_eq!(all.len(), 7);

    for p in &all {
        let info = db.query_path_info(&p.hash()).unwrap().unwrap();
        assert_eq!(&info.path, p);
        assert_eq!(
            info.nar_hash.to_string(),
            s.query("--hash", p).trim(),
            "{p}"
        );
        assert_eq!(
            info.nar_size.to_string(),
            s.query("--size", p).trim(),
            "{p}"
        );
        // Same order too: the signature fingerprint lists references in this order.
        let refs: Vec<StorePath> = s.query("--references", p).lines().map(abs).collect();
        assert_eq!(info.references, refs, "{p}");
        let deriver = s.query("--deriver", p);
        match &info.deriver {
            Some(d) => assert_eq!(d.to_absolute(STORE_DIR), deriver.trim(), "{p}"),
            None => assert_eq!(deriver.trim(), "unknown-deriver", "{p}"),
        }

        // Without --derivation, `nix path-info X.drv` describes the outputs of X.drv.
        let drv_flag = if p.name().ends_with(".drv") {
            "--derivation"
        } else {
            "--json"
        };
        let json = s.run(
            "nix",
            &["path-info", "--json", drv_flag, &p.to_absolute(STORE_DIR)],
        );
        let json_path = json_field(&json, "path").unwrap().trim_matches('"');
        assert_eq!(json_path, p.to_absolute(STORE_DIR));
        let nar_hash = json_field(&json, "narHash").unwrap().trim_matches('"');
        assert_eq!(
            info.nar_hash,
            Sha256Hash::parse(nar_hash).unwrap(),
            "{p}: {json}"
        );
        let ca = json_field(&json, "ca").map(|c| c.trim_matches('"').to_owned());
        assert_eq!(info.ca, ca, "{p}");
        let sigs = json_field(&json, "signatures").map(json_strings);
        assert_eq!(info.sigs, sigs.unwrap_or_default(), "{p}");
        let time = json_field(&json, "registrationTime").unwrap();
        assert_eq!(info.registration_time.to_string(), time, "{p}");

        let by_nar = db.query_by_nar_hash(&info.nar_hash).unwrap().unwrap();
        assert_eq!(by_nar, info);
    }

    let top = created.iter().find(|p| p.name() == "top").unwrap();
    let top_info = db.query_path_info(&top.hash()).unwrap().unwrap();
    assert!(top_info.references.contains(top), "self-reference lost");
    assert_eq!(top_info.references.len(), 2);
    assert_eq!(top_info.sigs.len(), 1);
    assert!(top_info.sigs[0].starts_with("test-1:"));
    assert!(top_info.ca.is_none());
    let hello = created.iter().find(|p| p.name() == "hello.txt").unwrap();
    let hello_info = db.query_path_info(&hello.hash()).unwrap().unwrap();
    assert!(hello_info.ca.as_deref().unwrap().starts_with("fixed:"));
    assert!(hello_info.deriver.is_none());
}

#[test]
fn derivation_outputs_match_nix() {
    let s = TestStore::new();
    let (top, lib, dep) = s.build();
    let db = StoreDb::open(&s.layout()).unwrap();
    let top_drv = abs(&s.query("--deriver", &top));
    let dep_drv = abs(&s.query("--deriver", &dep));
    assert_eq!(abs(&s.query("--deriver", &lib)), top_drv);

    let outputs = db.query_derivation_outputs(&top_drv).unwrap();
    assert_eq!(
        outputs,
        vec![
            ("lib".to_owned(), lib.clone()),
            ("out".to_owned(), top.clone())
        ]
    );
    let mut from_nix: Vec<StorePath> = s.query("--outputs", &top_drv).lines().map(abs).collect();
    from_nix.sort();
    let mut ours: Vec<StorePath> = outputs.into_iter().map(|(_, p)| p).collect();
    ours.sort();
    assert_eq!(ours, from_nix);
    assert_eq!(
        db.query_derivation_outputs(&dep_drv).unwrap(),
        vec![("out".to_owned(), dep.clone())]
    );
    // Not a derivation, and not in the store at all.
    assert!(db.query_derivation_outputs(&top).unwrap().is_empty());
    let unknown = StorePath::from_base_name("00000000000000000000000000000000-x.drv").unwrap();
    assert!(db.query_derivation_outputs(&unknown).unwrap().is_empty());
}

#[test]
fn unknown_hashes_are_none() {
    let s = TestStore::new();
    let added = s.add(&[s.file("a", "a\n"), s.file("b", "b\n")]);
    let db = StoreDb::open(&s.layout()).unwrap();
    for p in &added {
        // Same hash with the last character changed: sorts right next to the real path.
        let mut h = p.hash().to_string();
        let last = h.pop().unwrap();
        h.push(if last == '0' { '1' } else { '0' });
        let near = StorePathHash::parse(&h).unwrap();
        assert!(db.query_path_info(&near).unwrap().is_none(), "{h}");
    }
    for h in [
        "00000000000000000000000000000000",
        "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    ] {
        let hash = StorePathHash::parse(h).unwrap();
        assert!(db.query_path_info(&hash).unwrap().is_none());
    }
    assert!(
        db.query_by_nar_hash(&Sha256Hash::digest(b"nothing"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn hash_part_lookup_uses_the_path_index() {
    let s = TestStore::new();
    s.add(&[s.file("a", "a\n")]);
    let conn = rusqlite::Connection::open_with_flags(
        s.layout().db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT id, path, hash, registrationTime, deriver, narSize, sigs, \
             ca FROM ValidPaths WHERE path >= ?1 AND path < ?2 LIMIT 1",
        )
        .unwrap()
        .query_map(["a", "b"], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|l| l.contains("USING INDEX sqlite_autoindex_ValidPaths_1")),
        "plan: {plan:?}"
    );
}

#[test]
fn missing_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = StoreDb::open(&StoreLayout::under_root(dir.path())).unwrap_err();
    match &err {
        Error::Io(IoError { context, source }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert!(context.contains("db.sqlite does not exist"), "{context}");
        }
        other => panic!("unexpected error {other:?}"),
    }

    let layout = StoreLayout::under_root(dir.path());
    std::fs::create_dir_all(layout.db_path().parent().unwrap()).unwrap();
    std::fs::write(
        layout.db_path(),
        b"this is not an sqlite database, just text",
    )
    .unwrap();
    let err = StoreDb::open(&layout).unwrap_err();
    assert!(matches!(err, Error::Db { .. }), "{err:?}");
    assert!(err.to_string().contains("db.sqlite"), "{err}");
    assert!(err.to_string().contains("not a database"), "{err}");
}

#[test]
fn rows_nix_would_not_write_are_errors_for_that_path_only() {
    let s = TestStore::new();
    let added = s.add(&[
        s.file("a", "a\n"),
        s.file("b", "b\n"),
        s.file("c", "c\n"),
        s.file("d", "d\n"),
    ]);
    let [a, b, c, d] = &added[..] else {
        panic!("expected 4 paths")
    };
    {
        let w = rusqlite::Connection::open(s.layout().db_path()).unwrap();
        let abs_path = |p: &StorePath| p.to_absolute(STORE_DIR);
        w.execute(
            "UPDATE ValidPaths SET deriver = 'garbage' WHERE path = ?1",
            [abs_path(a)],
        )
        .unwrap();
        // A reference to a row that is not a store path of this store.
        w.execute(
            "INSERT INTO ValidPaths (path, hash, registrationTime, narSize) \
             VALUES ('/elsewhere/00000000000000000000000000000000-x', 'sha256:00', 0, 0)",
            [],
        )
        .unwrap();
        w.execute(
            "INSERT INTO Refs (referrer, reference) SELECT v.id, w.id FROM ValidPaths v, \
             ValidPaths w WHERE v.path = ?1 AND w.path LIKE '/elsewhere/%'",
            [abs_path(b)],
        )
        .unwrap();
        w.execute(
            "UPDATE ValidPaths SET narSize = -1 WHERE path = ?1",
            [abs_path(c)],
        )
        .unwrap();
        // A name Nix forbids, behind a valid hash part.
        w.execute(
            "INSERT INTO ValidPaths (path, hash, registrationTime) \
             VALUES ('/nix/store/11111111111111111111111111111111-bad name', 'sha256:00', 0)",
            [],
        )
        .unwrap();
    }
    let db = StoreDb::open(&s.layout()).unwrap();
    fn is_conversion<T>(r: Result<T, Error>) -> bool {
        matches!(
            r,
            Err(Error::Db {
                source: rusqlite::Error::FromSqlConversionFailure(..)
                    | rusqlite::Error::IntegralValueOutOfRange(..),
                ..
            })
        )
    }
    assert!(is_conversion(db.query_path_info(&a.hash())), "bad deriver");
    assert!(
        is_conversion(db.query_path_info(&b.hash())),
        "bad reference"
    );
    assert!(
        is_conversion(db.query_path_info(&c.hash())),
        "negative size"
    );
    let bad = StorePathHash::parse("11111111111111111111111111111111").unwrap();
    assert!(is_conversion(db.query_path_info(&bad)), "bad name");
    assert!(is_conversion(db.all_paths()), "all_paths with foreign rows");
    // The untouched path and the pool still work.
    let info = db.query_path_info(&d.hash()).unwrap().unwrap();
    assert_eq!(&info.path, d);
    assert_eq!(info.nar_hash.to_string(), s.query("--hash", d).trim());
}

#[test]
fn reads_while_nix_adds_paths() {
    let s = TestStore::new();
    let first = s.add(&[s.file("first", "first\n")]);
    let db = StoreDb::open(&s.layout()).unwrap();
    let files: Vec<PathBuf> = (0..50)
        .map(|i| s.file(&format!("f{i}"), &format!("{i}\n")))
        .collect();

    let stop = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    let most_seen = AtomicUsize::new(0);
    let added = std::thread::scope(|scope| {
        let reader = scope.spawn(|| -> Result<(), Error> {
            while !stop.load(Ordering::Acquire) {
                let all = db.all_paths()?;
                for p in &all {
                    // A path once valid stays valid here (no GC runs), so it must be found.
                    let info = db.query_path_info(&p.hash())?;
                    assert_eq!(info.map(|i| i.path).as_ref(), Some(p));
                }
                most_seen.fetch_max(all.len(), Ordering::Relaxed);
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        // `add` waits for the nix-store process to exit; that is the synchronisation point.
        let added = s.add(&files);
        stop.store(true, Ordering::Release);
        reader.join().unwrap().unwrap();
        added
    });
    assert!(rounds.load(Ordering::Relaxed) > 0);
    eprintln!(
        "reader: {} rounds, saw up to {} paths while Nix was adding",
        rounds.load(Ordering::Relaxed),
        most_seen.load(Ordering::Relaxed)
    );

    assert_eq!(added.len(), 50);
    let mut args = vec!["-q".to_owned(), "--hash".to_owned()];
    args.extend(added.iter().map(|p| p.to_absolute(STORE_DIR)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hashes = s.run("nix-store", &args);
    for (p, hash) in added.iter().zip(hashes.lines()) {
        let info = db
            .query_path_info(&p.hash())
            .unwrap()
            .expect("new path not found");
        assert_eq!(info.nar_hash.to_string(), hash);
    }
    assert_eq!(db.all_paths().unwrap().len(), 51);
    assert!(db.query_path_info(&first[0].hash()).unwrap().is_some());
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` only succeeds when no reader holds a snapshot; after our
/// queries, with idle connections still in the pool, it must succeed.
#[test]
fn idle_connections_do_not_block_checkpoints() {
    let s = TestStore::new();
    let (top, _, _) = s.build();
    let db = StoreDb::open(&s.layout()).unwrap();
    let exercise = |db: &StoreDb| {
        let info = db.query_path_info(&top.hash()).unwrap().unwrap();
        db.query_by_nar_hash(&info.nar_hash).unwrap().unwrap();
        db.query_derivation_outputs(info.deriver.as_ref().unwrap())
            .unwrap();
        db.all_paths().unwrap();
    };
    exercise(&db);
    // Our open connections keep Nix from deleting the WAL on exit, so this leaves frames in it.
    let late = s.add(&[s.file("late", "late\n")]);
    assert!(db.query_path_info(&late[0].hash()).unwrap().is_some());
    exercise(&db);
    assert!(db.idle_connections() >= 1);

    let writer = rusqlite::Connection::open(s.layout().db_path()).unwrap();
    writer.busy_timeout(Duration::ZERO).unwrap();
    let checkpoint = |w: &rusqlite::Connection| -> (i64, i64) {
        w.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    };

    // Control: a reader that holds a snapshot does block the checkpoint.
    let holder = rusqlite::Connection::open_with_flags(
        s.layout().db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    holder.execute_batch("BEGIN").unwrap();
    let _: i64 = holder
        .query_row("SELECT count(*) FROM ValidPaths", [], |r| r.get(0))
        .unwrap();
    let (busy, _) = checkpoint(&writer);
    assert_eq!(busy, 1, "control: a held snapshot should block TRUNCATE");
    holder.execute_batch("COMMIT").unwrap();

    exercise(&db);
    let (busy, log) = checkpoint(&writer);
    assert_eq!(
        (busy, log),
        (0, 0),
        "an idle pooled connection holds a snapshot"
    );
}

/// Entry point of the child process of `read_only_copies` (run as an unprivileged user when
/// the tests run as root, so the directory really is read-only); does nothing when run
/// directly.
#[test]
fn read_only_copy_child_process() {
    let Ok(root) = std::env::var("TAILCACHE_TEST_RO_ROOT") else {
        return;
    };
    let expected: Vec<StorePath> = std::env::var("TAILCACHE_TEST_RO_PATHS")
        .unwrap()
        .split(' ')
        .map(|p| StorePath::from_base_name(p).unwrap())
        .collect();
    let layout = StoreLayout::under_root(&root);
    let shm = PathBuf::from(format!("{}-shm", layout.db_path().display()));
    let check = |db: &StoreDb| {
        assert_eq!(db.all_paths().unwrap(), expected);
        for p in &expected {
            assert_eq!(&db.query_path_info(&p.hash()).unwrap().unwrap().path, p);
        }
    };
    if shm.exists() {
        // The -shm exists (as while Nix has the database open): a plain reader works.
        check(&StoreDb::open(&layout).unwrap());
    } else {
        let err = StoreDb::open(&layout).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Db { .. }), "{err:?}");
        assert!(
            msg.contains("db.sqlite-shm") && msg.contains("open_immutable"),
            "{msg}"
        );
        assert!(!shm.exists());
    }
    check(&StoreDb::open_immutable(&layout).unwrap());
}

/// Copies the store to a directory the reader cannot write and reads it from a child process:
/// once as an idle store (no `-shm`: `open` fails clearly, `open_immutable` works), once with
/// the `-shm` and `-wal` a previous reader left (`open` works).
#[test]
fn read_only_copies() {
    let (s, _) = TestStore::populated();
    let listed = s.run("nix", &["path-info", "--all"]);
    let mut names: Vec<String> = listed.lines().map(|l| abs(l).base_name()).collect();
    names.sort();
    assert_eq!(names.len(), 7);
    let copies = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let root = copies.path().join(name);
        let status = Command::new("cp")
            .arg("-a")
            .arg(s.root())
            .arg(&root)
            .status()
            .unwrap();
        assert!(status.success());
        root
    };

    let idle = copy("idle");
    assert!(
        !idle.join("nix/var/nix/db/db.sqlite-shm").exists(),
        "Nix left a -shm behind"
    );
    // A read-only reader that closes last leaves -shm and -wal (it may not checkpoint).
    StoreDb::open(&s.layout()).unwrap().all_paths().unwrap();
    let with_shm = copy("with-shm");
    assert!(with_shm.join("nix/var/nix/db/db.sqlite-shm").exists());

    let status = Command::new("chmod")
        .args(["-R", "a-w,a+rX"])
        .arg(copies.path())
        .status()
        .unwrap();
    assert!(status.success());
    let uid = Command::new("id").arg("-u").output().unwrap();
    let is_root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let exe = std::env::current_exe().unwrap();
    for root in [&idle, &with_shm] {
        let mut child = if is_root {
            // Root ignores directory permissions; `nobody` does not.
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = child
            .args([
                "--exact",
                "read_only_copy_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TAILCACHE_TEST_RO_ROOT", root)
            .env("TAILCACHE_TEST_RO_PATHS", names.join(" "))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "child failed on {}:\n{stdout}\n{stderr}",
            root.display()
        );
        assert!(
            stdout.contains("test read_only_copy_child_process ... ok")
                && stdout.contains("1 passed"),
            "child did not run:\n{stdout}\n{stderr}"
        );
    }
    // Let the temp dir be removed.
    let status = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(copies.path())
        .status()
        .unwrap();
    assert!(status.success());
}
