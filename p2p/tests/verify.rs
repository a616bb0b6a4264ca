//! Outboards and chunk verification (p2p/src/verify.rs): the root is plain BLAKE3, the
//! outboard is validated against it, and every group of received bytes is checked — a
//! flipped byte, truncation, another file's bytes or a forged outboard are caught, and the
//! in-order stream verifier never releases an unverified byte.

mod support;

use proptest::prelude::*;
use support::pseudo_random as random_bytes;
use tailcache_p2p::Error;
use tailcache_p2p::verify::{
    DEFAULT_BLOCK_LOG, Outboard, OutboardBuilder, VerifiedOutboard, outboard_of_file,
    outboard_of_reader,
};

const G: u64 = 16 * 1024;
const SIZES: [usize; 8] = [
    0,
    1,
    16383,
    16384,
    16385,
    3 * 16384,
    (1 << 20) + 7,
    20 << 20,
];

fn verified(data: &[u8]) -> VerifiedOutboard {
    let (root, ob) = outboard_of_reader(data, DEFAULT_BLOCK_LOG).unwrap();
    ob.verify_against(&root).unwrap()
}

fn failed_groups(r: tailcache_p2p::Result<()>) -> Vec<u64> {
    match r {
        Ok(()) => Vec::new(),
        Err(Error::GroupsFailed { failed }) => failed,
        Err(e) => panic!("expected GroupsFailed, got {e:?}"),
    }
}

/// Streams `data` through a verifier in `piece`-sized pushes; returns what it released.
fn stream_all(v: &VerifiedOutboard, data: &[u8], piece: usize) -> tailcache_p2p::Result<Vec<u8>> {
    let mut s = v.stream();
    let mut out = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        s.push(chunk, &mut out)?;
    }
    s.finish()?;
    Ok(out)
}

#[test]
fn root_is_plain_blake3_and_outboard_has_one_cv_per_group() {
    for (i, &size) in SIZES.iter().enumerate() {
        let data = random_bytes(size, i as u64);
        let (root, ob) = outboard_of_reader(&data[..], DEFAULT_BLOCK_LOG).unwrap();
        assert_eq!(&root, blake3::hash(&data).as_bytes(), "size {size}");
        let groups = (size as u64).div_ceil(G).max(1);
        let want_len = if groups == 1 { 0 } else { groups * 32 };
        assert_eq!(ob.as_bytes().len() as u64, want_len, "size {size}");
        assert_eq!(ob.file_size(), size as u64);
        assert_eq!(
            Outboard::expected_len(size as u64, DEFAULT_BLOCK_LOG),
            want_len
        );
        let v = ob.verify_against(&root).unwrap();
        assert_eq!(v.group_count(), groups);
        v.verify_range(0, size as u64, &data).unwrap();
        assert_eq!(stream_all(&v, &data, 5000).unwrap(), data, "size {size}");
    }
}

#[test]
fn builder_gives_the_same_result_whatever_the_write_sizes() {
    let data = random_bytes(5 * 16384 + 100, 9);
    let (root, ob) = outboard_of_reader(&data[..], DEFAULT_BLOCK_LOG).unwrap();
    for piece in [1usize, 7, 1024, 16384, 16385, 100_000] {
        let mut b = OutboardBuilder::new(DEFAULT_BLOCK_LOG).unwrap();
        for c in data.chunks(piece) {
            b.update(c);
        }
        assert_eq!(b.finish(), (root, ob.clone()), "piece {piece}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, &data).unwrap();
    assert_eq!(outboard_of_file(&path).unwrap(), (root, ob));
}

#[test]
fn flipped_byte_fails_exactly_its_group() {
    for (i, &size) in SIZES.iter().enumerate().filter(|(_, s)| **s > 0) {
        let data = random_bytes(size, 100 + i as u64);
        let v = verified(&data);
        let len = size as u64;
        for pos in [0, size / 2, size - 1, ((size / 3) | 1).min(size - 1)] {
            let mut bad = data.clone();
            bad[pos] ^= 0x40;
            let group = pos as u64 / G;
            assert_eq!(
                failed_groups(v.verify_range(0, len, &bad)),
                vec![group],
                "size {size} pos {pos}"
            );
            let r = v.group_range(group);
            assert!(!v.verify_group(group, &bad[r.start as usize..r.end as usize]));
            for other in (0..v.group_count()).filter(|g| *g != group) {
                let r = v.group_range(other);
                assert!(v.verify_group(other, &bad[r.start as usize..r.end as usize]));
            }
            // The stream releases the groups before the bad one, then stops at it.
            let mut s = v.stream();
            let mut out = Vec::new();
            let err = s.push(&bad, &mut out).unwrap_err();
            assert!(matches!(err, Error::GroupsFailed { ref failed } if failed == &vec![group]));
            assert_eq!(out.len() as u64, group * G);
            assert_eq!(out[..], data[..out.len()]);
            assert_eq!(s.position(), group * G);
        }
    }
}

#[test]
fn truncated_or_overlong_data_fails() {
    let data = random_bytes(3 * 16384 + 10, 3);
    let v = verified(&data);
    let len = data.len() as u64;
    // Missing the last byte: the last group fails, the others pass.
    assert_eq!(
        failed_groups(v.verify_range(0, len, &data[..data.len() - 1])),
        vec![3]
    );
    // Missing two whole groups and part of another.
    assert_eq!(
        failed_groups(v.verify_range(0, len, &data[..16384 + 5])),
        vec![1, 2, 3]
    );
    assert_eq!(failed_groups(v.verify_range(0, len, &[])), vec![0, 1, 2, 3]);
    // A range of two groups answered with three.
    assert_eq!(
        failed_groups(v.verify_range(G, 2 * G, &data[G as usize..])),
        vec![2]
    );
    // The stream never completes on truncated input, and rejects extra bytes.
    let err = stream_all(&v, &data[..data.len() - 1], 4096).unwrap_err();
    assert!(
        matches!(err, Error::StreamIncomplete { verified, .. } if verified == 3 * G),
        "{err:?}"
    );
    let mut longer = data.clone();
    longer.push(0);
    let mut s = v.stream();
    let mut out = Vec::new();
    let err = s.push(&longer, &mut out).unwrap_err();
    assert!(matches!(err, Error::StreamTooLong { .. }), "{err:?}");
    assert_eq!(
        out, data,
        "the whole file was verified before the extra byte"
    );
}

#[test]
fn another_files_data_fails_everywhere() {
    let a = random_bytes((1 << 20) + 7, 1);
    let b = random_bytes((1 << 20) + 7, 2);
    let v = verified(&a);
    let failed = failed_groups(v.verify_range(0, b.len() as u64, &b));
    assert_eq!(failed, (0..v.group_count()).collect::<Vec<_>>());
    assert!(stream_all(&v, &b, 65536).is_err());
    // A group's bytes only verify at their own position: chaining values are bound to
    // their chunk counter, so even identical groups have different ones.
    let x = random_bytes(4 * 16384, 5);
    let v = verified(&x);
    assert!(v.verify_group(0, &x[..16384]));
    assert!(!v.verify_group(1, &x[..16384]));
    let same = random_bytes(16384, 6).repeat(4);
    let (_, ob) = outboard_of_reader(&same[..], DEFAULT_BLOCK_LOG).unwrap();
    assert_ne!(ob.as_bytes()[..32], ob.as_bytes()[32..64]);
}

#[test]
fn outboard_of_another_file_or_tampered_is_refused() {
    for &size in &[16385usize, (1 << 20) + 7] {
        let data = random_bytes(size, 11);
        let (root, ob) = outboard_of_reader(&data[..], DEFAULT_BLOCK_LOG).unwrap();
        let bytes = ob.as_bytes().to_vec();
        for pos in [0, bytes.len() / 2, bytes.len() - 1] {
            let mut t = bytes.clone();
            t[pos] ^= 1;
            let err = Outboard::from_bytes(size as u64, DEFAULT_BLOCK_LOG, t)
                .verify_against(&root)
                .unwrap_err();
            assert!(matches!(err, Error::OutboardMismatch), "{err:?}");
        }
        let err = Outboard::from_bytes(
            size as u64,
            DEFAULT_BLOCK_LOG,
            bytes[..bytes.len() - 32].to_vec(),
        )
        .verify_against(&root)
        .unwrap_err();
        assert!(matches!(err, Error::OutboardSize { .. }), "{err:?}");
        let other = random_bytes(size, 12);
        let (other_root, other_ob) = outboard_of_reader(&other[..], DEFAULT_BLOCK_LOG).unwrap();
        assert!(matches!(
            other_ob.clone().verify_against(&root),
            Err(Error::OutboardMismatch)
        ));
        assert!(matches!(
            ob.clone().verify_against(&other_root),
            Err(Error::OutboardMismatch)
        ));
        // The right outboard with a lie about the file size is refused too.
        let err = Outboard::from_bytes(size as u64 + G, DEFAULT_BLOCK_LOG, bytes.clone())
            .verify_against(&root)
            .unwrap_err();
        assert!(matches!(err, Error::OutboardSize { .. }), "{err:?}");
    }
    // One-group files: the outboard is empty, the root is what checks the data.
    let small = random_bytes(100, 13);
    let v = verified(&small);
    assert!(v.verify_group(0, &small));
    assert!(!v.verify_group(0, &small[..99]));
    let err = Outboard::from_bytes(100, DEFAULT_BLOCK_LOG, vec![0; 32])
        .verify_against(blake3::hash(&small).as_bytes())
        .unwrap_err();
    assert!(matches!(err, Error::OutboardSize { .. }), "{err:?}");
}

#[test]
fn misaligned_or_out_of_bounds_ranges_are_usage_errors() {
    let data = random_bytes(2 * 16384 + 1, 4);
    let v = verified(&data);
    let len = data.len() as u64;
    for (off, l) in [(1, G), (0, G + 1), (0, len + 1), (G, len), (u64::MAX, 2)] {
        let err = v.verify_range(off, l, &data).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRange { .. }),
            "({off}, {l}): {err:?}"
        );
    }
    // Ending at the end of the file is fine even though it is not group-aligned.
    v.verify_range(2 * G, 1, &data[2 * G as usize..]).unwrap();
    v.verify_range(G, len - G, &data[G as usize..]).unwrap();
}

#[test]
fn stream_recovers_after_a_bad_group_from_another_source() {
    let data = random_bytes(10 * 16384 + 123, 21);
    let v = verified(&data);
    let mut bad = data.clone();
    bad[4 * 16384 + 9] ^= 1;
    let mut s = v.stream();
    let mut out = Vec::new();
    assert!(s.push(&bad[..6 * 16384], &mut out).is_err());
    assert_eq!(out.len(), 4 * 16384);
    let resume = s.position() as usize;
    s.push(&data[resume..], &mut out).unwrap();
    s.finish().unwrap();
    assert_eq!(out, data);
}

#[test]
fn empty_file_streams_and_verifies() {
    let v = verified(&[]);
    assert_eq!(stream_all(&v, &[], 1).unwrap(), Vec::<u8>::new());
    v.verify_range(0, 0, &[]).unwrap();
    assert_eq!(failed_groups(v.verify_range(0, 0, &[1])), vec![0]);
    let other = verified(b"x");
    assert!(!other.verify_group(0, &[]));
    assert!(other.stream().finish().is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any aligned subrange of any file verifies, and a flipped byte inside it fails
    /// exactly the group holding it; the stream gives back the file for any push size.
    #[test]
    fn ranges_of_random_files(
        size in 0usize..(9 * 16384),
        seed in any::<u64>(),
        first in 0u64..10,
        groups in 0u64..10,
        flip in any::<prop::sample::Index>(),
        piece in 1usize..40_000,
    ) {
        let data = random_bytes(size, seed);
        let v = verified(&data);
        let n = v.group_count();
        let first = first.min(n - 1);
        let last = (first + groups).min(n);
        let start = v.group_range(first).start;
        let end = if last > first { v.group_range(last - 1).end } else { start };
        let slice = &data[start as usize..end as usize];
        prop_assert!(v.verify_range(start, end - start, slice).is_ok());
        if !slice.is_empty() {
            let at = flip.index(slice.len());
            let mut bad = slice.to_vec();
            bad[at] ^= 0x80;
            prop_assert_eq!(
                failed_groups(v.verify_range(start, end - start, &bad)),
                vec![(start + at as u64) / G]
            );
        }
        prop_assert_eq!(stream_all(&v, &data, piece).unwrap(), data);
    }
}

/// Throughput of building an outboard and of verifying with one (not a pass/fail test):
/// `cargo test --release -p tailcache-p2p --test verify -- --ignored --nocapture throughput`.
#[test]
#[ignore = "measurement; run in release"]
fn throughput() {
    let data = random_bytes(256 << 20, 77);
    let mb = data.len() as f64 / 1e6;
    let t = std::time::Instant::now();
    let (root, ob) = outboard_of_reader(&data[..], DEFAULT_BLOCK_LOG).unwrap();
    let build = t.elapsed();
    let t = std::time::Instant::now();
    let v = ob.verify_against(&root).unwrap();
    let validate = t.elapsed();
    let t = std::time::Instant::now();
    v.verify_range(0, data.len() as u64, &data).unwrap();
    let range = t.elapsed();
    let t = std::time::Instant::now();
    let mut s = v.stream();
    // Released bytes go on at once (to Nix, to disk), so one reused buffer.
    let mut out = Vec::with_capacity(128 * 1024);
    let mut released = 0;
    for c in data.chunks(64 * 1024) {
        out.clear();
        s.push(c, &mut out).unwrap();
        released += out.len();
    }
    assert_eq!(released, data.len());
    s.finish().unwrap();
    let stream = t.elapsed();
    let t = std::time::Instant::now();
    let plain = blake3::hash(&data);
    let reference = t.elapsed();
    assert_eq!(plain.as_bytes(), &root);
    println!(
        "{mb:.0} MB: build outboard {:.0} MB/s; validate outboard {:.1?}; verify_range {:.0} MB/s; stream {:.0} MB/s; blake3::hash {:.0} MB/s",
        mb / build.as_secs_f64(),
        validate,
        mb / range.as_secs_f64(),
        mb / stream.as_secs_f64(),
        mb / reference.as_secs_f64(),
    );
}
