//! The fleet stage of a build, after the checkout is fetched and its lock updated: keep the
//! lock file, evaluate every target with one `nix eval` (which writes their derivations),
//! build all of them with one `nix build --keep-going --no-link <drv>…` (Nix shares and
//! parallelises their dependencies; a failing target leaves the others' results), then
//! judge each target by whether its out path is valid in the store — Nix creates no
//! out-links at all when one installable fails, so the store is the only reliable witness —
//! and name the failed derivations in a failed target's derivation closure. Targets whose
//! out path differs from their newest generation get a GC root and a new generation.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tailcache_store::StorePath;
use tailcache_store::db::StoreDb;
use tailcache_wire::hosts::{TargetOutcome, target_result};
use tokio::sync::watch;

use super::closure::{drv_closure, out_closure};
use super::diff::{ClosureEntry, closure_diff};
use super::generations::{
    CommitBuild, GenerationStore, GetPrevious, NewGeneration, OutcomeOf, Previous,
    TargetsEvaluated, root_link,
};
use super::lock::keep_lock;
use super::target::{Derivation, Evaluated, TargetSpec, eval_expression, parse_eval_output};
use super::{FleetSettings, NewGenerationSummary, TargetSummary};
use crate::log_tail::LogTail;
use crate::metrics::MeteredAddr;
use crate::status::{StatusStore, TargetsChanged};
use crate::step::{Capture, RunLimits, Step, StepEnd, StopReason, run_step};
use crate::supervisor::NewPathsSink;

/// How long registering one GC root may take.
const ROOT_TIMEOUT: Duration = Duration::from_secs(120);
const FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// How the fleet stage ended, for the build's record.
#[derive(Debug)]
pub(crate) enum StageEnd {
    /// Every step ran: the targets are judged (some may have failed).
    Judged,
    /// A step could not do its work (`evaluate` failed, a step timed out or was stopped).
    Step { step: &'static str, end: StepEnd },
}

/// What one build's fleet stage needs from the build.
#[derive(Debug)]
pub(crate) struct Stage<'a> {
    pub build_id: u64,
    pub commit: Option<String>,
    pub settings: &'a FleetSettings,
    pub log: &'a MeteredAddr<LogTail>,
    pub status: &'a MeteredAddr<StatusStore>,
    pub generations: &'a MeteredAddr<GenerationStore>,
    pub sink: &'a Arc<dyn NewPathsSink>,
    pub limits: RunLimits,
}

/// A target's verdict before it is recorded.
#[derive(Debug)]
struct Judged {
    spec: TargetSpec,
    /// The out path and its closure, when it built.
    built: Option<(StorePath, Vec<ClosureEntry>)>,
    failed_derivations: Vec<String>,
    error: Option<String>,
}

impl Stage<'_> {
    async fn say(&self, line: String) {
        crate::log_tail::say(self.log, self.build_id, line).await;
    }

    async fn step(
        &self,
        step: &Step,
        stop: &mut watch::Receiver<Option<StopReason>>,
    ) -> (StepEnd, Vec<String>) {
        let mut line = format!("==> [{}] {}", step.name, step.program.display());
        for a in &step.args {
            line.push(' ');
            line.push_str(a);
        }
        self.say(line).await;
        run_step(step, self.build_id, self.log, stop, &self.limits).await
    }

    async fn step_started(&self, step: &str) {
        let msg = crate::status::StepStarted {
            build_id: self.build_id,
            step: step.to_owned(),
        };
        if let Err(e) = self.status.ask(msg).await {
            tracing::error!("build {}: {e}", self.build_id);
        }
    }

    async fn publish(&self, targets: Vec<TargetOutcome>) {
        let msg = TargetsChanged {
            build_id: self.build_id,
            targets,
        };
        if let Err(e) = self.status.ask(msg).await {
            tracing::error!("build {}: {e}", self.build_id);
        }
    }

    fn outcome(&self, spec: &TargetSpec, result: &str) -> TargetOutcome {
        TargetOutcome {
            target: spec.name.clone(),
            build_id: self.build_id,
            result: result.to_owned(),
            generation: None,
            failed_derivations: Vec::new(),
            error: None,
        }
    }

    /// Runs the stage; returns how it ended and each target's summary.
    pub async fn run(
        &self,
        stop: &mut watch::Receiver<Option<StopReason>>,
    ) -> (StageEnd, Vec<TargetSummary>) {
        let (lock_hash, expr_file) = self.prepare().await;
        let evaluated = match self.evaluate(expr_file, stop).await {
            Ok(e) => e,
            Err((end, outcomes)) => {
                let step = "evaluate";
                return (StageEnd::Step { step, end }, outcomes);
            }
        };
        let (failed, build_end) = match self.build(&evaluated, stop).await {
            Ok(b) => b,
            Err((end, outcomes)) => {
                let step = "build";
                return (StageEnd::Step { step, end }, outcomes);
            }
        };
        let judged = self.judge(evaluated, failed).await;
        let summaries = self.record(judged, lock_hash).await;
        let end = match build_end {
            Some(end @ StepEnd::TimedOut(..)) => StageEnd::Step { step: "build", end },
            _ => StageEnd::Judged,
        };
        (end, summaries)
    }

    /// Keeps the checkout's lock file (its hash for the records) and writes the evaluation's
    /// expression (its file, or why it could not be written).
    async fn prepare(&self) -> (Option<String>, std::io::Result<PathBuf>) {
        let s = self.settings;
        let (checkout, state_dir) = (s.checkout.clone(), s.state_dir.clone());
        let expr = eval_expression(&s.checkout.display().to_string(), &s.targets);
        let work = move || {
            let lock = keep_lock(&checkout, &state_dir);
            let file = state_dir.join("evaluate.nix");
            let written = crate::persist::write_atomically(&file, expr.as_bytes())
                .map(|()| file)
                .map_err(|e| std::io::Error::other(e.to_string()));
            (lock, written)
        };
        let (lock, written) = match tokio::task::spawn_blocking(work).await {
            Ok(r) => r,
            Err(e) => (Ok(None), Err(std::io::Error::other(e.to_string()))),
        };
        let lock_hash = match lock {
            Ok(h) => h,
            Err(e) => {
                self.say(format!("==> cannot keep flake.lock: {e}")).await;
                None
            }
        };
        (lock_hash, written)
    }

    /// The `evaluate` step: every target's derivation (or why it has none).
    async fn evaluate(
        &self,
        expr_file: std::io::Result<PathBuf>,
        stop: &mut watch::Receiver<Option<StopReason>>,
    ) -> Result<Vec<Evaluated>, (StepEnd, Vec<TargetSummary>)> {
        let s = self.settings;
        self.step_started("evaluate").await;
        let expr_file = expr_file.map_err(|e| (StepEnd::SpawnFailed(e), Vec::new()))?;
        let mut args: Vec<String> = FEATURES.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["eval", "--impure", "--raw", "--file"].map(str::to_owned));
        args.push(expr_file.display().to_string());
        args.extend(s.nix_args.iter().cloned());
        let eval = self.nix_step("evaluate", args, s.eval_timeout, Capture::Stdout);
        let (end, lines) = self.step(&eval, stop).await;
        if !matches!(&end, StepEnd::Exited(st) if st.success()) {
            let outcomes = self.unjudged(s.targets.listed(), &end).await;
            return Err((end, outcomes));
        }
        let store_dir = &s.store.store_dir;
        let (evaluated, refused) = parse_eval_output(&lines, &s.targets, store_dir);
        for name in refused {
            self.say(format!(
                "==> {name:?} cannot name a target (use letters, digits and ._@+-); skipped"
            ))
            .await;
        }
        for e in &evaluated {
            let what = match &e.result {
                Ok(d) => d.drv.to_absolute(store_dir),
                Err(err) => err.clone(),
            };
            let kind = e.spec.kind.as_str();
            self.say(format!("==> {} ({kind}): {what}", e.spec.name))
                .await;
        }
        let specs: Vec<TargetSpec> = evaluated.iter().map(|e| e.spec.clone()).collect();
        let building = specs
            .iter()
            .map(|t| self.outcome(t, target_result::BUILDING))
            .collect();
        let msg = TargetsEvaluated {
            build_id: self.build_id,
            targets: specs,
        };
        if let Err(e) = self.generations.ask(msg).await {
            tracing::error!("build {}: {e}", self.build_id);
        }
        self.publish(building).await;
        Ok(evaluated)
    }

    /// The `build` step: one `nix build` of every evaluated derivation. Returns the failed
    /// derivations Nix named and how the step ended (`None`: nothing to build).
    async fn build(
        &self,
        evaluated: &[Evaluated],
        stop: &mut watch::Receiver<Option<StopReason>>,
    ) -> Result<(BTreeSet<String>, Option<StepEnd>), (StepEnd, Vec<TargetSummary>)> {
        let s = self.settings;
        self.step_started("build").await;
        let drvs: Vec<&Derivation> = evaluated
            .iter()
            .filter_map(|e| e.result.as_ref().ok())
            .collect();
        if drvs.is_empty() {
            return Ok((BTreeSet::new(), None));
        }
        let store_dir = &s.store.store_dir;
        let modern = nix_builds_drv_outputs_with_caret(&s.nix).await;
        let mut args: Vec<String> = FEATURES.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["build", "--keep-going", "--no-link"].map(str::to_owned));
        if let Some(b) = &s.builders {
            args.extend(["--option".to_owned(), "builders".to_owned(), b.clone()]);
        }
        args.extend(s.nix_args.iter().cloned());
        for d in &drvs {
            let drv = d.drv.to_absolute(store_dir);
            args.push(if modern { format!("{drv}^*") } else { drv });
        }
        let capture = Capture::FailedDerivations(store_dir.clone());
        let build = self.nix_step("build", args, s.build_timeout, capture);
        let (end, lines) = self.step(&build, stop).await;
        match end {
            StepEnd::Exited(_) | StepEnd::TimedOut(..) => {
                Ok((lines.into_iter().collect(), Some(end)))
            }
            other => {
                let specs: Vec<TargetSpec> = evaluated.iter().map(|e| e.spec.clone()).collect();
                let outcomes = self.unjudged(&specs, &other).await;
                Err((other, outcomes))
            }
        }
    }

    fn nix_step(&self, name: &str, args: Vec<String>, timeout: Duration, capture: Capture) -> Step {
        let mut step = Step::new(name, &self.settings.nix, &[])
            .cwd(&self.settings.checkout)
            .timeout(timeout)
            .capture(capture);
        step.args = args;
        step
    }

    /// Records the outcomes of targets a build never judged (stopped, or evaluation failed).
    async fn unjudged(&self, specs: &[TargetSpec], end: &StepEnd) -> Vec<TargetSummary> {
        let (result, error) = match end {
            StepEnd::Stopped(StopReason::Cancel, _) => {
                (target_result::CANCELLED, "the build was cancelled")
            }
            StepEnd::Stopped(StopReason::Superseded, _) => (
                target_result::CANCELLED,
                "the build was superseded by a newer commit",
            ),
            StepEnd::Stopped(StopReason::Shutdown, _) => (
                target_result::INTERRUPTED,
                "the server stopped during the build",
            ),
            _ => (target_result::FAILED, "the evaluation failed (see the log)"),
        };
        let outcomes: Vec<OutcomeOf> = specs
            .iter()
            .map(|spec| {
                let mut outcome = self.outcome(spec, result);
                outcome.error = Some(error.to_owned());
                OutcomeOf {
                    spec: spec.clone(),
                    outcome,
                }
            })
            .collect();
        if !outcomes.is_empty() {
            self.commit(None, Vec::new(), outcomes.clone()).await;
        }
        outcomes
            .into_iter()
            .map(|o| TargetSummary {
                outcome: o.outcome,
                new_generation: None,
            })
            .collect()
    }

    /// Hands the build's generations and outcomes to GenerationStore and the outcomes to
    /// StatusStore.
    async fn commit(
        &self,
        lock_hash: Option<String>,
        generations: Vec<NewGeneration>,
        outcomes: Vec<OutcomeOf>,
    ) {
        let targets = outcomes.iter().map(|o| o.outcome.clone()).collect();
        let msg = CommitBuild {
            build_id: self.build_id,
            commit: self.commit.clone(),
            lock_hash,
            // Milliseconds, like every other time the API gives.
            built_at: jiff::Timestamp::now()
                .round(jiff::Unit::Millisecond)
                .unwrap_or_else(|_| jiff::Timestamp::now()),
            generations,
            outcomes,
        };
        if let Err(e) = self.generations.ask(msg).await {
            self.say(format!("==> cannot record the generations: {e}"))
                .await;
        }
        self.publish(targets).await;
    }

    /// Which targets built (their out path is valid) and, for the others, which failed
    /// derivations their derivation closure holds.
    async fn judge(&self, evaluated: Vec<Evaluated>, failed: BTreeSet<String>) -> Vec<Judged> {
        let layout = self.settings.store.clone();
        let work = move || -> Vec<Judged> {
            let db = StoreDb::open(&layout).map_err(|e| e.to_string());
            evaluated
                .into_iter()
                .map(|e| judge_one(db.as_ref(), e, &failed))
                .collect()
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("judging the targets: {e}");
                Vec::new()
            }
        }
    }

    /// Numbers, roots and records the new generations; returns every target's summary.
    async fn record(&self, judged: Vec<Judged>, lock_hash: Option<String>) -> Vec<TargetSummary> {
        let names = judged.iter().map(|j| j.spec.name.clone()).collect();
        let previous = match self.generations.ask(GetPrevious { names }).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("build {}: {e}", self.build_id);
                Vec::new()
            }
        };
        let mut new = Vec::new();
        let mut outcomes = Vec::new();
        let mut summaries = Vec::new();
        let mut built_outs = Vec::new();
        let store_dir = &self.settings.store.store_dir;
        for (j, prev) in judged.into_iter().zip(previous) {
            let spec = j.spec.clone();
            if let Some((out, _)) = &j.built {
                built_outs.push(PathBuf::from(out.to_absolute(store_dir)));
            }
            let (outcome, generation) = self.verdict(j, prev).await;
            let summary = generation.as_ref().map(|g| NewGenerationSummary {
                closure_nar_size: g.closure.iter().map(|e| e.nar_size).sum(),
                diff: g.diff.clone(),
            });
            new.extend(generation);
            outcomes.push(OutcomeOf {
                spec,
                outcome: outcome.clone(),
            });
            summaries.push(TargetSummary {
                outcome,
                new_generation: summary,
            });
        }
        self.commit(lock_hash, new, outcomes).await;
        if !built_outs.is_empty() {
            // Compressed first, so the new generations are servable soon.
            self.sink.new_paths(self.build_id, built_outs);
        }
        summaries
    }

    /// One target's outcome, and its new generation if it built something new (rooted).
    async fn verdict(&self, j: Judged, prev: Previous) -> (TargetOutcome, Option<NewGeneration>) {
        let mut outcome = self.outcome(&j.spec, target_result::FAILED);
        let Some((out, closure)) = j.built else {
            outcome.failed_derivations = j.failed_derivations;
            outcome.error = j.error;
            let why = outcome.error.clone().unwrap_or_default();
            self.say(format!("==> {}: failed: {why}", j.spec.name))
                .await;
            return (outcome, None);
        };
        let out_path = out.to_absolute(&self.settings.store.store_dir);
        outcome.result = target_result::BUILT.to_owned();
        if let Some((n, newest, _)) = &prev.newest
            && *newest == out_path
        {
            outcome.generation = Some(*n);
            self.say(format!("==> {}: unchanged, generation {n}", j.spec.name))
                .await;
            return (outcome, None);
        }
        let generation = prev.next_generation;
        let diff = closure_diff(
            prev.newest.as_ref().map(|(n, _, c)| (*n, c.as_slice())),
            &closure,
        );
        let rooted = self.add_root(&j.spec.name, generation, &out_path).await;
        self.say(format!(
            "==> {}: generation {generation} {out_path} ({} paths, {} added, {} removed)",
            j.spec.name,
            closure.len(),
            diff.added.len(),
            diff.removed.len()
        ))
        .await;
        if !rooted {
            outcome.error = Some(
                "its GC root could not be registered (see the log); older generations are kept"
                    .to_owned(),
            );
        }
        outcome.generation = Some(generation);
        let new = NewGeneration {
            spec: j.spec,
            generation,
            out_path,
            closure,
            diff,
            rooted,
        };
        (outcome, Some(new))
    }

    /// Registers `out` as a GC root at `gcroots/<name>/<generation>` with
    /// `nix build --out-link` (an indirect root: Nix records the link, so it also works for
    /// a store under another root and through the daemon).
    async fn add_root(&self, name: &str, generation: u64, out: &str) -> bool {
        let link = root_link(&self.settings.state_dir, name, generation);
        if let Some(dir) = link.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            self.say(format!("==> cannot create {}: {e}", dir.display()))
                .await;
            return false;
        }
        let mut args: Vec<String> = FEATURES.iter().map(|a| (*a).to_owned()).collect();
        args.extend([
            "build".to_owned(),
            "--out-link".to_owned(),
            link.display().to_string(),
        ]);
        args.extend(self.settings.nix_args.iter().cloned());
        args.push(out.to_owned());
        let step = self.nix_step("gc-root", args, ROOT_TIMEOUT, Capture::Nothing);
        // Registering a root is not cancelled half-way: the sender is dropped, so this
        // receiver never fires.
        let (_, mut never) = watch::channel(None);
        let (end, _) = self.step(&step, &mut never).await;
        let ok = matches!(&end, StepEnd::Exited(s) if s.success())
            && std::fs::read_link(&link).is_ok_and(|t| t.as_os_str() == out);
        if !ok {
            self.say(format!(
                "==> GC root {} for {out} not registered ({end:?})",
                link.display()
            ))
            .await;
        }
        ok
    }
}

fn judge_one(db: Result<&StoreDb, &String>, e: Evaluated, failed: &BTreeSet<String>) -> Judged {
    let mut j = Judged {
        spec: e.spec,
        built: None,
        failed_derivations: Vec::new(),
        error: None,
    };
    let d = match e.result {
        Ok(d) => d,
        Err(err) => {
            j.error = Some(err);
            return j;
        }
    };
    let db = match db {
        Ok(db) => db,
        Err(err) => {
            j.error = Some(format!("cannot read the store database: {err}"));
            return j;
        }
    };
    match out_closure(db, &d.out) {
        Ok(Some(closure)) => j.built = Some((d.out, closure)),
        Ok(None) => {
            let inputs = drv_closure(db, &d.drv).unwrap_or_default();
            j.failed_derivations = failed.intersection(&inputs).cloned().collect();
            j.error = Some(if j.failed_derivations.is_empty() {
                "not built (see the log)".to_owned()
            } else {
                format!("not built: {} failed", j.failed_derivations.join(", "))
            });
        }
        Err(err) => j.error = Some(format!("cannot read the store database: {err}")),
    }
    j
}

/// Whether this Nix builds a derivation's outputs from `<drv>^*` (2.15 and later) rather
/// than from a bare `<drv>` (which those versions only make valid as a file).
async fn nix_builds_drv_outputs_with_caret(nix: &std::path::Path) -> bool {
    let run = tokio::process::Command::new(nix)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let text = match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(o)) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        // The build step will report what is wrong with this nix.
        _ => return true,
    };
    nix_version_at_least(&text, (2, 15)).unwrap_or(true)
}

/// Parses `nix (Nix) 2.8.0` (or `nix (Lix, like Nix) 2.91.1`) and compares.
fn nix_version_at_least(version_output: &str, want: (u32, u32)) -> Option<bool> {
    let v = version_output.split_whitespace().last()?;
    let mut parts = v.split(['.', 'p', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= want)
}

#[cfg(test)]
mod tests {
    use super::nix_version_at_least;

    #[test]
    fn nix_versions() {
        for (version, at_least_2_15) in [
            ("nix (Nix) 2.8.0\n", false),
            ("nix (Nix) 2.15.0", true),
            ("nix (Nix) 2.24.10", true),
            ("nix (Lix, like Nix) 2.91.1", true),
            ("nix (Nix) 2.16pre20230411_ef0b483", true),
        ] {
            assert_eq!(
                nix_version_at_least(version, (2, 15)),
                Some(at_least_2_15),
                "{version}"
            );
        }
        assert_eq!(nix_version_at_least("garbage", (2, 15)), None);
    }
}
