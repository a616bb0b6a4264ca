//! The stock Nix commands `tailcache switch` and `tailcache prefetch` run — never an
//! evaluation: `nix show-config` (which keys this machine trusts, whether signatures are
//! required), `nix-store --realise` (substitute the closure from the configured substituters,
//! the local agent first when the modules put it there, optionally rooted), `nix-env --set`
//! (point a profile at it) and the activation script the closure itself carries.
//!
//! `--store DIR` (a chroot store, as the tests use) keeps paths at `DIR/nix/store/…`: scripts
//! are then run from there, and the default system profile is the chroot's.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::client::CliError;

/// NixOS's system profile.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";
/// Lines of a failing Nix command's stderr kept for the error message.
const STDERR_TAIL: usize = 20;

/// How to run Nix: which store, which extra settings.
#[derive(Debug, Clone, Default)]
pub struct Nix {
    /// `--store` for every command.
    pub store: Option<String>,
    /// `--option NAME VALUE` pairs for every command.
    pub options: Vec<(String, String)>,
    /// `nix show-config`'s answer, asked once.
    trust: std::cell::OnceCell<TrustConfig>,
}

/// What `nix show-config` says about trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustConfig {
    pub trusted_public_keys: Vec<String>,
    pub require_sigs: bool,
}

impl Nix {
    pub fn new(store: Option<String>, options: Vec<(String, String)>) -> Nix {
        Nix {
            store,
            options,
            trust: std::cell::OnceCell::new(),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        if let Some(s) = &self.store {
            c.arg("--store").arg(s);
        }
        for (name, value) in &self.options {
            c.arg("--option").arg(name).arg(value);
        }
        c.stdin(Stdio::null());
        c
    }

    /// The root of a chroot store (`--store /dir` or `local?root=/dir`), if it is one.
    pub fn chroot(&self) -> Option<PathBuf> {
        let s = self.store.as_deref()?;
        if s.starts_with('/') {
            return Some(PathBuf::from(s));
        }
        let query = s
            .strip_prefix("local?")
            .or_else(|| s.strip_prefix("local://?"))?;
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix("root="))
            .map(PathBuf::from)
    }

    /// Where a store path's files are on this machine.
    pub fn physical(&self, store_path: &str) -> PathBuf {
        match self.chroot() {
            Some(root) => root.join(store_path.trim_start_matches('/')),
            None => PathBuf::from(store_path),
        }
    }

    /// The NixOS system profile of this store.
    pub fn system_profile(&self) -> PathBuf {
        self.physical(SYSTEM_PROFILE)
    }

    /// `nix show-config --json`: the trusted keys and `require-sigs` as Nix will apply them
    /// (nix.conf, `extra-…` settings and `--nix-option`s all merged by Nix itself).
    pub fn trust_config(&self) -> Result<TrustConfig, CliError> {
        if let Some(t) = self.trust.get() {
            return Ok(t.clone());
        }
        let t = self.ask_trust_config()?;
        Ok(self.trust.get_or_init(|| t).clone())
    }

    fn ask_trust_config(&self) -> Result<TrustConfig, CliError> {
        let mut c = self.command("nix");
        c.args([
            "--extra-experimental-features",
            "nix-command",
            "show-config",
            "--json",
        ]);
        let out = c.output().map_err(|e| spawn_error("nix", e))?;
        if !out.status.success() {
            return Err(CliError::Config(format!(
                "`nix show-config` failed ({}): {}",
                out.status,
                last_line(&String::from_utf8_lossy(&out.stderr))
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| CliError::Config(format!("`nix show-config --json`: {e}")))?;
        let value = |k: &str| v.get(k).and_then(|s| s.get("value"));
        let trusted_public_keys = match value("trusted-public-keys") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let require_sigs = value("require-sigs")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true);
        Ok(TrustConfig {
            trusted_public_keys,
            require_sigs,
        })
    }

    /// Whether the store already holds `store_path` (nothing to download).
    pub fn is_valid(&self, store_path: &str) -> bool {
        let mut c = self.command("nix-store");
        c.args(["--check-validity", store_path])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.status().is_ok_and(|s| s.success())
    }

    /// `nix-store --realise OUT`: substitutes the closure (Nix checks every narinfo's
    /// signature against its trusted keys). Nix's progress goes to our stderr as it comes.
    /// With `root`, the closure is kept from garbage collection by a root at that path
    /// (`--add-root`, registered with Nix), replacing the one there.
    pub fn realise(&self, store_path: &str, root: Option<&Path>) -> Result<(), CliError> {
        let mut c = self.command("nix-store");
        c.args(["--realise", store_path]);
        if let Some(r) = root {
            if let Some(dir) = r.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| CliError::local(format!("creating {}", dir.display()), e))?;
            }
            c.arg("--add-root").arg(r);
        }
        run_teed(c, "nix-store --realise").map_err(|e| {
            CliError::Substitute(format!(
                "Nix could not substitute {store_path}: {e}; nothing was changed (check that \
                 the cache is among nix.conf's substituters and its key in trusted-public-keys)"
            ))
        })
    }

    /// `nix-env -p PROFILE --set OUT`: a new profile generation pointing at `OUT`.
    pub fn set_profile(&self, profile: &Path, store_path: &str) -> Result<(), CliError> {
        if let Some(dir) = profile.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::local(format!("creating {}", dir.display()), e))?;
        }
        let mut c = self.command("nix-env");
        c.arg("--profile").arg(profile).args(["--set", store_path]);
        run_teed(c, "nix-env --set").map_err(|e| {
            CliError::Activation(format!(
                "could not point {} at {store_path}: {e}",
                profile.display()
            ))
        })
    }
}

/// Where `profile` points now (through its generation link), if anywhere.
pub fn profile_target(profile: &Path) -> Option<String> {
    let generation = std::fs::read_link(profile).ok()?;
    let generation = match generation.is_absolute() {
        true => generation,
        false => profile.parent()?.join(generation),
    };
    // A generation link (`system-7-link`) points into the store.
    let target = std::fs::read_link(&generation).unwrap_or(generation);
    target.to_str().map(str::to_owned)
}

/// Runs an activation script with our stdio; its exit status decides.
pub fn activate(script: &Path, args: &[&str]) -> Result<(), CliError> {
    let status = Command::new(script)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| CliError::Activation(format!("cannot run {}: {e}", script.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::Activation(format!(
            "{} {} failed ({status})",
            script.display(),
            args.join(" ")
        )))
    }
}

fn spawn_error(program: &str, e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::NotFound {
        CliError::Config(format!("`{program}` is not on PATH: is Nix installed?"))
    } else {
        CliError::local(format!("running {program}"), e)
    }
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

/// Runs `c`, passing its stderr through line by line and keeping the last lines for the
/// error; stdout (Nix prints the realised paths) is dropped.
fn run_teed(mut c: Command, what: &str) -> Result<(), String> {
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let mut tail = std::collections::VecDeque::with_capacity(STDERR_TAIL);
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let reason = tail
        .iter()
        .rev()
        .find(|l| l.contains("error"))
        .or_else(|| tail.back())
        .map_or("", |l| l.trim());
    Err(format!("{what} failed ({status}): {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chroot_stores_and_physical_paths() {
        let p = "/nix/store/b370w7ihml74cy9lg6bfj80j94ycj0fr-x";
        let daemon = Nix::default();
        assert_eq!(daemon.chroot(), None);
        assert_eq!(daemon.physical(p), PathBuf::from(p));
        assert_eq!(daemon.system_profile(), PathBuf::from(SYSTEM_PROFILE));
        for s in [
            "/tmp/c",
            "local?root=/tmp/c",
            "local://?state=/x&root=/tmp/c",
        ] {
            let n = Nix::new(Some(s.into()), vec![]);
            assert_eq!(n.chroot(), Some(PathBuf::from("/tmp/c")), "{s}");
            assert_eq!(
                n.physical(p),
                PathBuf::from("/tmp/c/nix/store/b370w7ihml74cy9lg6bfj80j94ycj0fr-x")
            );
        }
        let remote = Nix::new(Some("daemon".into()), vec![]);
        assert_eq!(remote.chroot(), None);
    }

    #[test]
    fn profile_links_are_followed_to_the_store() {
        let d = tempfile::tempdir().unwrap();
        let profile = d.path().join("system");
        assert_eq!(profile_target(&profile), None);
        std::os::unix::fs::symlink("/nix/store/aaa-x", d.path().join("system-3-link")).unwrap();
        std::os::unix::fs::symlink("system-3-link", &profile).unwrap();
        assert_eq!(
            profile_target(&profile).as_deref(),
            Some("/nix/store/aaa-x")
        );
    }
}
