//! The default build pipeline: bring a git checkout of one branch up to date (clone it the
//! first time), `nix flake update` in it, then `nix build <checkout>#<attribute>` with an
//! out-link, whose targets (read by the `outputs` step) become the build's new store paths.
//! Nix 2.8, the oldest Nix this runs with, has no `nix build --print-out-paths`.

use std::path::PathBuf;
use std::time::Duration;

use crate::step::{Capture, Step};

/// What the default pipeline builds.
#[derive(Debug, Clone)]
pub struct DefaultPipeline {
    /// Anything `git clone` accepts.
    pub repository: String,
    pub branch: String,
    /// Where the checkout lives (created by the first build).
    pub checkout: PathBuf,
    /// Flake output attribute, e.g. `nixosConfigurations.host.config.system.build.toplevel`.
    pub attribute: String,
    /// Timeout of the fetch and flake-update steps.
    pub fetch_timeout: Duration,
    /// Timeout of the build step.
    pub build_timeout: Duration,
    /// `git` and `nix` executables (found on PATH by default).
    pub git: PathBuf,
    pub nix: PathBuf,
    /// Extra arguments for `nix flake update` and `nix build` (e.g. `--option …`, `--store …`).
    pub nix_args: Vec<String>,
}

impl DefaultPipeline {
    pub fn new(
        repository: impl Into<String>,
        branch: impl Into<String>,
        checkout: impl Into<PathBuf>,
        attribute: impl Into<String>,
    ) -> Self {
        DefaultPipeline {
            repository: repository.into(),
            branch: branch.into(),
            checkout: checkout.into(),
            attribute: attribute.into(),
            fetch_timeout: Duration::from_secs(10 * 60),
            build_timeout: Duration::from_secs(4 * 60 * 60),
            git: "git".into(),
            nix: "nix".into(),
            nix_args: Vec::new(),
        }
    }

    /// The steps: `fetch`, `flake-update`, `build`, `outputs`.
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
        let flake_ref = format!("{dir}#{}", self.attribute);
        let out_link = format!("{dir}/result");
        let build: Vec<&str> = {
            let mut v = features.to_vec();
            v.extend(["build", flake_ref.as_str(), "--out-link", out_link.as_str()]);
            v.extend(&extra);
            v
        };
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
            Step::new("build", nix.as_str(), &build)
                .cwd(&self.checkout)
                .timeout(self.build_timeout),
            // `result`, plus `result-<output>` for the other outputs of a multi-output build.
            Step::new(
                "outputs",
                "/bin/sh",
                &[
                    "-c",
                    r#"for l in "$1"/result "$1"/result-*; do [ -L "$l" ] && readlink "$l"; done; true"#,
                    "outputs",
                    &dir,
                ],
            )
            .timeout(self.fetch_timeout)
            .capture(Capture::OutPaths),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_the_default_pipeline() {
        let p = DefaultPipeline::new("https://example.org/r.git", "main", "/var/c", "pkgs.x");
        let steps = p.steps();
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["fetch", "flake-update", "build", "outputs"]);
        assert_eq!(steps[0].capture, Capture::Commit("/var/c".into()));
        assert_eq!(
            &steps[0].args[3..],
            ["git", "https://example.org/r.git", "main", "/var/c"]
        );
        assert_eq!(
            steps[1].cwd.as_deref(),
            Some(std::path::Path::new("/var/c"))
        );
        assert_eq!(
            &steps[2].args[2..],
            ["build", "/var/c#pkgs.x", "--out-link", "/var/c/result",]
        );
        assert_eq!(steps[3].args.last().map(String::as_str), Some("/var/c"));
        assert_eq!(steps[3].capture, Capture::OutPaths);
    }
}
