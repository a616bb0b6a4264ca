//! Fuzzes what URLs and databases hand the store layer: store path base names and absolute
//! paths, store path hashes, nix32, and `sha256:` hashes in every spelling. Never panics,
//! and whatever parses prints back to a string that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailcache_store::{Sha256Hash, StorePath, StorePathHash, nixbase32};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = StorePath::from_base_name(s) {
        assert_eq!(p.base_name(), s);
        assert!(!p.name().contains('/') && !p.name().starts_with('.'));
    }
    if let Ok(p) = StorePath::from_absolute("/nix/store", s) {
        assert_eq!(p.to_absolute("/nix/store"), s);
    }
    if let Ok(h) = StorePathHash::parse(s) {
        assert_eq!(h.to_string(), s);
    }
    if let Ok(bytes) = nixbase32::decode::<32>(s) {
        assert_eq!(nixbase32::encode(&bytes), s);
    }
    if let Ok(h) = Sha256Hash::parse(s) {
        assert_eq!(Sha256Hash::parse(&h.to_string()).ok(), Some(h));
        assert_eq!(Sha256Hash::from_base16(&h.to_base16()).ok(), Some(h));
    }
    if let Ok(h) = Sha256Hash::from_base16(s) {
        // Strict base16: exactly 64 hex digits, which print back (lowercased) as given.
        assert!(s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()), "{s:?}");
        assert_eq!(h.to_base16(), s.to_ascii_lowercase());
    }
});
