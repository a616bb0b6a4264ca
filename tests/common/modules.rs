//! tailcache's Nix modules judged by the real module system, offline: nixpkgs' `lib/` and
//! home-manager from vendored snapshots (never part of this repository), unpacked into a
//! temporary directory per [`Modules`], and `tests/nix/eval.nix` on top (a stand-in `pkgs`
//! of fake derivations, the NixOS declarations the modules need). Evaluation runs
//! `nix-instantiate --eval --strict --json` with a private Nix configuration and a store of
//! its own, into which the stand-in writes every text file the modules render, so a test
//! reads back exactly what a machine would get.
//!
//! The snapshots are found in `$TAILCACHE_NIX_VENDOR`, `../shared/vendor` next to the
//! repository, or `/work/shared/vendor`; without them the test fails, saying what to provide
//! (`scripts/fetch-nix-vendor.sh` fetches the same commits where there is network).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tailcache_testkit::NixEnv;
use tailcache_testkit::nix::assert_success;
use tempfile::TempDir;

/// Environment variable naming the directory that holds the two snapshots.
pub const ENV_VENDOR: &str = "TAILCACHE_NIX_VENDOR";
/// The snapshots: (file, top directory inside, repository, commit).
pub const SNAPSHOTS: [(&str, &str, &str, &str); 2] = [
    (
        "nixpkgs-lib.tar.xz",
        "nixpkgs-lib",
        "nix-community/nixpkgs.lib",
        "de42d44212d207476489bce163375d8306a26d59",
    ),
    (
        "home-manager.tar.xz",
        "home-manager",
        "nix-community/home-manager",
        "ec1a8fdf74ed3f276148ee106299a2ba0e65d51f",
    ),
];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Nix string literal.
pub fn lit(s: &str) -> String {
    tailcache_store::nix_string::nix_string(s)
}

/// A Nix path expression for an absolute path.
pub fn path_expr(p: &Path) -> String {
    format!("(/. + {})", lit(p.to_str().unwrap()))
}

/// The directory holding the snapshots, or a panic saying exactly what to provide.
pub fn vendor_dir() -> PathBuf {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os(ENV_VENDOR).filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(d));
    }
    candidates.push(repo().join("../shared/vendor"));
    candidates.push(PathBuf::from("/work/shared/vendor"));
    for c in candidates {
        if SNAPSHOTS.iter().all(|(f, ..)| c.join(f).is_file()) {
            return c;
        }
        tried.push(c.display().to_string());
    }
    let wanted: Vec<String> = SNAPSHOTS
        .iter()
        .map(|(file, top, repo, commit)| {
            format!(
                "  {file}: https://github.com/{repo}/archive/{commit}.tar.gz, repacked with its \
                 top directory named {top}/"
            )
        })
        .collect();
    panic!(
        "the module tests need nixpkgs' lib and home-manager, pinned:\n{}\nnone found in {}.\n\
         Run scripts/fetch-nix-vendor.sh DIR (needs network) and set {ENV_VENDOR}=DIR, or put \
         the two files in ../shared/vendor next to the repository.",
        wanted.join("\n"),
        tried.join(", ")
    );
}

/// Unpacked snapshots and the stand-ins, with a Nix to evaluate them.
pub struct Modules {
    dir: TempDir,
    pub nix: NixEnv,
}

impl Default for Modules {
    fn default() -> Self {
        Self::new()
    }
}

impl Modules {
    pub fn new() -> Modules {
        let from = vendor_dir();
        let dir = tempfile::Builder::new()
            .prefix("tc-modules.")
            .tempdir()
            .unwrap();
        let vendor = dir.path().join("vendor");
        std::fs::create_dir_all(&vendor).unwrap();
        for (file, top, ..) in SNAPSHOTS {
            let o = Command::new("tar")
                .arg("-xJf")
                .arg(from.join(file))
                .arg("-C")
                .arg(&vendor)
                .output()
                .unwrap();
            assert_success(&format!("unpacking {file}"), &o);
            assert!(vendor.join(top).is_dir(), "{file} has no {top}/");
        }
        // home-manager's version module reads release.json, which the snapshot leaves out;
        // its release is the one of the nixpkgs it is paired with (else it only warns).
        let release = vendor.join("home-manager/release.json");
        if !release.exists() {
            let version = std::fs::read_to_string(vendor.join("nixpkgs-lib/lib/.version")).unwrap();
            std::fs::write(
                &release,
                format!(
                    "{{ \"release\": \"{}\", \"isReleaseBranch\": false }}\n",
                    version.trim()
                ),
            )
            .unwrap();
        }
        // The stand-in for nixpkgs itself: what home-manager imports from `pkgs.path`.
        let stand_in = vendor.join("nixpkgs");
        std::fs::create_dir_all(stand_in.join("nixos/modules/misc")).unwrap();
        std::os::unix::fs::symlink("../nixpkgs-lib/lib", stand_in.join("lib")).unwrap();
        let tests = repo().join("tests/nix");
        let eval = path_expr(&tests.join("eval.nix"));
        let nixos = path_expr(&tests.join("nixos.nix"));
        std::fs::write(
            stand_in.join("default.nix"),
            format!(
                "{{ system ? \"x86_64-linux\", ... }}: (import {eval} {{ vendor = ./..; }}).pkgsFor system\n"
            ),
        )
        .unwrap();
        for part in ["assertions", "meta"] {
            std::fs::write(
                stand_in.join(format!("nixos/modules/misc/{part}.nix")),
                format!("{{ lib, pkgs, ... }}: (import {nixos} {{ inherit lib pkgs; }}).{part}\n"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        Modules {
            dir,
            nix: NixEnv::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The store the evaluation writes its text files into (a chroot store).
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `expr` with `t` bound to tests/nix/eval.nix, evaluated strictly to JSON.
    pub fn eval(&self, expr: &str) -> Output {
        let full = format!(
            "let t = import {} {{ vendor = {}; }}; in {expr}",
            path_expr(&repo().join("tests/nix/eval.nix")),
            path_expr(&self.dir.path().join("vendor"))
        );
        let store = self.store();
        self.nix.output(
            "nix-instantiate",
            &[
                "--eval",
                "--strict",
                "--json",
                "--read-write-mode",
                "--store",
                store.to_str().unwrap(),
                "--expr",
                &full,
            ],
        )
    }

    /// [`Modules::eval`], which must succeed.
    pub fn json(&self, expr: &str) -> Value {
        let o = self.eval(expr);
        assert_success(&format!("evaluating {expr}"), &o);
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The error of an evaluation that must fail.
    pub fn error(&self, expr: &str) -> String {
        let o = self.eval(expr);
        assert!(
            !o.status.success(),
            "{expr} evaluated: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// The text file the stand-in put at `store_path` (or at its first existing component:
    /// home-manager names a unit as a path below the file's out path).
    pub fn read(&self, store_path: &str) -> String {
        let rel = store_path
            .strip_prefix('/')
            .unwrap_or_else(|| panic!("{store_path:?} is not a store path"));
        let mut p = self.store();
        for part in rel.split('/') {
            p.push(part);
            if p.is_file() {
                return std::fs::read_to_string(&p).unwrap();
            }
        }
        panic!("{store_path} was not written by the evaluation")
    }

    /// The value behind a `pkgs.formats.<format>.generate` file, with its format.
    pub fn generated(&self, store_path: &str) -> (String, Value) {
        let v: Value = serde_json::from_str(&self.read(store_path)).unwrap();
        (v["format"].as_str().unwrap().to_owned(), v["value"].clone())
    }

    /// A `pkgs.formats.toml` file rendered as TOML (what remarshal would write), checked to
    /// be TOML-shaped.
    pub fn toml(&self, store_path: &str) -> String {
        let (format, value) = self.generated(store_path);
        assert_eq!(format, "toml", "{store_path}");
        toml::to_string(&value).unwrap()
    }
}

/// A JSON list of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}
