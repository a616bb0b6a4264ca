//! narinfo files of the Nix binary cache protocol (`GET /<hash>.narinfo`), and the signature
//! fingerprint that `Sig:` lines sign.
//!
//! The format is `Key: value\n` lines. Rendering follows what Nix 2.8 writes
//! (`NarInfo::to_string`, as `nix copy --to file://…` produces it): StorePath, URL,
//! Compression, FileHash, FileSize, NarHash, NarSize, References (always present, possibly
//! empty: `References: \n`), Deriver, Sig…, CA. Parsing follows `NarInfo::NarInfo`:
//! unknown keys are ignored, a later value of a scalar key replaces an earlier one, every line
//! (the last included) ends with `\n`, and StorePath, a non-empty URL, NarHash and a non-zero
//! NarSize are required. Where Nix would quietly misread input (a key not followed by `": "`),
//! this parser refuses it instead.
//!
//! A narinfo is a [`PathInfo`] (what its `Sig:` lines sign: [`PathInfo::fingerprint`]) plus
//! where the NAR file is and how it is compressed (URL, Compression, FileHash, FileSize), as
//! Nix's `NarInfo` extends its `ValidPathInfo`.

use std::fmt::Write as _;

use crate::compression::Compression;
use crate::error::{Error, Result};
use crate::hash::Sha256Hash;
use crate::path_info::{PathInfo, sorted_base_names};
use crate::store_path::StorePath;

/// What Nix writes (and reads) as Deriver when it does not know one.
const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// One narinfo. When parsed, `info.references` are sorted by base name, `info.sigs` free of
/// duplicates and `info.registration_time` 0; [`NarInfo::render`] sorts references itself,
/// so callers may push in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The path and what its signatures sign.
    pub info: PathInfo,
    pub url: String,
    /// How the file at `url` is compressed (Nix reads a missing Compression as `bzip2`).
    pub compression: Compression,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
}

impl NarInfo {
    /// Renders the narinfo text for the logical store directory `store_dir`.
    pub fn render(&self, store_dir: &str) -> String {
        let info = &self.info;
        let mut out = String::with_capacity(512);
        // Writing into a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(out, "StorePath: {}", info.path.to_absolute(store_dir));
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {h}");
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(out, "FileSize: {n}");
        }
        let _ = writeln!(out, "NarHash: {}", info.nar_hash);
        let _ = writeln!(out, "NarSize: {}", info.nar_size);
        // Nix always writes this line, with a space after the colon even when it is empty.
        out.push_str("References: ");
        out.push_str(&sorted_base_names(&info.references).join(" "));
        out.push('\n');
        if let Some(d) = &info.deriver {
            let _ = writeln!(out, "Deriver: {d}");
        }
        for sig in &info.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &info.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }

    /// Parses narinfo text, validating StorePath against `store_dir`.
    pub fn parse(text: &str, store_dir: &str) -> Result<Self> {
        let corrupt = |reason: String| Error::InvalidNarInfo { reason };
        let mut fields = Fields::new();
        let mut rest = text;
        let mut line_no = 0usize;
        while !rest.is_empty() {
            line_no += 1;
            let (line, after) = rest
                .split_once('\n')
                .ok_or_else(|| corrupt(format!("line {line_no} does not end with a newline")))?;
            rest = after;
            let (key, value) = line.split_once(':').ok_or_else(|| {
                corrupt(format!(
                    "line {line_no} ({line:?}) has no \"Key: value\" form"
                ))
            })?;
            let value = value.strip_prefix(' ').ok_or_else(|| {
                corrupt(format!("line {line_no}: {key:?} is not followed by \": \""))
            })?;
            fields
                .set(key, value, store_dir)
                .map_err(|e| corrupt(format!("line {line_no}: {e}")))?;
        }
        fields.finish().map_err(|e| corrupt(e.to_owned()))
    }
}

/// What [`NarInfo::parse`] has read so far, one `Key: value` line at a time.
struct Fields {
    store_path: Option<StorePath>,
    url: String,
    compression: Compression,
    file_hash: Option<Sha256Hash>,
    file_size: Option<u64>,
    nar_hash: Option<Sha256Hash>,
    nar_size: u64,
    references: Vec<StorePath>,
    deriver: Option<StorePath>,
    sigs: Vec<String>,
    ca: Option<String>,
}

impl Fields {
    fn new() -> Self {
        Self {
            store_path: None,
            url: String::new(),
            compression: Compression::NARINFO_DEFAULT,
            file_hash: None,
            file_size: None,
            nar_hash: None,
            nar_size: 0,
            references: Vec::new(),
            deriver: None,
            sigs: Vec::new(),
            ca: None,
        }
    }

    /// Takes one line's value; an error says what is wrong with the line. Unknown keys are
    /// ignored, as Nix does.
    fn set(&mut self, key: &str, value: &str, store_dir: &str) -> std::result::Result<(), String> {
        let field = |e: Error| format!("{key}: {e}");
        let number = |e: String| format!("{key}: {e}");
        match key {
            "StorePath" => {
                self.store_path = Some(StorePath::from_absolute(store_dir, value).map_err(field)?);
            }
            "URL" => self.url = value.to_owned(),
            "Compression" => {
                // Nix's default for narinfos older than the field, also when empty.
                self.compression = if value.is_empty() {
                    Compression::NARINFO_DEFAULT
                } else {
                    value.parse().map_err(field)?
                };
            }
            "FileHash" => self.file_hash = Some(Sha256Hash::parse(value).map_err(field)?),
            "FileSize" => self.file_size = Some(parse_u64(value).map_err(number)?),
            "NarHash" => self.nar_hash = Some(Sha256Hash::parse(value).map_err(field)?),
            "NarSize" => self.nar_size = parse_u64(value).map_err(number)?,
            "References" => {
                // Nix accepts a second References line only if the first one was empty.
                if !self.references.is_empty() {
                    return Err("References repeated".to_owned());
                }
                for r in value.split(' ').filter(|r| !r.is_empty()) {
                    self.references
                        .push(StorePath::from_base_name(r).map_err(field)?);
                }
            }
            "Deriver" => {
                self.deriver = if value == UNKNOWN_DERIVER {
                    None
                } else {
                    Some(StorePath::from_base_name(value).map_err(field)?)
                };
            }
            "Sig" => self.sigs.push(value.to_owned()),
            "CA" => {
                if self.ca.is_some() {
                    return Err("CA repeated".to_owned());
                }
                // Nix reads an empty CA as "not content-addressed".
                if !value.is_empty() {
                    validate_ca(value)?;
                    self.ca = Some(value.to_owned());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The narinfo, once every required field was read; the error names the missing one.
    fn finish(mut self) -> std::result::Result<NarInfo, &'static str> {
        let store_path = self.store_path.ok_or("no StorePath")?;
        let nar_hash = self.nar_hash.ok_or("no NarHash")?;
        if self.url.is_empty() {
            return Err("no URL");
        }
        if self.nar_size == 0 {
            return Err("no NarSize, or NarSize 0");
        }
        self.references.sort();
        self.references.dedup();
        // Nix keeps signatures in a set; keep the first of each, in file order.
        let mut seen = std::collections::HashSet::new();
        self.sigs.retain(|s| seen.insert(s.clone()));
        Ok(NarInfo {
            info: PathInfo {
                path: store_path,
                nar_hash,
                nar_size: self.nar_size,
                references: self.references,
                deriver: self.deriver,
                sigs: self.sigs,
                ca: self.ca,
                registration_time: 0,
            },
            url: self.url,
            compression: self.compression,
            file_hash: self.file_hash,
            file_size: self.file_size,
        })
    }
}

/// Decimal digits only (no sign, no spaces), as Nix writes sizes.
fn parse_u64(s: &str) -> std::result::Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a decimal number"));
    }
    s.parse()
        .map_err(|_| format!("{s:?} does not fit in 64 bits"))
}

/// A content address as Nix renders one: `text:<algo>:<hash>` or `fixed:[r:]<algo>:<hash>`.
/// Only the shape is checked; the hash itself is Nix's business when it builds the path.
fn validate_ca(ca: &str) -> std::result::Result<(), String> {
    let rest = ca
        .strip_prefix("text:")
        .or_else(|| ca.strip_prefix("fixed:r:"))
        .or_else(|| ca.strip_prefix("fixed:"));
    let ok = rest.is_some_and(|r| {
        r.split_once(':').is_some_and(|(algo, hash)| {
            matches!(algo, "md5" | "sha1" | "sha256" | "sha512")
                && !hash.is_empty()
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        })
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "CA {ca:?} is not text:<algo>:<hash> or fixed:[r:]<algo>:<hash>"
        ))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::path_info::fingerprint;
    use crate::signing::SecretKey;

    const DIR: &str = "/nix/store";
    const P: &str = "1b63mzvv9ai6wcxl2603184mh6mrfms2-fixture-dep";
    const Q: &str = "5pr84pkwcjpb1vbk0i8m614f64d5xpn5-fixture-withrefs";
    const HASH: &str = "sha256:1vagcg4r6l6x6w0lj246c0cg1mvd3h5rsaizhfw68mw4sxpdh6cp";

    fn minimal() -> String {
        format!("StorePath: /nix/store/{P}\nURL: nar/x.nar\nNarHash: {HASH}\nNarSize: 128\n")
    }

    fn err_of(text: &str) -> String {
        match NarInfo::parse(text, DIR) {
            Err(e @ Error::InvalidNarInfo { .. }) => e.to_string(),
            other => panic!("expected InvalidNarInfo for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn minimal_narinfo_gets_nix_defaults() {
        let ni = NarInfo::parse(&minimal(), DIR).unwrap();
        assert_eq!(ni.info.path.base_name(), P);
        assert_eq!(ni.compression, Compression::Bzip2);
        assert_eq!(ni.file_hash, None);
        assert_eq!(ni.file_size, None);
        assert!(ni.info.references.is_empty() && ni.info.sigs.is_empty());
        assert_eq!(ni.info.deriver, None);
        assert_eq!(ni.info.ca, None);
        assert_eq!(
            ni.render(DIR),
            format!(
                "StorePath: /nix/store/{P}\nURL: nar/x.nar\nCompression: bzip2\n\
                 NarHash: {HASH}\nNarSize: 128\nReferences: \n"
            )
        );
    }

    #[test]
    fn parses_like_nix() {
        let hex = "sha256:a7b5a0c7b5f5d2bfc31fcb7bd0d6e4eb5d5a6c13d1c0e1e2d85d0b8fb4ee2e8f";
        let text = format!(
            "StorePath: /nix/store/{Q}\nURL: old\nURL: nar/new.nar.xz\nCompression: xz\n\
             FileHash: {hex}\nFileSize: 7\nNarHash: {HASH}\nNarSize: 128\n\
             System: x86_64-linux\nX-Unknown: whatever: with colons\n\
             References:  {Q}  {P} \nDeriver: unknown-deriver\nSig: a:b\nSig: a:b\nSig: c:d\n\
             CA: \n"
        );
        let ni = NarInfo::parse(&text, DIR).unwrap();
        assert_eq!(ni.url, "nar/new.nar.xz");
        assert_eq!(ni.file_hash, Some(Sha256Hash::parse(hex).unwrap()));
        assert_eq!(ni.file_size, Some(7));
        let refs: Vec<String> = ni
            .info
            .references
            .iter()
            .map(StorePath::base_name)
            .collect();
        assert_eq!(refs, [P, Q]);
        assert_eq!(ni.info.deriver, None);
        assert_eq!(ni.info.sigs, ["a:b", "c:d"]);
        assert_eq!(ni.info.ca, None);
        let empty = format!("{}Compression: \n", minimal());
        assert_eq!(
            NarInfo::parse(&empty, DIR).unwrap().compression,
            Compression::Bzip2
        );
        err_of(&format!("{}Compression: lz5\n", minimal()));
        // An empty References line may be followed by a real one (Nix allows it) …
        let twice = format!("{}References: \nReferences: {P}\n", minimal());
        assert_eq!(
            NarInfo::parse(&twice, DIR).unwrap().info.references.len(),
            1
        );
        // … but not a second non-empty one.
        err_of(&format!("{}References: {P}\nReferences: {Q}\n", minimal()));
        err_of(&format!(
            "{}CA: fixed:r:sha256:{}\nCA: text:{HASH}\n",
            minimal(),
            &HASH[7..]
        ));
    }

    #[test]
    fn rejects_what_nix_rejects() {
        let m = minimal();
        let without = |key: &str| -> String {
            m.lines()
                .filter(|l| !l.starts_with(key))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        assert!(err_of(&without("StorePath")).contains("StorePath"));
        assert!(err_of(&without("URL")).contains("URL"));
        assert!(err_of(&without("NarHash")).contains("NarHash"));
        assert!(err_of(&without("NarSize")).contains("NarSize"));
        let cases = [
            m.replace("URL: nar/x.nar", "URL: "),
            m.replace("NarSize: 128", "NarSize: 0"),
            m.replace("NarSize: 128", "NarSize: 12x"),
            m.replace("NarSize: 128", "NarSize: -1"),
            m.replace("NarSize: 128", "NarSize: 99999999999999999999"),
            m.replace("NarSize: 128", "NarSize: "),
            format!("{m}FileSize: big\n"),
            format!("{m}FileHash: md5:abc\n"),
            m.replace(HASH, "sha256:xyz"),
            m.replace(HASH, "sha512:abc"),
            // StorePath outside the store directory or not a valid base name.
            m.replace("/nix/store/", "/gnu/store/"),
            m.replace(P, "1b63mzvv9ai6wcxl2603184mh6mrfms2-a/b"),
            m.replace(P, &format!("{P}/bin")),
            format!("{m}References: not-a-store-path\n"),
            format!("{m}References: /nix/store/{P}\n"),
            format!("{m}References: {P} 1b63mzvv9ai6wcxl2603184mh6mrfms-x\n"),
            format!("{m}Deriver: ../etc/passwd\n"),
            format!("{m}CA: sha256:abc\n"),
            format!("{m}CA: fixed:sha256\n"),
            // Framing.
            format!("{m}just some text\n"),
            format!("{m}NoSpace:x\n"),
            format!("{m}References:\n"),
            format!("{m}\n"),
            m.trim_end_matches('\n').to_owned(),
            m.replace('\n', "\r\n"),
            String::new(),
        ];
        for text in &cases {
            err_of(text);
        }
    }

    #[test]
    fn fingerprint_sorts_references_as_text() {
        // nix32 reverses bit order, so text order and hash-byte order disagree here.
        let a = StorePath::from_base_name("0zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-a").unwrap();
        let b = StorePath::from_base_name("z0000000000000000000000000000000-b").unwrap();
        // StorePath's Ord is text order, whatever the hash bytes say.
        assert!(a < b, "StorePath's Ord must be text order");
        let h = Sha256Hash::parse(HASH).unwrap();
        let p = StorePath::from_base_name(P).unwrap();
        let want = format!(
            "1;/nix/store/{P};{HASH};128;/nix/store/{},/nix/store/{}",
            a.base_name(),
            b.base_name()
        );
        assert_eq!(fingerprint(DIR, &p, &h, 128, &[b.clone(), a.clone()]), want);
        assert_eq!(fingerprint(DIR, &p, &h, 128, &[a, b]), want);
        assert_eq!(
            fingerprint("/other", &p, &h, 5, &[]),
            format!("1;/other/{P};{HASH};5;")
        );
    }

    #[test]
    fn sign_replaces_our_signature_and_keeps_others() {
        let mut ni = NarInfo::parse(&minimal(), DIR).unwrap();
        ni.info.sigs = vec!["other-1:abc".to_owned(), "ours-1:stale".to_owned()];
        let key = SecretKey::generate("ours-1").unwrap();
        assert!(!ni.info.verify(&[key.public()], DIR));
        ni.info.sign(&key, DIR);
        assert_eq!(ni.info.sigs.len(), 2);
        assert_eq!(ni.info.sigs[0], "other-1:abc");
        assert!(ni.info.sigs[1].starts_with("ours-1:") && ni.info.sigs[1] != "ours-1:stale");
        assert!(ni.info.verify(&[key.public()], DIR));
        ni.info.sign(&key, DIR);
        assert_eq!(ni.info.sigs.len(), 2);
        // The signature covers NarSize, NarHash, the path and references, and the store dir.
        assert!(!ni.info.verify(&[key.public()], "/other/store"));
        let mut changed = ni.clone();
        changed.info.nar_size += 1;
        assert!(!changed.info.verify(&[key.public()], DIR));
        let mut changed = ni.clone();
        changed.info.references.push(changed.info.path.clone());
        assert!(!changed.info.verify(&[key.public()], DIR));
        // … but not URL, Compression, FileHash, FileSize.
        let mut changed = ni.clone();
        changed.url = "nar/y.nar.zst".to_owned();
        changed.compression = Compression::Zstd;
        changed.file_size = Some(3);
        changed.file_hash = Some(Sha256Hash::digest(b"y"));
        assert!(changed.info.verify(&[key.public()], DIR));
    }

    fn arb_store_path() -> impl Strategy<Value = StorePath> {
        (
            "[0-9a-df-np-sv-z]{32}",
            "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,40}",
        )
            .prop_map(|(h, n)| StorePath::from_base_name(&format!("{h}-{n}")).unwrap())
    }

    fn arb_hash() -> impl Strategy<Value = Sha256Hash> {
        any::<[u8; 32]>().prop_map(Sha256Hash)
    }

    prop_compose! {
        fn arb_narinfo()(
            store_path in arb_store_path(),
            url in "[A-Za-z0-9/._-]{1,60}",
            compression in proptest::sample::select(Compression::ALL.to_vec()),
            file_hash in proptest::option::of(arb_hash()),
            file_size in proptest::option::of(any::<u64>()),
            nar_hash in arb_hash(),
            nar_size in 1u64..,
            references in proptest::collection::vec(arb_store_path(), 0..6),
            deriver in proptest::option::of(arb_store_path()),
            sigs in proptest::collection::btree_set("[a-z0-9.-]{1,20}:[A-Za-z0-9+/]{86}==", 0..4),
            ca in proptest::option::of(
                "(text:sha256:|fixed:sha256:|fixed:r:sha256:|fixed:r:sha1:)[0-9a-z]{32,64}"
            ),
        ) -> NarInfo {
            let mut references = references;
            references.sort();
            references.dedup();
            let info = PathInfo {
                path: store_path, nar_hash, nar_size, references, deriver,
                sigs: sigs.into_iter().collect(), ca, registration_time: 0,
            };
            NarInfo { info, url, compression, file_hash, file_size }
        }
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(ni in arb_narinfo(), dir in "/[a-z]{1,8}(/[a-z]{1,8})?") {
            let text = ni.render(&dir);
            prop_assert!(text.ends_with('\n'));
            let back = NarInfo::parse(&text, &dir).unwrap();
            prop_assert_eq!(&back, &ni);
            prop_assert_eq!(back.render(&dir), text);
        }
    }
}
