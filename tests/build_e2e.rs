//! The default build pipeline for real: a local git repository
//! holding a flake with no inputs whose output is a `builtins.derivation` with `/bin/sh`
//! as builder; the server clones it, runs `nix flake update`, `nix eval` and `nix build`
//! (real Nix, into a throwaway store that its cache listener serves), the test follows the
//! log over SSE to the end, checks the recorded commit and the target's generation, and
//! stock Nix then substitutes the built output from the cache with signatures required.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::api::parse_json;
use common::fleet::{current_system, git, store_and_key, toml_str};
use common::nix::{Fetch, assert_success, is_valid};
use common::{NixEnv, TestCache};

/// Real Nix builds: generous, but bounded.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn the_default_pipeline_builds_a_flake_that_stock_nix_then_substitutes() {
    let nix = NixEnv::new();
    let d = tempfile::Builder::new()
        .prefix("tc-e2e.")
        .tempdir()
        .unwrap();
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let system = current_system(&nix);

    // The repository: one commit with a flake that needs nothing from outside.
    let repo = d.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("flake.nix"),
        format!(
            r#"{{
  description = "tailcache end-to-end test";
  outputs = {{ self }}: {{
    default = builtins.derivation {{
      name = "tailcache-e2e";
      system = "{system}";
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      args = [ "-c" "echo e2e-builder-ran; echo hello-e2e {nonce} > $out" ];
    }};
  }};
}}
"#
        ),
    )
    .unwrap();
    git(&repo, &["add", "flake.nix"]);
    git(&repo, &["commit", "-q", "-m", "a flake to build"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);

    // The store the server builds into and serves.
    let (root, key) = store_and_key(&nix, d.path(), "e2e-1");

    let build = format!(
        "[build]\nrepository = {}\nbranch = \"main\"\nattribute = \"default\"\n\
         nix_args = [\"--store\", {}]\nstep_timeout_secs = 300\nkill_grace_secs = 2\n",
        toml_str(repo.to_str().unwrap()),
        toml_str(root.to_str().unwrap()),
    );
    let server = TestCache::builder()
        .store_root(&root)
        .secret_key(&key.secret)
        .nix_env(&nix)
        .build_toml(&build)
        .start();

    let t = server.trigger("e2e", "itest");
    assert_eq!(t["status"].as_str(), Some("triggered"), "{t:?}");
    let id = t["build_id"].as_u64().expect("build_id");
    let mut follow = server.follow(Some(1000));
    let (lines, end) = follow.until_end(BUILD_TIMEOUT);
    let end = parse_json("end event", &end.data);
    assert_eq!(
        end["result"].as_str(),
        Some("success"),
        "build {id} ended {end:?}; log:\n{}\nstderr:\n{}",
        lines.join("\n"),
        server.stderr()
    );
    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s:?}");
    assert_eq!(s["last_commit"].as_str(), Some(head.as_str()), "{s:?}");

    // The attribute is a fleet of one target named after it: its first generation names
    // the output, whose GC root is registered under the state directory; the log printed
    // it too.
    let target = server.host("default");
    let record = target.generations[0].signed.parse_unverified().unwrap();
    let out = record.out_path.clone();
    let gc_root = server.state_dir().join("gcroots/default/1");
    let rooted =
        std::fs::read_link(&gc_root).unwrap_or_else(|e| panic!("{}: {e}", gc_root.display()));
    assert_eq!(rooted.to_str(), Some(out.as_str()));
    assert!(
        out.starts_with("/nix/store/") && out.ends_with("-tailcache-e2e"),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.contains(&out)),
        "the log never names {out}: {lines:?}"
    );
    assert!(is_valid(&nix, root.to_str().unwrap(), &out));

    // The supervisor handed the new paths to CacheServer (which queues their compression).
    let deadline = Instant::now() + Duration::from_secs(30);
    let handed_over = || {
        server.metric(
            "tailcache_actor_messages_handled_total",
            &[("actor", "CacheServer"), ("message", "NewPaths")],
        )
    };
    while handed_over() < 1.0 {
        assert!(
            Instant::now() < deadline,
            "CacheServer never got the build's new paths (NewPaths)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Stock Nix substitutes it from the cache listener, signatures required.
    let client = d.path().join("client");
    let client = client.to_str().unwrap();
    let copy = Fetch::Copy.run(&nix, server.url(), client, &key.public, &[&out]);
    assert_success("nix copy --from the cache", &copy);
    assert!(is_valid(&nix, client, &out));
    let content = std::fs::read_to_string(
        Path::new(client)
            .join("nix/store")
            .join(out.strip_prefix("/nix/store/").unwrap()),
    )
    .unwrap();
    assert_eq!(content, format!("hello-e2e {nonce}\n"));
}
