//! The server's narinfo advertising another of the NAR's files: only the four lines that
//! describe the file (`URL`, `Compression`, `FileHash`, `FileSize`) change, every other line
//! — the signed ones (`StorePath`, `NarHash`, `NarSize`, `References`), `Sig`, `Deriver`,
//! `CA` and any the agent does not know — is passed on byte for byte, so Nix checks the
//! server's signature as if the agent were not there. Text in, text out: no I/O.

use tailcache_p2p::files::{NarFile, NarFiles};
use tailcache_store::Sha256Hash;

/// The value of the first `key` line of narinfo `text` (`key` without its `: `).
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.split_once(": ")
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// The keys that describe the file, outside the signed fingerprint, in Nix's order.
const FILE_KEYS: [&str; 4] = ["URL", "Compression", "FileHash", "FileSize"];

/// `text` naming `file` instead, or `None` when it cannot be done safely: the narinfo is not
/// of the NAR `files` describes (its NarHash or NarSize differ), has no URL, or repeats a
/// key this depends on (Nix would read the last one; the agent does not guess).
pub fn advertise(text: &str, files: &NarFiles, file: &NarFile) -> Option<String> {
    let mut seen = [0usize; 4];
    let mut nar_hash = None;
    let mut nar_size = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        if let Some(i) = FILE_KEYS.iter().position(|k| *k == key) {
            seen[i] += 1;
        }
        match key {
            "NarHash" if nar_hash.replace(value).is_some() => return None,
            "NarSize" if nar_size.replace(value).is_some() => return None,
            _ => {}
        }
    }
    let of_this_nar = nar_hash.and_then(|h| Sha256Hash::parse(h).ok()) == Some(files.nar_hash)
        && nar_size.and_then(|n| n.parse::<u64>().ok()) == Some(files.nar_size);
    if !of_this_nar || seen[0] != 1 || seen.iter().any(|n| *n > 1) {
        return None;
    }
    let values = [
        file.url.clone(),
        file.compression.name().to_owned(),
        file.file_hash.to_string(),
        file.file_size.to_string(),
    ];
    let field = |i: usize| format!("{}: {}\n", FILE_KEYS[i], values[i]);
    // Missing file lines go after the last present one of URL and Compression.
    let anchor = if seen[1] == 1 { 1 } else { 0 };
    let mut out = String::with_capacity(text.len() + 128);
    for line in text.split_inclusive('\n') {
        let key = line.split_once(": ").map(|(k, _)| k);
        match key.and_then(|k| FILE_KEYS.iter().position(|f| *f == k)) {
            Some(i) => {
                out.push_str(&field(i));
                if i == anchor {
                    for missing in (0..4).filter(|m| seen[*m] == 0) {
                        out.push_str(&field(missing));
                    }
                }
            }
            None => out.push_str(line),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_its_whole_key() {
        let text = "URLx: no\nURL: nar/a.nar.xz\nFileSize: 12\nURL: nar/b.nar.xz\n";
        assert_eq!(field(text, "URL"), Some("nar/a.nar.xz"));
        assert_eq!(field(text, "FileSize"), Some("12"));
        assert_eq!(field(text, "Compression"), None);
    }
    use proptest::prelude::*;
    use tailcache_store::narinfo::NarInfo;
    use tailcache_store::{Compression, StorePath};

    const STORE: &str = "/nix/store";

    /// A narinfo as the server renders it (zstd file), and its NAR's file list.
    fn fixture() -> (String, NarFiles) {
        let nar_hash = Sha256Hash::digest(b"nar");
        let zstd = Sha256Hash::digest(b"zstd");
        let xz = Sha256Hash::digest(b"xz");
        let text = format!(
            "StorePath: /nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-big-file\n\
             URL: nar/{zn}.nar.zst\n\
             Compression: zstd\n\
             FileHash: {zstd}\n\
             FileSize: 33570000\n\
             NarHash: {nar_hash}\n\
             NarSize: 33554560\n\
             References: \n\
             Deriver: 0iyyp4c7x2ns1m5v8cn7s8gqigmk37g9-big-file.drv\n\
             Sig: k-1:{sig}==\n",
            zn = zstd.to_nix32(),
            sig = "A".repeat(86),
        );
        let files = NarFiles {
            nar_hash,
            nar_size: 33554560,
            files: vec![
                NarFile {
                    url: format!("nar/{}.nar", nar_hash.to_nix32()),
                    compression: Compression::None,
                    file_hash: nar_hash,
                    file_size: 33554560,
                },
                NarFile {
                    url: format!("nar/{}.nar.xz", xz.to_nix32()),
                    compression: Compression::Xz,
                    file_hash: xz,
                    file_size: 33560000,
                },
            ],
        };
        (text, files)
    }

    fn lines_except_file_keys(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !FILE_KEYS.iter().any(|k| l.starts_with(&format!("{k}: "))))
            .collect()
    }

    #[test]
    fn only_the_file_lines_change() {
        let (text, files) = fixture();
        for file in &files.files {
            let out = advertise(&text, &files, file).unwrap();
            assert_eq!(lines_except_file_keys(&out), lines_except_file_keys(&text));
            let info = NarInfo::parse(&out, STORE).unwrap();
            let orig = NarInfo::parse(&text, STORE).unwrap();
            assert_eq!(info.url, file.url);
            assert_eq!(info.compression, file.compression);
            assert_eq!(info.file_hash, Some(file.file_hash));
            assert_eq!(info.file_size, Some(file.file_size));
            assert_eq!(info.info.fingerprint(STORE), orig.info.fingerprint(STORE));
            assert_eq!(info.info.sigs, orig.info.sigs);
            // In place: the same order of lines as the server's.
            assert_eq!(out.lines().count(), text.lines().count());
        }
    }

    #[test]
    fn missing_file_lines_are_added_after_compression_or_url() {
        let (text, files) = fixture();
        let xz = &files.files[1];
        let bare: String = text
            .lines()
            .filter(|l| !l.starts_with("FileHash") && !l.starts_with("FileSize"))
            .map(|l| format!("{l}\n"))
            .collect();
        let out = advertise(&bare, &files, xz).unwrap();
        let info = NarInfo::parse(&out, STORE).unwrap();
        assert_eq!(
            (info.file_hash, info.file_size),
            (Some(xz.file_hash), Some(xz.file_size))
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[2].starts_with("Compression: xz") && lines[3].starts_with("FileHash: "));
        // No Compression line (Nix would read bzip2): one is added after URL.
        let no_compression: String = bare
            .lines()
            .filter(|l| !l.starts_with("Compression"))
            .map(|l| format!("{l}\n"))
            .collect();
        let out = advertise(&no_compression, &files, xz).unwrap();
        assert_eq!(
            NarInfo::parse(&out, STORE).unwrap().compression,
            Compression::Xz
        );
        assert!(out.lines().nth(2).unwrap().starts_with("Compression: xz"));
    }

    #[test]
    fn another_nar_or_an_ambiguous_narinfo_is_left_alone() {
        let (text, files) = fixture();
        let xz = &files.files[1];
        let mut other = files.clone();
        other.nar_size += 1;
        assert!(advertise(&text, &other, xz).is_none());
        let mut other = files.clone();
        other.nar_hash = Sha256Hash::digest(b"another nar");
        assert!(advertise(&text, &other, xz).is_none());
        let nar_hash = format!("NarHash: {}\n", files.nar_hash);
        for dup in ["URL: nar/x.nar\n", nar_hash.as_str(), "FileSize: 1\n"] {
            let doubled = format!("{text}{dup}");
            assert!(advertise(&doubled, &files, xz).is_none(), "{dup}");
        }
        let no_url: String = text
            .lines()
            .filter(|l| !l.starts_with("URL"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(advertise(&no_url, &files, xz).is_none());
        assert!(advertise("", &files, xz).is_none());
    }

    proptest! {
        /// Any narinfo the server may render (references, deriver, signatures, CA, with or
        /// without file lines) keeps every signed byte and parses to the new file.
        #[test]
        fn signed_lines_survive_any_rewrite(
            refs in proptest::collection::vec("[0-9a-df-np-sv-z]{32}-[a-z]{1,8}", 0..4),
            deriver in proptest::option::of("[0-9a-df-np-sv-z]{32}-[a-z]{1,8}\\.drv"),
            sigs in proptest::collection::vec("[a-z]{1,6}-1:[A-Za-z0-9+/]{86}==", 0..3),
            with_file_lines in any::<bool>(),
            pick in 0usize..2,
        ) {
            let (_, files) = fixture();
            let mut info = NarInfo::parse(&fixture().0, STORE).unwrap();
            info.info.references = refs.iter().map(|r| StorePath::from_base_name(r).unwrap()).collect();
            info.info.deriver = deriver.map(|d| StorePath::from_base_name(&d).unwrap());
            info.info.sigs = sigs;
            if !with_file_lines {
                info.file_hash = None;
                info.file_size = None;
            }
            let text = info.render(STORE);
            let file = &files.files[pick];
            let out = advertise(&text, &files, file).unwrap();
            prop_assert_eq!(lines_except_file_keys(&out), lines_except_file_keys(&text));
            let back = NarInfo::parse(&out, STORE).unwrap();
            prop_assert_eq!(back.info.fingerprint(STORE), info.info.fingerprint(STORE));
            prop_assert_eq!(&back.url, &file.url);
            prop_assert_eq!(back.compression, file.compression);
            prop_assert_eq!(back.file_hash, Some(file.file_hash));
            prop_assert_eq!(back.file_size, Some(file.file_size));
        }
    }
}
