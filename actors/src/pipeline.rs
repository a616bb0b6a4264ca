//! The default build pipeline: bring a git checkout of one branch up to date (clone it the
//! first time), `nix flake update` in it — the steps `fetch` and `flake-update` — then the
//! fleet stage builds its targets from that one commit and lock file (`evaluate`, `build`;
//! see [`crate::fleet`]). The one-attribute shorthand is a fleet of one target.

use std::path::PathBuf;
use std::time::Duration;

use tailcache_store::db::StoreLayout;

use crate::fleet::{FleetSettings, TargetSpec, Targets};
use crate::step::{Capture, Step};

/// What the default pipeline builds.
#[derive(Debug, Clone)]
pub struct DefaultPipeline {
    /// Anything `git clone` accepts.
    pub repository: String,
    pub branch: String,
    /// Where the checkout lives (created by the first build).
    pub checkout: PathBuf,
    /// What to build.
    pub targets: Targets,
    /// Holds kept lock files, GC roots and the evaluation's expression.
    pub state_dir: PathBuf,
    /// The store the build writes and the cache serves.
    pub store: StoreLayout,
    /// Nix `builders` for the build step.
    pub builders: Option<String>,
    /// Timeout of the fetch and flake-update steps.
    pub fetch_timeout: Duration,
    /// Timeout of the build step.
    pub build_timeout: Duration,
    /// `git` and `nix` executables (found on PATH by default).
    pub git: PathBuf,
    pub nix: PathBuf,
    /// Extra arguments for every `nix` command (e.g. `--option …`, `--store …`).
    pub nix_args: Vec<String>,
}

impl DefaultPipeline {
    /// Builds `attribute` (the one-target shorthand); set `targets` for more.
    pub fn new(
        repository: impl Into<String>,
        branch: impl Into<String>,
        checkout: impl Into<PathBuf>,
        attribute: &str,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        DefaultPipeline {
            repository: repository.into(),
            branch: branch.into(),
            checkout: checkout.into(),
            targets: Targets::List(vec![TargetSpec::from_attribute(attribute)]),
            state_dir: state_dir.into(),
            store: StoreLayout::system(),
            builders: None,
            fetch_timeout: Duration::from_secs(10 * 60),
            build_timeout: Duration::from_secs(4 * 60 * 60),
            git: "git".into(),
            nix: "nix".into(),
            nix_args: Vec::new(),
        }
    }

    /// What the build runs after [`DefaultPipeline::steps`].
    pub fn fleet(&self) -> FleetSettings {
        FleetSettings {
            targets: self.targets.clone(),
            checkout: self.checkout.clone(),
            state_dir: self.state_dir.clone(),
            store: self.store.clone(),
            nix: self.nix.clone(),
            nix_args: self.nix_args.clone(),
            builders: self.builders.clone(),
            eval_timeout: self.fetch_timeout,
            build_timeout: self.build_timeout,
        }
    }

    /// Where the branch head is asked for (superseding).
    pub fn branch_head(&self) -> crate::supervisor::BranchHead {
        crate::supervisor::BranchHead {
            git: self.git.clone(),
            repository: self.repository.clone(),
            branch: self.branch.clone(),
        }
    }

    /// The steps before the fleet stage: `fetch`, `flake-update`.
    pub fn steps(&self) -> Vec<Step> {
        let dir = self.checkout.display().to_string();
        // Whether to clone or fetch is decided when the step runs, not when the server
        // starts; the values go in as positional parameters, never into the script text.
        let script = r#"set -eu
git="$1" repo="$2" branch="$3" dir="$4"
if [ -d "$dir/.git" ]; then
  "$git" -C "$dir" fetch origin "$branch"
  "$git" -C "$dir" reset --hard "origin/$branch"
else
  "$git" clone --branch "$branch" "$repo" "$dir"
fi"#;
        let features = ["--extra-experimental-features", "nix-command flakes"];
        let nix = self.nix.display().to_string();
        let extra: Vec<&str> = self.nix_args.iter().map(String::as_str).collect();
        let mut update = vec![features[0], features[1], "flake", "update"];
        update.extend(&extra);
        vec![
            Step::new(
                "fetch",
                "/bin/sh",
                &[
                    "-c",
                    script,
                    "fetch",
                    &self.git.display().to_string(),
                    &self.repository,
                    &self.branch,
                    &dir,
                ],
            )
            .timeout(self.fetch_timeout)
            .capture(Capture::Commit(self.checkout.clone())),
            Step::new("flake-update", nix.as_str(), &update)
                .cwd(&self.checkout)
                .timeout(self.fetch_timeout),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_the_default_pipeline() {
        let p = DefaultPipeline::new(
            "https://example.org/r.git",
            "main",
            "/var/c",
            "pkgs.x",
            "/s",
        );
        let steps = p.steps();
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["fetch", "flake-update"]);
        assert_eq!(steps[0].capture, Capture::Commit("/var/c".into()));
        assert_eq!(
            &steps[0].args[3..],
            ["git", "https://example.org/r.git", "main", "/var/c"]
        );
        assert_eq!(
            steps[1].cwd.as_deref(),
            Some(std::path::Path::new("/var/c"))
        );
        let fleet = p.fleet();
        assert_eq!(
            fleet.targets,
            Targets::List(vec![TargetSpec::from_attribute("pkgs.x")])
        );
        assert_eq!(fleet.checkout, std::path::PathBuf::from("/var/c"));
    }
}
