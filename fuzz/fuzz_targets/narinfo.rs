//! Fuzzes `NarInfo::parse`: never panics, and what it accepts renders to a narinfo that
//! parses back to the same value (so nothing accepted is silently reinterpreted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailcache_store::narinfo::NarInfo;

const STORE_DIR: &str = "/nix/store";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(info) = NarInfo::parse(text, STORE_DIR) {
        let rendered = info.render(STORE_DIR);
        let again = NarInfo::parse(&rendered, STORE_DIR)
            .unwrap_or_else(|e| panic!("rendered narinfo does not parse: {e}\n{rendered}"));
        assert_eq!(again, info, "round trip changed the narinfo");
    }
});
