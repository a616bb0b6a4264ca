//! The Nix side of the integration tests: a private Nix configuration per test
//! (`NixEnv`), throwaway stores built by real Nix with every store shape the
//! cache must serve (`TestStore`) and their ground truth from `nix path-info`,
//! signing keys from `nix-store --generate-binary-cache-key`, and the stock
//! client operations (`nix copy --from`, `nix-store -r`) the cache is judged by.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use tempfile::TempDir;

pub const STORE_DIR: &str = "/nix/store";
/// Upper bound for one Nix command; a hung download must fail the test, not CI.
const NIX_TIMEOUT_SECS: &str = "300";

fn require_nix() {
    for tool in ["nix", "nix-store", "nix-build"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "Nix is required for this test: apt-get install nix-bin ({tool} not on PATH)"
        );
    }
}

/// A private Nix configuration: nothing of the machine's nix.conf, caches or
/// substituters leaks in, and nothing leaks out.
#[derive(Debug)]
pub struct NixEnv {
    dir: TempDir,
}

impl Default for NixEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl NixEnv {
    /// Fails the test (never skips it) when Nix is not installed.
    pub fn new() -> NixEnv {
        require_nix();
        let dir = tempfile::Builder::new()
            .prefix("tc-nixenv.")
            .tempdir()
            .unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        // A store under another root forces the build sandbox on Linux, so the
        // builder's /bin/sh and its libraries must be mapped in.
        let mut sandbox_paths = String::new();
        for p in [
            "/bin", "/sbin", "/usr", "/lib", "/lib64", "/lib32", "/libx32",
        ] {
            let path = Path::new(p);
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::canonicalize(path).unwrap();
                    sandbox_paths.push_str(&format!(" {p}={}", target.display()));
                }
                Ok(_) => sandbox_paths.push_str(&format!(" {p}")),
                Err(_) => {}
            }
        }
        std::fs::write(
            conf.join("nix.conf"),
            format!(
                "build-users-group =\n\
                 sandbox = false\n\
                 sandbox-paths ={sandbox_paths}\n\
                 substituters =\n\
                 trusted-public-keys =\n\
                 require-sigs = true\n\
                 experimental-features = nix-command\n\
                 fsync-metadata = false\n\
                 narinfo-cache-negative-ttl = 0\n\
                 narinfo-cache-positive-ttl = 0\n\
                 connect-timeout = 5\n\
                 stalled-download-timeout = 30\n\
                 download-attempts = 2\n\
                 warn-dirty = false\n"
            ),
        )
        .unwrap();
        std::fs::write(conf.join("empty.conf"), "").unwrap();
        NixEnv { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command for a Nix tool under this configuration, bounded in time.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-k", "5", NIX_TIMEOUT_SECS, program]);
        self.configure(&mut c);
        c
    }

    /// Points any command at this configuration (e.g. a server whose build steps run
    /// `nix`): the same environment `command` gives Nix's own tools.
    pub fn configure(&self, c: &mut Command) {
        let d = self.dir.path();
        c.env("NIX_CONF_DIR", d.join("conf"))
            .env("NIX_USER_CONF_FILES", d.join("conf/empty.conf"))
            .env("XDG_CACHE_HOME", d.join("cache"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_CONFIG_DIRS", d.join("config"))
            .env("XDG_DATA_HOME", d.join("data"))
            .env("HOME", d.join("home"));
        for var in [
            "NIX_CONFIG",
            "NIX_REMOTE",
            "NIX_PATH",
            "NIX_STORE_DIR",
            "NIX_STATE_DIR",
            "NIX_LOG_DIR",
            "NIX_DAEMON_SOCKET_PATH",
            "NIX_SSL_CERT_FILE",
        ] {
            c.env_remove(var);
        }
    }

    /// Runs a Nix tool and returns its output, whatever its exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"))
    }

    /// Runs a Nix tool that must succeed; returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.output(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A fresh key pair written by Nix itself, in `dir`.
    pub fn generate_key(&self, dir: &Path, name: &str) -> KeyPair {
        let secret = dir.join(format!("{name}.sec"));
        let public_file = dir.join(format!("{name}.pub"));
        self.run(
            "nix-store",
            &[
                "--store",
                "dummy://",
                "--generate-binary-cache-key",
                name,
                secret.to_str().unwrap(),
                public_file.to_str().unwrap(),
            ],
        );
        let public = std::fs::read_to_string(&public_file)
            .unwrap()
            .trim()
            .to_string();
        KeyPair { secret, public }
    }
}

#[derive(Debug, Clone)]
pub struct KeyPair {
    pub secret: PathBuf,
    /// `name:base64`, as Nix's `trusted-public-keys` wants it.
    pub public: String,
}

impl KeyPair {
    pub fn name(&self) -> &str {
        self.public.split_once(':').unwrap().0
    }
}

/// What `nix path-info --json` (and `nix-store -q --hash`) say about one path.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathInfo {
    pub path: String,
    /// `sha256-<base64>` (SRI), as `nix path-info --json` prints it.
    #[serde(rename = "narHash")]
    pub nar_hash_sri: String,
    /// `sha256:<nix32>`, as narinfos carry it (from `nix-store -q --hash`, not the JSON).
    #[serde(skip)]
    pub nar_hash: String,
    pub nar_size: u64,
    /// Sorted.
    #[serde(default)]
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub ca: Option<String>,
    #[serde(default)]
    pub signatures: Vec<String>,
}

/// `nix path-info --json` of `paths` in the store `store` (a root dir or URL).
pub fn path_infos(nix: &NixEnv, store: &str, paths: &[&str]) -> Vec<PathInfo> {
    let mut args = vec!["path-info", "--store", store, "--json"];
    args.extend_from_slice(paths);
    let out = nix.run("nix", &args);
    let mut infos: Vec<PathInfo> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("nix path-info --json: {e}: {out}"));
    for info in &mut infos {
        info.references.sort();
    }
    infos
}

pub fn base_name(store_path: &str) -> &str {
    store_path
        .strip_prefix("/nix/store/")
        .unwrap_or_else(|| panic!("not a store path: {store_path}"))
}

pub fn hash_part(store_path: &str) -> &str {
    &base_name(store_path)[..32]
}

/// Derivations producing every shape the cache must serve. `nonce` makes the
/// paths (and build logs) unique to one test store.
const SHAPES_NIX: &str = r#"
{ nonce }:
let
  mk = name: script: builtins.derivation {
    inherit name nonce; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" script ];
  };
  leaf = mk "leaf" ''
    echo "tailcache-itest build log of leaf ${nonce}"
    echo "leaf-content ${nonce}" > $out
  '';
  shapes = mk "shapes" ''
    set -e
    echo "tailcache-itest build log of shapes ${nonce}"
    mkdir -p $out/bin $out/empty-dir "$out/with space" $out/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t
    printf '#!/bin/sh\necho hi\n' > $out/bin/hello; chmod +x $out/bin/hello
    : > $out/bin/empty-exec; chmod +x $out/bin/empty-exec
    : > $out/empty-file
    printf 12345678 > $out/exactly8
    echo B > $out/B; echo underscore > $out/_u; echo z > $out/z
    echo deep > $out/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/deep.txt
    echo space > "$out/with space/file name.txt"
    echo unicode > "$out/ünïcödé ☃ 日本.txt"
    mkdir "$out/dïr wïth spåce"; echo x > "$out/dïr wïth spåce/ß"
    ln -s exactly8 $out/link-relative
    ln -s a/b/c $out/link-dir
    ln -s ../bin/hello $out/a/link-up
    ln -s ${leaf} $out/link-absolute
    ln -s /nonexistent/dangling $out/link-dangling
    ln -s "with space/file name.txt" "$out/link with space"
  '';
  many = mk "many-files" ''
    set -e
    echo "tailcache-itest build log of many-files ${nonce}"
    mkdir -p $out/d; cd $out/d; i=0
    while [ $i -lt 2100 ]; do echo "small file $i ${nonce}" > f$i; i=$((i+1)); done
  '';
  big = mk "big-file" ''
    head -c 33554432 /dev/urandom > $out
  '';
  refs = mk "with-refs" ''
    set -e
    echo "tailcache-itest build log of with-refs ${nonce}"
    mkdir -p $out/bin
    echo ${leaf} > $out/leaf-path
    echo ${shapes} > $out/shapes-path
    echo $out > $out/self-path
    printf '#!/bin/sh\ncat ${leaf}\n' > $out/bin/show; chmod +x $out/bin/show
  '';
  self = mk "self-only" ''
    echo "I am $out" > $out
  '';
in { inherit leaf shapes many big refs self; }
"#;

static STORE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Which derivation outputs a `TestStore` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shapes {
    /// Every shape, including the 2100-file directory and the 32 MiB file.
    All,
    /// leaf, shapes, with-refs, self-only and the CA path: enough for the
    /// refusal and key tests, cheap to build and to compress.
    Small,
}

/// A throwaway Nix store under a temporary root, built by real Nix, plus its
/// ground truth. Dropped (deleted) at the end of the test that built it.
#[derive(Debug)]
pub struct TestStore {
    nix: NixEnv,
    dir: TempDir,
    nonce: String,
    named: BTreeMap<String, String>,
    closure: Vec<String>,
    infos: BTreeMap<String, PathInfo>,
}

impl TestStore {
    /// Builds a store with every shape (seconds, not minutes).
    pub fn build() -> TestStore {
        TestStore::build_with(Shapes::All)
    }

    pub fn build_small() -> TestStore {
        TestStore::build_with(Shapes::Small)
    }

    pub fn build_with(shapes: Shapes) -> TestStore {
        let nix = NixEnv::new();
        let dir = tempfile::Builder::new()
            .prefix("tc-store.")
            .tempdir()
            .unwrap();
        let nonce = format!(
            "{}-{}-{}",
            std::process::id(),
            STORE_COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let root = dir.path().join("root");
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let expr = src.join("shapes.nix");
        std::fs::write(&expr, SHAPES_NIX).unwrap();

        let attrs: &[&str] = match shapes {
            Shapes::All => &["leaf", "shapes", "many", "big", "refs", "self"],
            Shapes::Small => &["leaf", "shapes", "refs", "self"],
        };
        let root_s = root.to_str().unwrap();
        let mut args = vec![
            "--store",
            root_s,
            expr.to_str().unwrap(),
            "--no-out-link",
            "--argstr",
            "nonce",
            &nonce,
        ];
        for a in attrs {
            args.extend_from_slice(&["-A", a]);
        }
        let outs = nix.run("nix-build", &args);
        let outs: Vec<&str> = outs.lines().collect();
        assert_eq!(outs.len(), attrs.len(), "nix-build printed {outs:?}");
        let mut named: BTreeMap<String, String> = attrs
            .iter()
            .zip(&outs)
            .map(|(a, p)| (a.to_string(), p.to_string()))
            .collect();

        // A content-addressed path (fixed:r:sha256), added rather than built.
        let ca_src = src.join("ca-tree");
        std::fs::create_dir_all(ca_src.join("sub")).unwrap();
        std::fs::write(ca_src.join("sub/file"), format!("ca {nonce}\n")).unwrap();
        std::os::unix::fs::symlink("sub/file", ca_src.join("link")).unwrap();
        let ca = nix.run(
            "nix-store",
            &["--store", root_s, "--add", ca_src.to_str().unwrap()],
        );
        named.insert("ca".into(), ca.trim().to_string());

        let roots: Vec<&str> = named.values().map(String::as_str).collect();
        let mut args = vec!["--store", root_s, "-qR"];
        args.extend_from_slice(&roots);
        let mut closure: Vec<String> = nix
            .run("nix-store", &args)
            .lines()
            .map(str::to_string)
            .collect();
        closure.sort();
        closure.dedup();

        let closure_refs: Vec<&str> = closure.iter().map(String::as_str).collect();
        let mut infos: BTreeMap<String, PathInfo> = path_infos(&nix, root_s, &closure_refs)
            .into_iter()
            .map(|i| (i.path.clone(), i))
            .collect();
        assert_eq!(infos.len(), closure.len());
        let mut args = vec!["--store", root_s, "-q", "--hash"];
        args.extend_from_slice(&closure_refs);
        let hashes = nix.run("nix-store", &args);
        let hashes: Vec<&str> = hashes.lines().collect();
        assert_eq!(hashes.len(), closure.len());
        for (p, h) in closure.iter().zip(hashes) {
            assert!(
                h.starts_with("sha256:") && h.len() == 59,
                "nix-store -q --hash: {h}"
            );
            infos.get_mut(p).unwrap().nar_hash = h.to_string();
        }
        TestStore {
            nix,
            dir,
            nonce,
            named,
            closure,
            infos,
        }
    }

    pub fn nix(&self) -> &NixEnv {
        &self.nix
    }

    /// The root directory (`<root>/nix/store`, `<root>/nix/var/nix/db/db.sqlite`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A scratch directory that lives as long as the store.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The output of a named derivation (`leaf`, `shapes`, `many`, `big`,
    /// `refs`, `self`) or the CA path (`ca`).
    pub fn path(&self, name: &str) -> &str {
        self.named
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in this store"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.named.contains_key(name)
    }

    /// Every path of the closure of all roots, sorted.
    pub fn closure(&self) -> Vec<&str> {
        self.closure.iter().map(String::as_str).collect()
    }

    pub fn info(&self, path: &str) -> &PathInfo {
        self.infos
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in ground truth"))
    }

    /// Where a logical store path lives on disk.
    /// Writes the whole closure into a `file://` binary cache at `dest`, signed by Nix
    /// itself with `secret_key`: the physical reference a cache is compared with.
    pub fn copy_to_file_cache(&self, dest: &Path, compression: &str, secret_key: &Path) {
        let to = format!(
            "file://{}?compression={compression}&secret-key={}",
            dest.display(),
            secret_key.display()
        );
        let root = self.root();
        let mut args = vec!["copy", "--from", root.to_str().unwrap(), "--to", &to];
        args.extend(self.closure());
        self.nix().run("nix", &args);
    }

    pub fn physical(&self, store_path: &str) -> PathBuf {
        self.root().join("nix/store").join(base_name(store_path))
    }

    /// The NAR of a path, as Nix serialises it.
    pub fn dump(&self, store_path: &str) -> Vec<u8> {
        let out = self
            .nix
            .command("nix-store")
            .args(["--dump"])
            .arg(self.physical(store_path))
            .output()
            .unwrap();
        assert!(out.status.success(), "nix-store --dump {store_path} failed");
        out.stdout
    }
}

/// A store path that no test store contains (valid syntax, random hash).
pub fn unknown_store_path() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32)
        ^ u64::from(STORE_COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut x = seed | 1;
    let hash: String = (0..32)
        .map(|_| {
            // xorshift: only needs to be unlikely to collide, not secure
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 32) as usize] as char
        })
        .collect();
    format!("/nix/store/{hash}-itest-missing")
}

/// A fresh, empty client store root inside `parent`.
pub fn client_store(parent: &Path, name: &str) -> String {
    parent.join(name).to_str().unwrap().to_string()
}

/// How the stock client takes paths from a binary cache: signatures required, only the
/// given key trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// `nix copy --from URL --to CLIENT PATHS`.
    Copy,
    /// `nix-store --store CLIENT -r PATHS --option substituters URL`: substitution, as a
    /// machine does it.
    Substitute,
}

impl Fetch {
    /// Fetches `paths` from the cache at `url` into the client store `client`, trusting
    /// `trusted_key` only.
    pub fn run(
        self,
        nix: &NixEnv,
        url: &str,
        client: &str,
        trusted_key: &str,
        paths: &[&str],
    ) -> Output {
        let trust = [
            "--option",
            "trusted-public-keys",
            trusted_key,
            "--option",
            "require-sigs",
            "true",
        ];
        let mut cmd = match self {
            Fetch::Copy => {
                let mut c = nix.command("nix");
                c.args(["copy", "--from", url, "--to", client])
                    .args(trust)
                    .args(paths);
                c
            }
            Fetch::Substitute => {
                let mut c = nix.command("nix-store");
                c.args(["--store", client, "-r"])
                    .args(paths)
                    .args(["--option", "substituters", url])
                    .args(trust);
                c
            }
        };
        cmd.output().unwrap()
    }
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        stderr_of(out)
    );
}

/// Whether `path` is valid in the client store.
pub fn is_valid(nix: &NixEnv, client: &str, path: &str) -> bool {
    nix.output("nix-store", &["--store", client, "--check-validity", path])
        .status
        .success()
}

/// The client store holds exactly what the source store held: every path
/// valid and verified, and NarHash/NarSize/References/CA equal to ground truth.
pub fn assert_client_matches(store: &TestStore, client: &str, paths: &[&str]) {
    let nix = store.nix();
    let mut args = vec!["--store", client, "--verify-path"];
    args.extend_from_slice(paths);
    nix.run("nix-store", &args);
    let got = path_infos(nix, client, paths);
    assert_eq!(got.len(), paths.len());
    for g in got {
        let want = store.info(&g.path);
        assert_eq!(g.nar_hash_sri, want.nar_hash_sri, "narHash of {}", g.path);
        assert_eq!(g.nar_size, want.nar_size, "narSize of {}", g.path);
        assert_eq!(g.references, want.references, "references of {}", g.path);
        assert_eq!(g.ca, want.ca, "ca of {}", g.path);
        assert_eq!(g.deriver, want.deriver, "deriver of {}", g.path);
    }
}
