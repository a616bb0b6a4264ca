//! Where code runs decides what it may use: the three programs — the server (`server/`,
//! tailcache-server), the client CLI (`cli/`, tailcache-cli) and the agent (`p2p/agent/`,
//! tailcache-agent) — never depend on one another, directly or through a shared crate.
//! Only the binary (`src/main.rs`, the root package) links all three. What two programs
//! share lives a layer down, in crates that depend on no program (the HTTP listener of the
//! server and the agent, `listener/`, depends only on `metrics/`). Checked over the
//! workspace manifests, so a new dependency edge fails here before it is used; and every
//! member is in the Nix package's copy of the sources.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const PROGRAMS: [&str; 3] = ["tailcache-server", "tailcache-cli", "tailcache-agent"];

/// Each workspace member's name and the workspace crates it depends on (normal
/// dependencies only: a dev-dependency does not ship).
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |dir: &Path| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap()
    };
    let top = read(root);
    let members = top["workspace"]["members"].as_array().unwrap();
    members
        .iter()
        .map(|m| {
            let manifest = read(&root.join(m.as_str().unwrap()));
            let name = manifest["package"]["name"].as_str().unwrap().to_owned();
            let ours = manifest
                .get("dependencies")
                .and_then(|d| d.as_table())
                .map(|d| {
                    d.keys()
                        .filter(|k| k.starts_with("tailcache"))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            (name, ours)
        })
        .collect()
}

/// Every workspace crate `name` depends on, directly or not.
fn closure(graph: &BTreeMap<String, BTreeSet<String>>, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_owned()];
    while let Some(n) = todo.pop() {
        for d in graph
            .get(&n)
            .unwrap_or_else(|| panic!("{n} is not a workspace member"))
        {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn no_program_crate_depends_on_another() {
    let graph = workspace_graph();
    for program in PROGRAMS {
        let deps = closure(&graph, program);
        let others: Vec<&str> = PROGRAMS
            .into_iter()
            .filter(|p| *p != program && deps.contains(*p))
            .collect();
        assert!(
            others.is_empty(),
            "{program} depends on {others:?} (all of its workspace dependencies: {deps:?})"
        );
    }
}

#[test]
fn the_binary_links_all_three_programs() {
    let graph = workspace_graph();
    let direct = &graph["tailcache"];
    for program in PROGRAMS {
        assert!(
            direct.contains(program),
            "tailcache does not link {program}"
        );
    }
}

#[test]
fn the_agent_crate_depends_only_on_p2p_store_listener_and_metrics() {
    let graph = workspace_graph();
    assert_eq!(
        closure(&graph, "tailcache-agent"),
        BTreeSet::from([
            "tailcache-listener".to_owned(),
            "tailcache-metrics".to_owned(),
            "tailcache-p2p".to_owned(),
            "tailcache-store".to_owned()
        ])
    );
}

#[test]
fn the_listener_crate_depends_only_on_metrics_and_serves_server_and_agent() {
    let graph = workspace_graph();
    assert_eq!(
        closure(&graph, "tailcache-listener"),
        BTreeSet::from(["tailcache-metrics".to_owned()])
    );
    assert_eq!(closure(&graph, "tailcache-metrics"), BTreeSet::new());
    for program in ["tailcache-server", "tailcache-agent"] {
        assert!(
            graph[program].contains("tailcache-listener"),
            "{program} does not serve through tailcache-listener"
        );
    }
}

/// The Nix package builds from a filtered copy of the sources (nix/package.nix, `rustOnly`):
/// every workspace member's top directory must be in that list, or the package cannot build.
#[test]
fn the_nix_package_copies_every_workspace_member() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let nix = std::fs::read_to_string(root.join("nix/package.nix")).unwrap();
    let list = nix
        .split_once("builtins.elem top [")
        .and_then(|(_, rest)| rest.split_once("];"))
        .expect("nix/package.nix lists the copied top-level entries in `builtins.elem top [ … ]`")
        .0;
    let copied: BTreeSet<&str> = list
        .split_whitespace()
        .map(|w| w.trim_matches('"'))
        .collect();
    let top: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    for member in top["workspace"]["members"].as_array().unwrap() {
        let dir = member.as_str().unwrap();
        let first = dir.split('/').next().unwrap();
        if first != "." {
            assert!(
                copied.contains(first),
                "{dir} is not copied by nix/package.nix"
            );
        }
    }
}
