//! Where code runs decides what it may use: the agent (`p2p/agent`, crate tailcache-agent)
//! and the server (the root package's library, `src/` but `main.rs`) never use each other.
//! Only the binary's dispatch (`src/main.rs`) links both. Cargo already forbids the agent
//! crate from naming the root package (the root depends on it, and a cycle does not build);
//! this checks the other direction, which Cargo cannot: a dependency of the package is
//! visible to its library as well as to its binary.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_server_library_never_uses_the_agent_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 10, "no sources found under src/");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| *f != &root.join("src/main.rs"))
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains("tailcache_agent")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "server code uses the agent crate: {offenders:?}"
    );
}

#[test]
fn the_agent_crate_depends_on_no_server_crate() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("p2p/agent/Cargo.toml"))
            .unwrap();
    let deps: toml::Table = toml::from_str::<toml::Table>(&manifest).unwrap()["dependencies"]
        .as_table()
        .unwrap()
        .clone();
    let ours: Vec<&String> = deps.keys().filter(|k| k.starts_with("tailcache")).collect();
    assert_eq!(ours, ["tailcache-p2p", "tailcache-store"]);
}
