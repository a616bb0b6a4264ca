//! GenerationStore on its own (no Nix): numbering that survives restarts and releases,
//! retention of the last `keep` generations and their GC roots, no release without the new
//! generation's own root, removal of stray roots at start-up, refusal of a corrupt file,
//! records signed by the configured key, and readiness asked of the cache on every request.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::{Arc, Mutex};

use actix::{Actor as _, Addr};
use prometheus_client::registry::Registry;
use tailcache_actors::fleet::diff::{ClosureEntry, closure_diff};
use tailcache_actors::fleet::generations::{
    CommitBuild, GetHosts, GetPrevious, NewGeneration, OutcomeOf, root_link,
};
use tailcache_actors::fleet::{GenerationSettings, GenerationStore, Servable, TargetSpec};
use tailcache_actors::{Metrics, NoSink};
use tailcache_store::signing::SecretKey;
use tailcache_store::{Sha256Hash, StorePathHash};
use tailcache_wire::generation::TargetKind;
use tailcache_wire::hosts::{GenerationState, HostState, HostView, TargetOutcome};

/// A cache that serves exactly the paths put into it.
#[derive(Debug, Default)]
struct FakeCache(Mutex<BTreeSet<StorePathHash>>);

impl Servable for FakeCache {
    fn servable(&self, path: &StorePathHash, _: &Sha256Hash) -> bool {
        self.0.lock().unwrap().contains(path)
    }
}

fn path(name: &str, n: u8) -> String {
    let hash = tailcache_store::nixbase32::encode(&[n; 20]);
    format!("/nix/store/{hash}-{name}")
}

fn entry(name: &str, n: u8) -> ClosureEntry {
    ClosureEntry {
        path: path(name, n),
        nar_hash: Sha256Hash([n; 32]).to_string(),
        nar_size: u64::from(n) * 100,
    }
}

fn spec() -> TargetSpec {
    TargetSpec {
        name: "laptop".into(),
        attribute: "nixosConfigurations.laptop.config.system.build.toplevel".into(),
        kind: TargetKind::Nixos,
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    key: SecretKey,
    cache: Arc<FakeCache>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            key: SecretKey::generate("gen-test-1").unwrap(),
            cache: Arc::new(FakeCache::default()),
        }
    }

    fn open(&self) -> tailcache_actors::Result<Addr<GenerationStore>> {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let settings = GenerationSettings {
            state_dir: self.dir.path().to_owned(),
            keys: vec![self.key.clone()],
            keep: 2,
            configured: vec![spec()],
            servable: self.cache.clone(),
        };
        Ok(GenerationStore::open(settings, "/nix/store", &NoSink, metrics.actors)?.start())
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }
}

/// Records generation `n` of the laptop (closure: a shared library and its own toplevel).
async fn build(f: &Fixture, store: &Addr<GenerationStore>, n: u8, rooted: bool) {
    let prev = store
        .send(GetPrevious {
            names: vec!["laptop".into()],
        })
        .await
        .unwrap()
        .unwrap()
        .remove(0);
    assert_eq!(prev.next_generation, u64::from(n));
    let closure = vec![
        entry("lib-1.0", 1),
        entry(&format!("system-24.05.{n}"), 10 + n),
    ];
    let out = closure[1].path.clone();
    let link = root_link(f.state(), "laptop", u64::from(n));
    if rooted {
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(&out, &link).unwrap();
    }
    let diff = closure_diff(
        prev.newest.as_ref().map(|(g, _, c)| (*g, c.as_slice())),
        &closure,
    );
    let msg = CommitBuild {
        build_id: u64::from(n) + 100,
        commit: Some(format!("{n:040}")),
        lock_hash: None,
        built_at: jiff::Timestamp::now(),
        generations: vec![NewGeneration {
            spec: spec(),
            generation: u64::from(n),
            out_path: out,
            closure,
            diff,
            rooted,
        }],
        outcomes: vec![OutcomeOf {
            spec: spec(),
            outcome: TargetOutcome {
                target: "laptop".into(),
                build_id: u64::from(n) + 100,
                result: "built".into(),
                generation: Some(u64::from(n)),
                failed_derivations: Vec::new(),
                error: None,
            },
        }],
    };
    store.send(msg).await.unwrap().unwrap();
}

async fn laptop(store: &Addr<GenerationStore>) -> HostView {
    let hosts = store.send(GetHosts).await.unwrap().unwrap();
    assert_eq!(hosts.hosts.len(), 1, "{hosts:#?}");
    hosts.hosts.into_iter().next().unwrap()
}

fn kept(v: &HostView) -> Vec<u64> {
    v.generations.iter().map(|g| g.generation).collect()
}

fn roots(f: &Fixture) -> BTreeSet<String> {
    std::fs::read_dir(f.state().join("gcroots/laptop"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn generations_are_numbered_kept_released_and_survive_a_restart() {
    common::run(|| async {
        let f = Fixture::new();
        let store = f.open().unwrap();
        let v = laptop(&store).await;
        assert_eq!(
            (v.state, v.current),
            (HostState::New, None),
            "configured, never built"
        );

        build(&f, &store, 1, true).await;
        let v = laptop(&store).await;
        assert_eq!(v.state, HostState::Compressing, "nothing servable yet");
        assert_eq!(v.current, None);
        // Servable once every path of the closure is.
        let record = v.generations[0].signed.verify(&[f.key.public()]).unwrap();
        f.cache
            .0
            .lock()
            .unwrap()
            .insert(StorePathHash::parse(&path("lib-1.0", 1)[11..43]).unwrap());
        assert_eq!(laptop(&store).await.state, HostState::Compressing);
        let top = StorePathHash::parse(&record.out_path[11..43]).unwrap();
        f.cache.0.lock().unwrap().insert(top);
        let v = laptop(&store).await;
        assert_eq!((v.state, v.current), (HostState::Ready, Some(1)));
        assert_eq!(v.generations[0].state, GenerationState::Ready);
        assert_eq!(record.closure_paths, 2);
        assert_eq!(record.closure_nar_size, 100 + 1100);

        build(&f, &store, 2, true).await;
        build(&f, &store, 3, true).await;
        let v = laptop(&store).await;
        assert_eq!(kept(&v), [3, 2], "keep = 2");
        assert_eq!(roots(&f), BTreeSet::from(["2".into(), "3".into()]));
        assert_eq!(v.current, None, "3 and 2 are not servable yet");
        let r3 = v.generations[0].signed.verify(&[f.key.public()]).unwrap();
        assert_eq!(r3.diff.previous, Some(2));
        assert_eq!(r3.diff.added, [path("system-24.05.3", 13)]);
        assert_eq!(r3.diff.removed, [path("system-24.05.2", 12)]);

        // Without its own root a new generation releases nothing.
        build(&f, &store, 4, false).await;
        assert_eq!(kept(&laptop(&store).await), [4, 3, 2]);
        assert_eq!(roots(&f), BTreeSet::from(["2".into(), "3".into()]));

        // A restart sees the same generations; numbers continue after the newest.
        drop(store);
        let store = f.open().unwrap();
        let v = laptop(&store).await;
        assert_eq!(kept(&v), [4, 3, 2]);
        assert_eq!(v.last_outcome.as_ref().unwrap().generation, Some(4));
        build(&f, &store, 5, true).await;
        assert_eq!(kept(&laptop(&store).await), [5, 4]);
        assert_eq!(roots(&f), BTreeSet::from(["5".into()]), "4 had no root");
    });
}

#[test]
fn start_up_removes_roots_no_generation_names_and_refuses_a_corrupt_file() {
    common::run(|| async {
        let f = Fixture::new();
        let store = f.open().unwrap();
        build(&f, &store, 1, true).await;
        drop(store);
        // What a crash can leave: the root of a generation never recorded, of a target
        // nobody knows, and a temp file of an interrupted write.
        let stray = root_link(f.state(), "laptop", 7);
        symlink("/nix/store/x", &stray).unwrap();
        let ghost = root_link(f.state(), "ghost", 1);
        std::fs::create_dir_all(ghost.parent().unwrap()).unwrap();
        symlink("/nix/store/y", &ghost).unwrap();
        let temp = f.state().join("generations/.laptop.json.tmp-1-1");
        std::fs::write(&temp, "{").unwrap();
        let store = f.open().unwrap();
        assert_eq!(kept(&laptop(&store).await), [1]);
        assert_eq!(roots(&f), BTreeSet::from(["1".into()]));
        assert!(!ghost.parent().unwrap().exists());
        assert!(!temp.exists());
        drop(store);

        std::fs::write(f.state().join("generations/laptop.json"), "{not json").unwrap();
        let err = f.open().unwrap_err().to_string();
        assert!(err.contains("laptop.json"), "{err}");
        assert_eq!(roots(&f), BTreeSet::from(["1".into()]), "roots untouched");
    });
}
