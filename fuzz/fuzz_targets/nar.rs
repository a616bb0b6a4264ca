//! Fuzzes the NAR parser: never panics, gives the same verdict however the bytes are split
//! into chunks, and a NAR it accepts is exactly the bytes it was fed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailcache_store::nar::{NarValidator, verify};

fuzz_target!(|data: &[u8]| {
    let whole = verify(data);
    // A second pass fed in uneven chunks (sizes taken from the data itself).
    let mut v = NarValidator::new();
    let mut rest = data;
    let mut fed = Ok(());
    while !rest.is_empty() && fed.is_ok() {
        let n = (usize::from(rest[0]) % 61 + 1).min(rest.len());
        fed = v.feed(&rest[..n]);
        rest = &rest[n..];
    }
    let chunked = fed.and_then(|()| v.finish());
    match (&whole, &chunked) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.nar_hash, b.nar_hash);
            assert_eq!(a.nar_size, data.len() as u64);
            assert_eq!(b.nar_size, data.len() as u64);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("verdicts differ: whole {whole:?}, chunked {chunked:?}"),
    }
});
