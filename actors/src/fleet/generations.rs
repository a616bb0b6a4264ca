//! GenerationStore: owns the generations of every build target — their numbers (monotonic
//! per target, surviving restarts), the signed records, the closures they were built with,
//! the GC roots that keep the last `keep` of them in the store, and how the last build went
//! for each target — and answers `GET /hosts` from them.
//!
//! Each target is one file, `<state_dir>/generations/<name>.json`, written atomically
//! (see [`crate::persist`]). A new generation's GC root (`<state_dir>/gcroots/<name>/<n>`,
//! registered with Nix by the build task) exists before the file names the generation, and
//! roots of released generations are removed only after the file no longer names them; at
//! start-up every root no file names is removed, so a crash at any point leaves the kept
//! generations protected and nothing else. A build that fails for a target never releases
//! that target's roots.
//!
//! Readiness is never stored: a generation is `ready` when every path of its closure is
//! [`Servable`] now, asked on each request, so after a restart (or an eviction from the
//! compressed-NAR directory) the answer is recomputed from the cache itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tailcache_store::signing::SecretKey;
use tailcache_store::{Sha256Hash, StorePath, StorePathHash};
use tailcache_wire::generation::{ClosureDiff, GenerationRecord, SignedGeneration, TargetKind};
use tailcache_wire::hosts::{
    GenerationState, GenerationView, HostState, HostView, HostsReply, TargetOutcome, target_result,
};

use super::diff::ClosureEntry;
use super::target::{TargetSpec, valid_target_name};
use crate::error::{Error, Result};
use crate::metrics::{ActorMetrics, Metered, metered};
use crate::persist;
use crate::supervisor::NewPathsSink;

/// Messages that may wait in the actor's mailbox.
pub const MAILBOX_CAPACITY: usize = 128;

/// Whether the cache can serve a store path (with this NAR hash) in its configured
/// compression right now. Implemented by the root crate over its compressed-NAR index;
/// must be cheap (it is asked for every path of every kept closure on `GET /hosts`).
pub trait Servable: std::fmt::Debug + Send + Sync + 'static {
    fn servable(&self, path: &StorePathHash, nar_hash: &Sha256Hash) -> bool;
}

/// Every path is servable (a cache that serves NARs uncompressed, or none at all).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysServable;

impl Servable for AlwaysServable {
    fn servable(&self, _: &StorePathHash, _: &Sha256Hash) -> bool {
        true
    }
}

/// `<state_dir>/gcroots/<name>/<generation>`: the GC root of one generation.
pub fn root_link(state_dir: &Path, name: &str, generation: u64) -> PathBuf {
    state_dir
        .join("gcroots")
        .join(name)
        .join(generation.to_string())
}

/// How the actor is set up.
#[derive(Debug, Clone)]
pub struct GenerationSettings {
    /// Holds `generations/` and `gcroots/`.
    pub state_dir: PathBuf,
    /// Records are signed with every key.
    pub keys: Vec<SecretKey>,
    /// Generations kept (and rooted) per target; at least 1.
    pub keep: usize,
    /// Targets listed in the configuration (shown as `new` before their first build).
    pub configured: Vec<TargetSpec>,
    pub servable: Arc<dyn Servable>,
}

/// One kept generation as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeptFile {
    signed: SignedGeneration,
    closure: Vec<ClosureEntry>,
}

/// `generations/<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TargetFile {
    name: String,
    kind: TargetKind,
    attribute: String,
    /// The number the next generation gets (numbers are never reused, even once released).
    next_generation: u64,
    /// Newest first.
    generations: Vec<KeptFile>,
    last_outcome: Option<TargetOutcome>,
}

/// A kept generation in memory: the file's content plus what requests need parsed.
#[derive(Debug, Clone)]
struct Kept {
    file: KeptFile,
    record: GenerationRecord,
    /// The closure's paths as the cache's index keys them.
    keys: Vec<(StorePathHash, Sha256Hash)>,
}

impl Kept {
    fn new(file: KeptFile, store_dir: &str) -> std::result::Result<Kept, String> {
        let record = file.signed.parse_unverified().map_err(|e| e.to_string())?;
        let keys = file
            .closure
            .iter()
            .map(|e| {
                let p = StorePath::from_absolute(store_dir, &e.path).map_err(|x| x.to_string())?;
                let h = Sha256Hash::parse(&e.nar_hash).map_err(|x| x.to_string())?;
                Ok((p.hash(), h))
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok(Kept { file, record, keys })
    }
}

#[derive(Debug, Clone)]
struct Target {
    spec: TargetSpec,
    next_generation: u64,
    generations: Vec<Kept>,
    last_outcome: Option<TargetOutcome>,
}

impl Target {
    fn new(spec: TargetSpec) -> Self {
        Target {
            spec,
            next_generation: 1,
            generations: Vec::new(),
            last_outcome: None,
        }
    }

    fn to_file(&self) -> TargetFile {
        TargetFile {
            name: self.spec.name.clone(),
            kind: self.spec.kind,
            attribute: self.spec.attribute.clone(),
            next_generation: self.next_generation,
            generations: self.generations.iter().map(|k| k.file.clone()).collect(),
            last_outcome: self.last_outcome.clone(),
        }
    }
}

#[derive(Debug)]
struct RunningBuild {
    build_id: u64,
    /// Known once the build has evaluated its targets.
    targets: Option<BTreeSet<String>>,
}

/// The actor.
#[derive(Debug)]
pub struct GenerationStore {
    settings: GenerationSettings,
    store_dir: String,
    targets: BTreeMap<String, Target>,
    running: Option<RunningBuild>,
    metrics: ActorMetrics,
}

impl GenerationStore {
    /// Loads every target file, removes GC roots that no kept generation names, and hands
    /// the closures of generations that are not servable yet to `sink` (the cache compresses
    /// them, first).
    pub fn open(
        settings: GenerationSettings,
        store_dir: &str,
        sink: &dyn NewPathsSink,
        metrics: ActorMetrics,
    ) -> Result<Self> {
        let targets = load_targets(&settings.state_dir, store_dir)?;
        let store = GenerationStore {
            settings,
            store_dir: store_dir.to_owned(),
            targets,
            running: None,
            metrics,
        };
        store.remove_stray_roots()?;
        let pending: Vec<PathBuf> = store
            .targets
            .values()
            .flat_map(|t| &t.generations)
            .filter(|k| !store.is_ready(k))
            .map(|k| PathBuf::from(&k.record.out_path))
            .collect();
        if !pending.is_empty() {
            sink.new_paths(0, pending);
        }
        Ok(store)
    }

    fn dir(&self) -> PathBuf {
        self.settings.state_dir.join("generations")
    }

    /// Removes every `gcroots/<name>/<n>` that is not a kept generation of `name`.
    fn remove_stray_roots(&self) -> Result<()> {
        let roots = self.settings.state_dir.join("gcroots");
        std::fs::create_dir_all(&roots)
            .map_err(|e| Error::io(format!("cannot create {}", roots.display()), e))?;
        let entries = std::fs::read_dir(&roots)
            .map_err(|e| Error::io(format!("cannot read {}", roots.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let kept: BTreeSet<String> = self.targets.get(&name).map_or_else(BTreeSet::new, |t| {
                t.generations
                    .iter()
                    .map(|k| k.record.generation.to_string())
                    .collect()
            });
            let dir = entry.path();
            let Ok(links) = std::fs::read_dir(&dir) else {
                remove_logged(&dir);
                continue;
            };
            for link in links.flatten() {
                if !kept.contains(link.file_name().to_string_lossy().as_ref()) {
                    tracing::info!(
                        "removing GC root {} (no kept generation)",
                        link.path().display()
                    );
                    remove_logged(&link.path());
                }
            }
            if kept.is_empty() {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        Ok(())
    }

    fn is_ready(&self, k: &Kept) -> bool {
        k.keys
            .iter()
            .all(|(p, h)| self.settings.servable.servable(p, h))
    }

    fn persist(&self, t: &Target) -> Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        persist::write_json(&dir.join(format!("{}.json", t.spec.name)), &t.to_file())
    }

    fn in_running_build(&self, name: &str) -> bool {
        match &self.running {
            None => false,
            Some(RunningBuild {
                targets: Some(names),
                ..
            }) => names.contains(name),
            // Not evaluated yet: every target it may build is building.
            Some(RunningBuild { targets: None, .. }) => true,
        }
    }

    fn view(&self, t: &Target) -> HostView {
        let generations: Vec<GenerationView> = t
            .generations
            .iter()
            .map(|k| GenerationView {
                generation: k.record.generation,
                state: if self.is_ready(k) {
                    GenerationState::Ready
                } else {
                    GenerationState::Compressing
                },
                signed: k.file.signed.clone(),
            })
            .collect();
        let failed = t
            .last_outcome
            .as_ref()
            .is_some_and(|o| o.result == target_result::FAILED);
        let state = if self.in_running_build(&t.spec.name) {
            HostState::Building
        } else if failed {
            HostState::Failed
        } else {
            match generations.first() {
                Some(g) if g.state == GenerationState::Ready => HostState::Ready,
                Some(_) => HostState::Compressing,
                None => HostState::New,
            }
        };
        HostView {
            name: t.spec.name.clone(),
            kind: t.spec.kind,
            attribute: t.spec.attribute.clone(),
            state,
            current: generations
                .iter()
                .find(|g| g.state == GenerationState::Ready)
                .map(|g| g.generation),
            last_outcome: t.last_outcome.clone(),
            generations,
        }
    }

    /// Every target, by name: the ones with a file (or in the running build) and configured
    /// ones that never built.
    fn views(&self) -> Vec<HostView> {
        let mut views: BTreeMap<&str, HostView> = self
            .targets
            .iter()
            .map(|(name, t)| (name.as_str(), self.view(t)))
            .collect();
        for spec in &self.settings.configured {
            views
                .entry(spec.name.as_str())
                .or_insert_with(|| self.view(&Target::new(spec.clone())));
        }
        views.into_values().collect()
    }

    fn target_mut(&mut self, spec: &TargetSpec) -> &mut Target {
        self.targets
            .entry(spec.name.clone())
            .or_insert_with(|| Target::new(spec.clone()))
    }

    fn commit(&mut self, msg: CommitBuild) -> Result<()> {
        let mut touched = BTreeSet::new();
        let mut released = Vec::new();
        for g in msg.generations {
            let keys = self.settings.keys.clone();
            let keep = self.settings.keep.max(1);
            let store_dir = self.store_dir.clone();
            let t = self.target_mut(&g.spec);
            t.spec = g.spec.clone();
            if g.generation < t.next_generation {
                tracing::error!(
                    "{}: generation {} was already given; not recorded",
                    g.spec.name,
                    g.generation
                );
                continue;
            }
            let record = GenerationRecord {
                target: g.spec.name.clone(),
                kind: g.spec.kind,
                attribute: g.spec.attribute.clone(),
                generation: g.generation,
                out_path: g.out_path,
                build_id: msg.build_id,
                commit: msg.commit.clone(),
                lock_hash: msg.lock_hash.clone(),
                built_at: msg.built_at,
                closure_nar_size: g.closure.iter().map(|e| e.nar_size).sum(),
                closure_paths: g.closure.len() as u64,
                diff: g.diff,
            };
            let file = KeptFile {
                signed: SignedGeneration::sign(&record, &keys),
                closure: g.closure,
            };
            let kept = Kept::new(file, &store_dir).map_err(|e| {
                Error::io(
                    format!("generation {} of {}", g.generation, g.spec.name),
                    std::io::Error::other(e),
                )
            })?;
            t.generations.insert(0, kept);
            t.next_generation = g.generation + 1;
            // Without its own root the new generation is not protected: keep every older one.
            if g.rooted && t.generations.len() > keep {
                for old in t.generations.split_off(keep) {
                    released.push((g.spec.name.clone(), old.record.generation));
                }
            }
            touched.insert(g.spec.name.clone());
        }
        for o in msg.outcomes {
            let t = self.target_mut(&o.spec);
            t.last_outcome = Some(o.outcome);
            touched.insert(o.spec.name.clone());
        }
        for name in &touched {
            if let Some(t) = self.targets.get(name) {
                self.persist(t)?;
            }
        }
        for (name, generation) in released {
            let link = root_link(&self.settings.state_dir, &name, generation);
            tracing::info!("{name}: generation {generation} released (GC root removed)");
            remove_logged(&link);
        }
        Ok(())
    }
}

fn load_targets(state_dir: &Path, store_dir: &str) -> Result<BTreeMap<String, Target>> {
    let dir = state_dir.join("generations");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
    let mut targets = BTreeMap::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if persist::is_temp_file(&file_name) {
            remove_logged(&entry.path());
            continue;
        }
        let Some(name) = file_name.strip_suffix(".json") else {
            continue;
        };
        let path = entry.path();
        let Some(f) = persist::read_json::<TargetFile>(&path)? else {
            continue;
        };
        let bad =
            |why: String| Error::io(format!("{}", path.display()), std::io::Error::other(why));
        if f.name != name || !valid_target_name(name) {
            return Err(bad(format!("names target {:?}", f.name)));
        }
        let generations = f
            .generations
            .into_iter()
            .map(|k| Kept::new(k, store_dir))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(bad)?;
        let spec = TargetSpec {
            name: f.name.clone(),
            attribute: f.attribute,
            kind: f.kind,
        };
        targets.insert(
            f.name,
            Target {
                spec,
                next_generation: f.next_generation,
                generations,
                last_outcome: f.last_outcome,
            },
        );
    }
    Ok(targets)
}

fn remove_logged(path: &Path) {
    let r = if path.is_dir() && !path.is_symlink() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    if let Err(e) = r
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

impl Actor for GenerationStore {
    type Context = Context<Self>;
}

impl Supervised for GenerationStore {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.metrics.restarted(Self::NAME);
        // The files hold what was completely applied.
        match load_targets(&self.settings.state_dir, &self.store_dir) {
            Ok(t) => self.targets = t,
            Err(e) => tracing::error!("{e}; keeping the generations in memory"),
        }
    }
}

impl Metered for GenerationStore {
    const NAME: &'static str = "GenerationStore";
    const MAILBOX_CAPACITY: usize = MAILBOX_CAPACITY;
    fn actor_metrics(&self) -> &ActorMetrics {
        &self.metrics
    }
}

/// A build started (its targets are building until it says which it evaluated).
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct BuildBegins {
    pub build_id: u64,
}

/// The running build evaluated these targets.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct TargetsEvaluated {
    pub build_id: u64,
    pub targets: Vec<TargetSpec>,
}

/// The build ended (after [`CommitBuild`], if it got that far).
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct BuildEnds {
    pub build_id: u64,
}

/// What a new generation will be compared with and numbered.
#[derive(Debug, Clone)]
pub struct Previous {
    /// The newest kept generation: its number, out path and closure.
    pub newest: Option<(u64, String, Vec<ClosureEntry>)>,
    pub next_generation: u64,
}

/// Asks for [`Previous`] of each named target (in order).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Previous>>")]
pub struct GetPrevious {
    pub names: Vec<String>,
}

/// A generation the build produced, numbered by [`Previous::next_generation`].
#[derive(Debug, Clone)]
pub struct NewGeneration {
    pub spec: TargetSpec,
    pub generation: u64,
    pub out_path: String,
    pub closure: Vec<ClosureEntry>,
    pub diff: ClosureDiff,
    /// Its GC root was registered; only then may older generations be released.
    pub rooted: bool,
}

/// How the build went for one target.
#[derive(Debug, Clone)]
pub struct OutcomeOf {
    pub spec: TargetSpec,
    pub outcome: TargetOutcome,
}

/// Records a build's new generations (signed, persisted, older ones released) and every
/// target's outcome.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct CommitBuild {
    pub build_id: u64,
    pub commit: Option<String>,
    pub lock_hash: Option<String>,
    pub built_at: jiff::Timestamp,
    pub generations: Vec<NewGeneration>,
    pub outcomes: Vec<OutcomeOf>,
}

/// `GET /hosts`.
#[derive(Debug, Message)]
#[rtype(result = "Result<HostsReply>")]
pub struct GetHosts;

/// `GET /hosts/<name>`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<HostView>>")]
pub struct GetHost {
    pub name: String,
}

impl Handler<BuildBegins> for GenerationStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: BuildBegins, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            this.running = Some(RunningBuild {
                build_id: msg.build_id,
                targets: None,
            });
        })
    }
}

impl Handler<TargetsEvaluated> for GenerationStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: TargetsEvaluated, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            let names = msg.targets.iter().map(|t| t.name.clone()).collect();
            for spec in &msg.targets {
                this.target_mut(spec);
            }
            if let Some(r) = this.running.as_mut().filter(|r| r.build_id == msg.build_id) {
                r.targets = Some(names);
            }
        })
    }
}

impl Handler<BuildEnds> for GenerationStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: BuildEnds, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            this.running.take_if(|r| r.build_id == msg.build_id);
            // Targets that a build only discovered, without any outcome, are forgotten.
            this.targets
                .retain(|_, t| t.last_outcome.is_some() || !t.generations.is_empty());
        })
    }
}

impl Handler<GetPrevious> for GenerationStore {
    type Result = Result<Vec<Previous>>;
    fn handle(&mut self, msg: GetPrevious, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            msg.names
                .iter()
                .map(|n| match this.targets.get(n) {
                    Some(t) => Previous {
                        newest: t.generations.first().map(|k| {
                            (
                                k.record.generation,
                                k.record.out_path.clone(),
                                k.file.closure.clone(),
                            )
                        }),
                        next_generation: t.next_generation,
                    },
                    None => Previous {
                        newest: None,
                        next_generation: 1,
                    },
                })
                .collect()
        })
    }
}

impl Handler<CommitBuild> for GenerationStore {
    type Result = Result<()>;
    fn handle(&mut self, msg: CommitBuild, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| this.commit(msg))?
    }
}

impl Handler<GetHosts> for GenerationStore {
    type Result = Result<HostsReply>;
    fn handle(&mut self, msg: GetHosts, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, _, _| HostsReply {
            hosts: this.views(),
        })
    }
}

impl Handler<GetHost> for GenerationStore {
    type Result = Result<Option<HostView>>;
    fn handle(&mut self, msg: GetHost, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            match this.targets.get(&msg.name) {
                Some(t) => Some(this.view(t)),
                None => this
                    .settings
                    .configured
                    .iter()
                    .find(|s| s.name == msg.name)
                    .map(|s| this.view(&Target::new(s.clone()))),
            }
        })
    }
}
