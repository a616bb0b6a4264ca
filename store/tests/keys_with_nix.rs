//! Keys made by `SecretKey::generate` work with real Nix in both directions:
//! - Nix signs with our secret key file (`nix store sign -k`), and our code verifies the
//!   signature; Nix itself accepts our public key in `trusted-public-keys`;
//! - our code signs narinfos in a `file://` binary cache, and `nix copy --from` with
//!   `require-sigs = true` accepts them with our public key (and refuses them without it).
//!
//! Needs Nix (Debian nix-bin 2.8) on PATH. Without it this test FAILS on purpose: a
//! conformance test that skips silently proves nothing. Input-addressed paths are used
//! throughout because Nix trusts content-addressed paths without any signature.

use std::path::{Path, PathBuf};
use std::process::Output;

use std::sync::atomic::{AtomicUsize, Ordering};
use tailcache_testkit::NixEnv;

use tailcache_store::StorePath;
use tailcache_store::narinfo::NarInfo;
use tailcache_store::signing::{PublicKey, SecretKey};

const DIR: &str = "/nix/store";

/// A private Nix configuration and a scratch directory; never the machine's own settings.
struct Nix {
    env: NixEnv,
    runs: AtomicUsize,
}

impl Nix {
    fn new() -> Self {
        Nix {
            env: NixEnv::new(),
            runs: AtomicUsize::new(0),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.env.dir().join(rel)
    }

    /// Runs a Nix command with the private config and a fresh narinfo disk cache.
    fn run(&self, prog: &str, args: &[&str]) -> Output {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        self.env
            .command(prog)
            .args(args)
            .env("XDG_CACHE_HOME", self.path(&format!("cache-{n}")))
            .output()
            .unwrap_or_else(|e| panic!("running {prog}: {e}"))
    }

    /// Runs and demands success; returns stdout.
    fn ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args);
        assert!(
            out.status.success(),
            "{prog} {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `Sig` strings by key `name` in `nix path-info --json` output (no JSON parser needed:
/// a signature is a quoted `name:base64` string).
fn sigs_in_json(json: &str, name: &str) -> Vec<String> {
    let needle = format!("\"{name}:");
    json.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &json[i + 1..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

fn narinfo_file(cache: &Path, path: &StorePath) -> PathBuf {
    cache.join(format!("{}.narinfo", path.hash()))
}

#[test]
fn generated_keys_work_with_real_nix() {
    let nix = Nix::new();
    let store = nix.path("store");

    // Two input-addressed paths: `dep`, and `top` referring to `dep` and itself.
    let expr = nix.path("paths.nix");
    std::fs::write(
        &expr,
        r#"let
  mk = name: script: builtins.derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" script ];
  };
  dep = mk "keytest-dep" "echo dep > $out";
  top = mk "keytest-top" "mkdir $out; echo ${dep} > $out/dep; echo $out > $out/self";
in top
"#,
    )
    .unwrap();
    let top_abs = nix
        .ok(
            "nix-build",
            &["--store", s(&store), s(&expr), "--no-out-link"],
        )
        .trim()
        .to_owned();
    let closure = nix.ok("nix-store", &["--store", s(&store), "-qR", &top_abs]);
    let paths: Vec<&str> = closure.lines().collect();
    assert_eq!(paths.len(), 2, "{closure}");
    let store_paths: Vec<StorePath> = paths
        .iter()
        .map(|p| StorePath::from_absolute(DIR, p).unwrap())
        .collect();

    // --- Direction 1: Nix signs with our generated key; we verify.
    let k1 = SecretKey::generate("tailcache-keytest-1").unwrap();
    let k1_file = nix.path("k1.secret");
    k1.write_new(&k1_file).unwrap();
    let k1_pub = k1.public().to_nix_string();

    let mut args = vec!["store", "sign", "--store", s(&store), "-k", s(&k1_file)];
    args.extend(&paths);
    nix.ok("nix", &args);

    let mut args = vec!["path-info", "--store", s(&store), "--json"];
    args.extend(&paths);
    let json = nix.ok("nix", &args);
    let json_sigs = sigs_in_json(&json, k1.name());
    assert_eq!(
        json_sigs.len(),
        2,
        "expected one k1 signature per path: {json}"
    );

    let c1 = nix.path("c1");
    let c1_url = format!("file://{}?compression=none", s(&c1));
    let mut args = vec!["copy", "--from", s(&store), "--to", &c1_url];
    args.extend(&paths);
    nix.ok("nix", &args);

    let k1_public = PublicKey::parse(&k1_pub).unwrap();
    for sp in &store_paths {
        let ni = NarInfo::parse(
            &std::fs::read_to_string(narinfo_file(&c1, sp)).unwrap(),
            DIR,
        )
        .unwrap();
        assert_eq!(ni.info.sigs.len(), 1, "{:?}", ni.info.sigs);
        assert!(json_sigs.contains(&ni.info.sigs[0]));
        assert!(
            k1_public.verify(&ni.info.fingerprint(DIR), &ni.info.sigs[0]),
            "Nix's signature with our key does not verify for {sp}"
        );
        // Ours is deterministic and must be the very same signature.
        assert_eq!(k1.sign(&ni.info.fingerprint(DIR)), ni.info.sigs[0]);
    }
    assert!(
        store_paths.iter().any(|sp| sp.name() == "keytest-top"
            && NarInfo::parse(
                &std::fs::read_to_string(narinfo_file(&c1, sp)).unwrap(),
                DIR
            )
            .unwrap()
            .info
            .references
            .len()
                == 2),
        "the top path should have references (dep and itself) so the fingerprint covers them"
    );

    // Nix accepts our public key format: verifying the cache with it trusts the paths …
    let mut args = vec![
        "store",
        "verify",
        "--store",
        &c1_url,
        "--option",
        "trusted-public-keys",
        &k1_pub,
        "--sigs-needed",
        "1",
    ];
    args.extend(&paths);
    nix.ok("nix", &args);
    // … and with another key it does not (exit status 2 = untrusted).
    let other_pub = SecretKey::generate("tailcache-keytest-1")
        .unwrap()
        .public()
        .to_nix_string();
    args[6] = &other_pub;
    let out = nix.run("nix", &args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "nix store verify with an unrelated key should report untrusted paths: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --- Direction 2: our code signs the narinfos; Nix verifies.
    let k2 = SecretKey::generate("tailcache-keytest-2").unwrap();
    let c2 = nix.path("c2");
    let c2_url = format!("file://{}?compression=none", s(&c2));
    let mut args = vec!["copy", "--from", s(&store), "--to", &c2_url];
    args.extend(&paths);
    nix.ok("nix", &args);
    for sp in &store_paths {
        let file = narinfo_file(&c2, sp);
        let mut ni = NarInfo::parse(&std::fs::read_to_string(&file).unwrap(), DIR).unwrap();
        // Drop the k1 signatures that `nix store sign` left in the store, so that only ours
        // can make Nix trust these paths.
        ni.info.sigs.clear();
        ni.info.sign(&k2, DIR);
        std::fs::write(&file, ni.render(DIR)).unwrap();
    }
    let k2_pub = k2.public().to_nix_string();
    let copy_into = |dest: &str, trusted: &str| {
        let mut args = vec![
            "copy",
            "--from",
            &c2_url,
            "--to",
            dest,
            "--option",
            "trusted-public-keys",
            trusted,
            "--option",
            "require-sigs",
            "true",
        ];
        args.extend(&paths);
        nix.run("nix", &args)
    };
    // Without our key (only k1, whose signatures were removed) Nix must refuse …
    let refused = copy_into(s(&nix.path("s-refused")), &k1_pub);
    assert!(
        !refused.status.success(),
        "nix copy accepted paths without a trusted signature"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("signature"), "unexpected refusal: {stderr}");
    // … and with it, accept.
    let s2 = nix.path("s2");
    let accepted = copy_into(s(&s2), &k2_pub);
    assert!(
        accepted.status.success(),
        "nix copy refused narinfos signed by our code:\n{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let valid = nix.ok("nix-store", &["--store", s(&s2), "-qR", &top_abs]);
    assert_eq!(valid.lines().count(), 2, "{valid}");
}
