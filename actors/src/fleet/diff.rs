//! What changed between two generations of a target: the store paths added and removed,
//! and per package the versions before and after and the change in NAR size — grouped the
//! way `nix store diff-closures` groups them: a trailing output name (`-man`, `-lib`, …) is
//! stripped, then the name is split like Nix's `DrvName` (the version starts after the
//! first `-` that is followed by something other than a letter).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tailcache_wire::generation::{ClosureDiff, PackageChange};

/// One path of a closure, as the store database records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosureEntry {
    /// Absolute store path.
    pub path: String,
    /// `sha256:<nix32>` of its NAR.
    pub nar_hash: String,
    pub nar_size: u64,
}

/// `(name, version)` of a store path's name (without the hash part).
pub fn package_name(name: &str) -> (&str, &str) {
    let name = strip_output(name);
    let b = name.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'-' && i + 1 < b.len() && !b[i + 1].is_ascii_alphabetic() {
            return (&name[..i], &name[i + 1..]);
        }
    }
    (name, "")
}

/// `diff-closures` strips what looks like an output name: `(.*)-([a-z]+|lib32|lib64)`.
fn strip_output(name: &str) -> &str {
    if let Some((head, tail)) = name.rsplit_once('-')
        && !head.is_empty()
        && (tail == "lib32"
            || tail == "lib64"
            || (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_lowercase())))
    {
        return head;
    }
    name
}

/// The part of an absolute store path after `<hash>-`.
fn path_name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.get(33..).unwrap_or(base)
}

#[derive(Default)]
struct Group<'a> {
    versions: BTreeSet<&'a str>,
    paths: BTreeSet<&'a str>,
    size: i64,
}

fn groups(closure: &[ClosureEntry]) -> BTreeMap<&str, Group<'_>> {
    let mut out: BTreeMap<&str, Group<'_>> = BTreeMap::new();
    for e in closure {
        let (name, version) = package_name(path_name(&e.path));
        let g = out.entry(name).or_default();
        g.versions.insert(version);
        g.paths.insert(&e.path);
        g.size += i64::try_from(e.nar_size).unwrap_or(i64::MAX);
    }
    out
}

/// The difference of `now` to `previous` (`None`: a first generation, everything added).
pub fn closure_diff(previous: Option<(u64, &[ClosureEntry])>, now: &[ClosureEntry]) -> ClosureDiff {
    let before: &[ClosureEntry] = previous.map_or(&[], |(_, c)| c);
    let old: BTreeSet<&str> = before.iter().map(|e| e.path.as_str()).collect();
    let new: BTreeSet<&str> = now.iter().map(|e| e.path.as_str()).collect();
    let (gb, ga) = (groups(before), groups(now));
    let names: BTreeSet<&str> = gb.keys().chain(ga.keys()).copied().collect();
    let empty = Group::default();
    let packages = names
        .into_iter()
        .filter_map(|name| {
            let (b, a) = (
                gb.get(name).unwrap_or(&empty),
                ga.get(name).unwrap_or(&empty),
            );
            (b.paths != a.paths).then(|| PackageChange {
                name: name.to_owned(),
                before: b.versions.iter().map(|v| (*v).to_owned()).collect(),
                after: a.versions.iter().map(|v| (*v).to_owned()).collect(),
                size_delta: a.size - b.size,
            })
        })
        .collect();
    ClosureDiff {
        previous: previous.map(|(n, _)| n),
        added: new.difference(&old).map(|p| (*p).to_owned()).collect(),
        removed: old.difference(&new).map(|p| (*p).to_owned()).collect(),
        packages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_as_nix_splits_them() {
        for (input, want) in [
            ("firefox-119.0", ("firefox", "119.0")),
            (
                "nixos-system-laptop-24.05.20240101.abc",
                ("nixos-system-laptop", "24.05.20240101.abc"),
            ),
            ("hello", ("hello", "")),
            ("fleet-motd-2", ("fleet-motd", "2")),
            (
                "python3.11-requests-2.31.0",
                ("python3.11-requests", "2.31.0"),
            ),
            // An output name is stripped first, as diff-closures does.
            ("openssl-3.0.12-man", ("openssl", "3.0.12")),
            ("glibc-2.38-lib64", ("glibc", "2.38")),
            ("home-manager-generation", ("home-manager", "")),
            ("x-_y", ("x", "_y")),
        ] {
            assert_eq!(package_name(input), want, "{input}");
        }
    }

    fn e(path: &str, size: u64) -> ClosureEntry {
        ClosureEntry {
            path: format!("/nix/store/{}-{path}", "0".repeat(32)),
            nar_hash: String::new(),
            nar_size: size,
        }
    }

    #[test]
    fn a_changed_package_and_its_paths() {
        let lib = e("lib-1.0", 100);
        let before = vec![lib.clone(), e("motd-1", 10), e("system-24.05.1", 50)];
        let after = vec![lib, e("motd-2", 14), e("system-24.05.2", 50)];
        let d = closure_diff(Some((1, &before)), &after);
        assert_eq!(d.previous, Some(1));
        assert_eq!(d.added, [after[1].path.clone(), after[2].path.clone()]);
        assert_eq!(d.removed, [before[1].path.clone(), before[2].path.clone()]);
        assert_eq!(d.packages.len(), 2);
        assert_eq!(d.packages[0].name, "motd");
        assert_eq!(d.packages[0].before, ["1"]);
        assert_eq!(d.packages[0].after, ["2"]);
        assert_eq!(d.packages[0].size_delta, 4);
        assert_eq!(d.packages[1].name, "system");
        assert_eq!(d.packages[1].size_delta, 0);
    }

    #[test]
    fn a_first_generation_adds_everything_and_equal_closures_differ_in_nothing() {
        let c = vec![e("a-1", 1), e("b-2", 2)];
        let d = closure_diff(None, &c);
        assert_eq!(d.previous, None);
        assert_eq!(d.added.len(), 2);
        assert!(d.removed.is_empty());
        assert_eq!(d.packages.len(), 2);
        assert!(d.packages.iter().all(|p| p.before.is_empty()));
        let same = closure_diff(Some((4, &c)), &c);
        assert!(same.added.is_empty() && same.removed.is_empty() && same.packages.is_empty());
        let gone = closure_diff(Some((4, &c)), &c[..1]);
        assert_eq!(gone.packages[0].name, "b");
        assert_eq!(gone.packages[0].after, Vec::<String>::new());
        assert_eq!(gone.packages[0].size_delta, -2);
    }
}
