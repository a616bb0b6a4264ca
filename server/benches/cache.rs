//! Criterion micro-benchmarks of the cache's hot functions: NAR
//! serialisation of a 2000-small-file tree and of one 64 MiB file into `io::sink`, NAR
//! verification, narinfo rendering and parsing, and ed25519 signing of the fingerprint.
//!
//! Run: `cargo bench -p tailcache-server --bench cache` (about a minute; sample sizes are kept small on purpose).
//! The end-to-end comparison with nginx is `benches/http-vs-nginx.sh`.

use std::fs;
use std::hint::black_box;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tailcache_store::narinfo::NarInfo;
use tailcache_store::signing::SecretKey;
use tailcache_store::{PathInfo, Sha256Hash, StorePath, nar};

const STORE_DIR: &str = "/nix/store";
const SMALL_FILES: u32 = 2000;
const BIG_BYTES: usize = 64 << 20;

/// Deterministic, incompressible-looking bytes (xorshift64), so file contents are not all
/// zeros that a file system might store sparsely.
fn fill(buf: &mut [u8], mut seed: u64) {
    seed |= 1;
    for chunk in buf.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
}

/// 2000 files of 1–8 KiB in 16 directories, every 50th executable, plus a few symlinks —
/// the same shape as the small-file path of `http-vs-nginx.sh`.
fn small_files_tree(root: &Path) -> io::Result<()> {
    fs::create_dir(root)?;
    let mut buf = vec![0u8; 8192];
    for i in 0..SMALL_FILES {
        let dir = root.join(format!("d{}", i % 16));
        if !dir.exists() {
            fs::create_dir(&dir)?;
        }
        let len = 1024 + (i as usize * 7919) % 7169;
        fill(&mut buf[..len], u64::from(i) + 1);
        let file = dir.join(format!("f{i}"));
        fs::write(&file, &buf[..len])?;
        if i % 50 == 0 {
            fs::set_permissions(&file, fs::Permissions::from_mode(0o755))?;
        }
    }
    for i in 0..16 {
        std::os::unix::fs::symlink(format!("d{i}/f{i}"), root.join(format!("link{i}")))?;
    }
    Ok(())
}

fn big_file(path: &Path) -> io::Result<()> {
    let mut buf = vec![0u8; BIG_BYTES];
    fill(&mut buf, 0x5eed);
    fs::write(path, &buf)
}

fn bench_nar(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let small = tmp.path().join("small");
    let big = tmp.path().join("big");
    small_files_tree(&small).expect("writing the small-file tree");
    big_file(&big).expect("writing the big file");

    let mut g = c.benchmark_group("nar");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (name, path) in [("small_files_2000", &small), ("file_64MiB", &big)] {
        let (_, size) = nar::dump(path, io::sink()).expect("dump");
        g.throughput(Throughput::Bytes(size));
        g.bench_with_input(BenchmarkId::new("dump", name), path, |b, p| {
            b.iter(|| nar::dump(black_box(p), io::sink()).expect("dump"));
        });
    }

    // The HTTP handler needs the size before streaming (Content-Length) when the DB lacks it,
    // and Range requests start mid-NAR: both walk metadata only.
    let (_, small_size) = nar::dump(&small, io::sink()).expect("dump");
    g.throughput(Throughput::Elements(u64::from(SMALL_FILES)));
    g.bench_function("nar_size/small_files_2000", |b| {
        b.iter(|| nar::nar_size(black_box(&small)).expect("nar_size"));
    });
    g.bench_function("encoder_new_at_middle/small_files_2000", |b| {
        b.iter(|| nar::NarEncoder::new_at(black_box(&small), small_size / 2).expect("new_at"));
    });

    let mut small_nar = Vec::new();
    nar::dump(&small, &mut small_nar).expect("dump");
    g.throughput(Throughput::Bytes(small_nar.len() as u64));
    g.bench_function("verify/small_files_2000", |b| {
        b.iter(|| nar::verify(black_box(small_nar.as_slice())).expect("verify"));
    });
    g.finish();
}

/// A narinfo shaped like a typical package's: ten references, a deriver, one signature.
fn sample_narinfo(key: &SecretKey) -> NarInfo {
    let path = |i: u8, name: &str| {
        let mut h = [0u8; 32];
        fill(&mut h, u64::from(i) + 7);
        let hash: String = Sha256Hash::digest(&h).to_nix32().chars().take(32).collect();
        StorePath::from_base_name(&format!("{hash}-{name}")).expect("valid store path")
    };
    let references = (0..10).map(|i| path(i, &format!("dep-{i}-1.0"))).collect();
    let mut info = PathInfo {
        path: path(100, "hello-2.12.1"),
        nar_hash: Sha256Hash::digest(b"nar"),
        nar_size: 226_552,
        references,
        deriver: Some(path(101, "hello-2.12.1.drv")),
        sigs: Vec::new(),
        ca: None,
        registration_time: 0,
    };
    info.sign(key, STORE_DIR);
    NarInfo {
        info,
        url: "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz".to_owned(),
        compression: tailcache_store::Compression::Xz,
        file_hash: Some(Sha256Hash::digest(b"file")),
        file_size: Some(50_264),
    }
}

fn bench_narinfo(c: &mut Criterion) {
    let key = SecretKey::from_seed("bench-1", &[7u8; 32]).expect("key from seed");
    let info = sample_narinfo(&key);
    let text = info.render(STORE_DIR);
    let fingerprint = info.info.fingerprint(STORE_DIR);

    let mut g = c.benchmark_group("narinfo");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("render", |b| b.iter(|| black_box(&info).render(STORE_DIR)));
    g.bench_function("parse", |b| {
        b.iter(|| NarInfo::parse(black_box(&text), STORE_DIR).expect("parse"));
    });
    g.bench_function("fingerprint", |b| {
        b.iter(|| black_box(&info).info.fingerprint(STORE_DIR));
    });
    g.bench_function("sign_fingerprint", |b| {
        b.iter(|| key.sign(black_box(&fingerprint)));
    });
    // What a narinfo request costs beyond the DB lookup: sign and render an unsigned narinfo.
    let mut unsigned = info.clone();
    unsigned.info.sigs.clear();
    g.bench_function("sign_and_render", |b| {
        b.iter(|| {
            let mut n = black_box(&unsigned).clone();
            n.info.sign(&key, STORE_DIR);
            n.render(STORE_DIR)
        });
    });
    let public = [key.public()];
    g.bench_function("verify", |b| {
        b.iter(|| black_box(&info).info.verify(&public, STORE_DIR));
    });
    g.finish();
}

criterion_group!(benches, bench_nar, bench_narinfo);
criterion_main!(benches);
