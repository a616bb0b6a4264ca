//! The archive file: with `archive_compression` set, every NAR whose primary (zstd) file is
//! made later gets a second, smaller file, made in the background by a worker at idle
//! priority that only takes a job while the primary lane is idle. Judged on the real server:
//! the files appear and `/p2p/files/<hash>` lists primary, archive and uncompressed NAR with
//! true hashes and sizes; archive files are served, signed and seeded like primary ones; the
//! narinfo keeps naming the primary file and stock Nix substitutes from it with signatures
//! required; no archive work comes before a build's primary files or delays a path asked for
//! meanwhile; primary files lacking their archive file (a restart, a dropped request) are
//! found by a sweep; crash leftovers go at start; the size bound holds over both directories.
//! And the primary lane's order: a build's closure is compressed largest NAR first.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::{build_section, sh_step};
use common::nix::{Fetch, assert_client_matches, assert_success, client_store, hash_part};
use common::p2p_files::{ARCHIVE_DEADLINE, fetch_verified, nar_files, server_keys, wait_listed};
use common::peer::TestPeer;
use common::{TestCache, TestStore, decompress};
use tailcache_p2p::FileId;
use tailcache_p2p::files::NarFiles;
use tailcache_store::{Compression, Sha256Hash};

/// Linux's `SCHED_IDLE` policy, as `/proc/…/stat` shows it.
const SCHED_IDLE: u64 = 5;

/// Polls `cond` until it holds; panics with `what` at the deadline.
fn wait_for(server: &TestCache, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + ARCHIVE_DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "after {ARCHIVE_DEADLINE:?}: {what}\nstderr:\n{}",
            server.stderr()
        );
        // Polling the server's real state.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `[build]` whose one step prints `paths` as the build's outputs, so the server is told
/// about their closure as after a real build.
fn build_printing(paths: &[&str]) -> String {
    let script = format!("printf '%s\\n' {}", paths.join(" "));
    build_section("", &[sh_step("build", &script, "capture = \"out-paths\"")])
}

/// Files of a NAR directory's `index/` (one per entry).
fn index_entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("index")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn archive_dir(server: &TestCache) -> PathBuf {
    server.state_dir().join("nar/archive")
}

/// Which compressions the server's log says it made files in, in the order it made them.
fn made_in_order(server: &TestCache) -> Vec<&'static str> {
    server
        .stderr()
        .lines()
        .filter(|l| l.contains("compressed /"))
        .filter_map(|l| {
            [("zstd", " bytes zstd, "), ("xz", " bytes xz, ")]
                .into_iter()
                .find(|(_, marker)| l.contains(marker))
                .map(|(name, _)| name)
        })
        .collect()
}

/// Nice value and scheduling policy of the server's thread named `name`.
fn thread_priority(pid: u32, name: &str) -> Option<(i64, u64)> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?.path();
        let comm = std::fs::read_to_string(task.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).ok()?;
        // The fields after the command name, from field 3 on.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        return Some((f[19 - 3].parse().ok()?, f[41 - 3].parse().ok()?));
    }
    None
}

/// The compressions `/p2p/files` lists, in its order.
fn kinds(files: &NarFiles) -> Vec<Compression> {
    files.files.iter().map(|f| f.compression).collect()
}

/// A server on `state` serving zstd with more `[cache]` lines.
fn start_on(store: &TestStore, state: &Path, extra: &str) -> TestCache {
    TestCache::builder()
        .store(store)
        .compression("zstd")
        .state_dir(state)
        .cache_extra(extra)
        .start()
}

/// Makes every primary file of the store's closure on `state` with the archive off, checks
/// that `/p2p/files` lists them and the uncompressed NAR, and stops; returns the primary
/// files' bytes.
fn primary_files_only(store: &TestStore, state: &Path) -> u64 {
    let paths = store.closure();
    let mut server = start_on(store, state, "");
    server.wait_compressed(&paths, "zstd");
    for path in &paths {
        let files = nar_files(&server, path);
        assert_eq!(
            kinds(&files),
            [Compression::Zstd, Compression::None],
            "{path}"
        );
        check_each_file(&server, store, path, &files);
    }
    let bytes = server.metric("tailcache_cache_nar_dir_bytes", &[]) as u64;
    assert!(bytes > 0);
    server.sigterm();
    server.wait_exit(Duration::from_secs(60));
    bytes
}

/// Each file of `files` is what the list says, and decodes to the path's NAR.
fn check_each_file(server: &TestCache, store: &TestStore, path: &str, files: &NarFiles) {
    let info = store.info(path);
    assert_eq!(files.nar_hash, Sha256Hash::parse(&info.nar_hash).unwrap());
    assert_eq!(files.nar_size, info.nar_size);
    let nar = store.dump(path);
    for f in &files.files {
        let r = server.get(&format!("/{}", f.url));
        assert_eq!(r.status, 200, "{}: {}", f.url, r.text());
        assert_eq!(r.body.len() as u64, f.file_size, "size of {}", f.url);
        assert_eq!(
            Sha256Hash::digest(&r.body),
            f.file_hash,
            "hash of {}",
            f.url
        );
        let decoded = decompress(f.compression.name(), &r.body);
        assert_eq!(Sha256Hash::digest(&decoded), files.nar_hash, "{}", f.url);
        assert_eq!(decoded, nar, "{} decodes to the NAR of {path}", f.url);
    }
}

/// The NAR sizes of the files the server's log says it made, in the order it made them.
fn nar_sizes_in_order(server: &TestCache) -> Vec<u64> {
    server
        .stderr()
        .lines()
        .filter(|l| l.contains("compressed /"))
        .filter_map(|l| {
            let after = &l[l.find(" (")? + 2..];
            after[..after.find(' ')?].parse().ok()
        })
        .collect()
}

#[test]
fn a_builds_closure_is_compressed_largest_nar_first() {
    let store = TestStore::build();
    let mut paths = store.closure();
    // Printed smallest first, so the closure walk meets them from the smallest up.
    paths.sort_by_key(|p| store.info(p).nar_size);
    let mut sizes: Vec<u64> = paths.iter().map(|p| store.info(p).nar_size).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    // One worker, so the order it takes jobs in is the order the files are made.
    let server = TestCache::builder()
        .store(&store)
        .compression("zstd")
        .cache_extra("compression_jobs = 1")
        .build_toml(&build_printing(&paths))
        .start();
    let id = server.trigger_build();
    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s}");
    // Watched through the counters: a narinfo request would queue a path of its own.
    let ok = || server.metric("tailcache_cache_compressions_total", &[("result", "ok")]);
    wait_for(&server, "every path of the closure compressed", || {
        ok() == paths.len() as f64
    });
    assert_eq!(nar_sizes_in_order(&server), sizes);
}

#[test]
fn archive_files_follow_a_builds_primary_files_and_are_served_like_them() {
    let store = TestStore::build_small();
    let key = store
        .nix()
        .generate_key(&store.scratch("keys"), "itest-archive-1");
    let paths = store.closure();
    // A queue of two: most archive requests of the closure are dropped and found by sweeps.
    let server = TestCache::builder()
        .store(&store)
        .secret_key(&key.secret)
        .compression("zstd")
        .cache_extra("archive_compression = \"xz\"\ncompression_queue = 2")
        .build_toml(&build_printing(&paths))
        .p2p()
        .start();

    let id = server.trigger_build();
    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s}");
    let all = wait_listed(&server, &paths, Compression::Xz);

    // No archive file was made before the last primary file of the build's closure.
    let order = made_in_order(&server);
    let first_xz = order.iter().position(|c| *c == "xz").unwrap();
    assert!(
        order[first_xz..].iter().all(|c| *c == "xz") && first_xz == paths.len(),
        "files made, in order: {order:?} ({} paths)",
        paths.len()
    );
    assert_eq!(index_entries(&archive_dir(&server)).len(), paths.len());

    let trusted = server_keys(&server);
    let peer = TestPeer::observer(&server);
    for (path, files) in paths.iter().zip(&all) {
        // Primary, archive, uncompressed: in this order, each true.
        assert_eq!(
            kinds(files),
            [Compression::Zstd, Compression::Xz, Compression::None],
            "{path}"
        );
        check_each_file(&server, &store, path, files);
        let xz = files.get(Compression::Xz).unwrap();
        assert!(xz.url.starts_with("nar/") && xz.url.ends_with(".nar.xz"));
        // The uncompressed NAR is named by its store path, as in the narinfo.
        let none = files.get(Compression::None).unwrap();
        assert!(none.url.starts_with(&format!("nar/{}-", hash_part(path))));

        // The narinfo still advertises the primary file.
        let info = server.narinfo(path);
        assert_eq!(info.get("Compression"), Some("zstd"), "{path}");
        assert_eq!(
            info.get("URL"),
            Some(files.get(Compression::Zstd).unwrap().url.as_str())
        );

        // Signed manifest and outboard, as for a primary file; and the server seeds it.
        let fetched = fetch_verified(&server, xz, &trusted);
        let seeded = peer
            .fetch_from_server(FileId::from(xz.file_hash), xz.file_size)
            .unwrap_or_else(|| panic!("the server's node refused {}", xz.url));
        assert_eq!(seeded, fetched.data);
    }

    let r = server.get(&format!(
        "/p2p/files/{}",
        hash_part(&common::nix::unknown_store_path())
    ));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(server.get("/p2p/files/not-a-hash").status, 400);

    // The counters say the same, in Prometheus' text format.
    tailcache_testkit::promtool::check_metrics(&server.metrics());
    let metric = |name: &str, labels: &[(&str, &str)]| server.metric(name, labels);
    assert_eq!(
        metric("tailcache_cache_archive_jobs_total", &[("result", "ok")]),
        paths.len() as f64
    );
    assert_eq!(metric("tailcache_cache_archive_queue_length", &[]), 0.0);
    let archive_bytes: u64 = all
        .iter()
        .map(|f| f.get(Compression::Xz).unwrap().file_size)
        .sum();
    assert_eq!(
        metric("tailcache_cache_archive_dir_bytes", &[]),
        archive_bytes as f64
    );

    // Stock Nix, signatures required, substitutes the closure from the server.
    let client = client_store(&store.scratch("clients"), "copy");
    let out = Fetch::Copy.run(store.nix(), server.url(), &client, &key.public, &paths);
    assert_success("nix copy --from the server", &out);
    assert_client_matches(&store, &client, &paths);
}

#[test]
fn a_path_asked_for_while_an_archive_job_runs_gets_its_primary_file_meanwhile() {
    let store = TestStore::build();
    let server = TestCache::builder()
        .store(&store)
        .compression("zstd")
        .cache_extra("archive_compression = \"xz\"\narchive_level = 6")
        .start();
    // 32 MiB of random bytes: a primary file in a moment, then minutes of xz on one core.
    let big = store.path("big");
    server.wait_compressed(&[big], "zstd");
    let archive = archive_dir(&server);
    wait_for(
        &server,
        "the archive job of the big path never started",
        || {
            std::fs::read_dir(&archive).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
        },
    );
    assert!(
        index_entries(&archive).is_empty(),
        "the archive file was made before the test could see its job run"
    );

    // The archive worker runs at the lowest priority; the primary one does not.
    assert_eq!(
        thread_priority(server.pid(), "archive"),
        Some((19, SCHED_IDLE))
    );
    let (nice, policy) = thread_priority(server.pid(), "compress").unwrap();
    assert_ne!((nice, policy), (19, SCHED_IDLE));

    // Every other path gets its primary file while that archive job still runs.
    let others: Vec<&str> = store.closure().into_iter().filter(|p| *p != big).collect();
    server.wait_compressed(&others, "zstd");
    assert_eq!(
        server.metric("tailcache_cache_archive_jobs_total", &[]),
        0.0,
        "an archive job ended before the other paths' primary files were made"
    );
    assert!(index_entries(&archive).is_empty());
    assert_eq!(
        server.metric("tailcache_cache_archive_queue_length", &[]),
        store.closure().len() as f64,
        "the big path being archived and every other one waiting"
    );
}

#[test]
fn after_a_restart_leftovers_go_and_a_sweep_archives_what_lacks_its_archive_file() {
    let store = TestStore::build_small();
    let paths = store.closure();
    let state = store.scratch("state");
    primary_files_only(&store, &state);

    // What a crash in the middle of an archive job leaves behind.
    let archive = state.join("nar/archive");
    std::fs::create_dir_all(archive.join("index")).unwrap();
    let leftovers = [
        archive.join(".tmp-4242-0-nar"),
        archive.join(".tmp-4242-1-obao"),
        archive.join(".tmp-4242-2-index"),
        archive.join(format!(
            "{}.nar.xz",
            Sha256Hash::digest(b"orphan").to_nix32()
        )),
    ];
    for f in &leftovers {
        std::fs::write(f, b"half-written").unwrap();
    }
    let bad_entry = archive.join("index").join(hash_part(paths[0]));
    std::fs::write(&bad_entry, b"FileHash: nonsense\n").unwrap();

    // With the archive on (and a queue of one, so the sweep goes in steps), every primary
    // file gets its archive file without a single request.
    let server = start_on(
        &store,
        &state,
        "archive_compression = \"xz\"\ncompression_queue = 1",
    );
    for f in leftovers.iter().chain([&bad_entry]) {
        assert!(!f.exists(), "{} survived the start", f.display());
    }
    let all = wait_listed(&server, &paths, Compression::Xz);
    for (path, files) in paths.iter().zip(&all) {
        check_each_file(&server, &store, path, files);
    }
    assert_eq!(
        server.metric("tailcache_cache_archive_jobs_total", &[("result", "ok")]),
        paths.len() as f64
    );
    assert_eq!(
        server.metric(
            "tailcache_actor_messages_handled_total",
            &[("actor", "CacheServer"), ("message", "Compress")]
        ),
        0.0,
        "nobody asked for a narinfo"
    );
}

#[test]
fn the_size_bound_holds_over_both_directories_archive_files_going_first() {
    let store = TestStore::build_small();
    let paths = store.closure();
    let state = store.scratch("state");
    let primary = primary_files_only(&store, &state);

    // Room for the primary files and one byte more: every archive file made is evicted
    // again, before any primary file.
    let server = start_on(
        &store,
        &state,
        &format!(
            "archive_compression = \"xz\"\nnar_cache_max_bytes = {}",
            primary + 1
        ),
    );
    wait_for(&server, "archive files were not all made", || {
        server.metric("tailcache_cache_archive_jobs_total", &[("result", "ok")])
            == paths.len() as f64
    });
    wait_for(&server, "archive files were not evicted", || {
        index_entries(&archive_dir(&server)).is_empty()
            && server.metric("tailcache_cache_archive_dir_bytes", &[]) == 0.0
    });
    assert_eq!(
        server.metric("tailcache_cache_nar_dir_bytes", &[]) as u64,
        primary
    );
    for path in &paths {
        let files = nar_files(&server, path);
        assert_eq!(
            kinds(&files),
            [Compression::Zstd, Compression::None],
            "{path}"
        );
    }
    let files: Vec<String> = std::fs::read_dir(archive_dir(&server))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "index")
        .collect();
    assert!(files.is_empty(), "evicted archive files left: {files:?}");
}

#[test]
fn the_server_refuses_to_start_with_an_archive_in_its_primary_compression() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("nix/store")).unwrap();
    for (compression, archive, says) in [
        ("zstd", "zstd", "is the same as cache.compression"),
        ("none", "xz", "needs cache.compression"),
    ] {
        let err = TestCache::builder()
            .store_root(dir.path())
            .compression(compression)
            .cache_extra(&format!("archive_compression = \"{archive}\""))
            .try_start()
            .err()
            .unwrap_or_else(|| panic!("started with {compression} and archive {archive}"));
        assert!(
            err.status.is_some_and(|s| !s.success()),
            "{compression}/{archive}: {err:?}"
        );
        assert!(
            err.stderr.contains("cache.archive_compression") && err.stderr.contains(says),
            "{compression}/{archive}: {}",
            err.stderr
        );
    }
}
