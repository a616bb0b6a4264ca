//! Which derivations failed, from what `nix build --keep-going` printed on stderr, and which
//! of them belong to a target: a target that did not build names the failed derivations in
//! its derivation closure (`nix-store -qR <target.drv>`, read from the store database).
//!
//! The lines recognised are the ones in which Nix names a derivation that could not be
//! built by itself (not one whose dependencies failed):
//! `error: builder for '/nix/store/…-x.drv' failed with exit code 1;` (Nix 2.8 and later),
//! `error: Cannot build '/nix/store/…-x.drv'.` (newer Nix), `… is required to build
//! '/nix/store/…-x.drv', but I am a …` (no machine for its system) and
//! `hash mismatch in fixed-output derivation '/nix/store/…-x.drv'`.

use std::collections::BTreeSet;

const MARKERS: [&str; 4] = [
    "builder for '",
    "Cannot build '",
    "is required to build '",
    "fixed-output derivation '",
];

/// The derivation a line of Nix's stderr reports as failed, if any.
pub fn failed_derivation(line: &str, store_dir: &str) -> Option<String> {
    MARKERS.iter().find_map(|m| {
        let rest = &line[line.find(m)? + m.len()..];
        let path = &rest[..rest.find('\'')?];
        let ok = path.ends_with(".drv")
            && path
                .strip_prefix(store_dir)
                .is_some_and(|p| p.starts_with('/') && !p[1..].contains('/'));
        ok.then(|| path.to_owned())
    })
}

/// Every failed derivation named in `lines`, sorted and without repeats.
pub fn failed_derivations<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    store_dir: &str,
) -> BTreeSet<String> {
    lines
        .into_iter()
        .filter_map(|l| failed_derivation(l, store_dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "/nix/store/45bdn4pyskxr7iiz826qwz668cxifcyc-bad-0.1.drv";

    #[test]
    fn lines_nix_prints() {
        for line in [
            format!("error: builder for '{D}' failed with exit code 1;"),
            format!("error: Cannot build '{D}'."),
            format!(
                "error: a 'aarch64-linux' with features {{}} is required to build '{D}', but I am a 'x86_64-linux' with features {{}}"
            ),
            format!("error: hash mismatch in fixed-output derivation '{D}':"),
        ] {
            assert_eq!(
                failed_derivation(&line, "/nix/store").as_deref(),
                Some(D),
                "{line}"
            );
        }
        for line in [
            format!("error: 1 dependencies of derivation '{D}' failed to build"),
            format!("building '{D}'..."),
            "error: builder for '/nix/store/../etc/passwd.drv' failed".to_owned(),
            "error: builder for '/elsewhere/x.drv' failed".to_owned(),
            "error: builder for '/nix/store/x' failed".to_owned(),
        ] {
            assert_eq!(failed_derivation(&line, "/nix/store"), None, "{line}");
        }
        let all = failed_derivations(
            [
                format!("error: builder for '{D}' failed with exit code 1;").as_str(),
                "       > failing",
                format!("error: builder for '{D}' failed with exit code 2;").as_str(),
            ],
            "/nix/store",
        );
        assert_eq!(all.into_iter().collect::<Vec<_>>(), [D]);
    }
}
