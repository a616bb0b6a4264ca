//! `GET /metrics`: after a build and some cache traffic, the exposition passes
//! `promtool check metrics` (Prometheus' own parser and linter; Debian `prometheus`) and
//! holds the actor families for all four actors, the build counts by result and the
//! cache's counters (narinfo hits and misses, NAR bytes by compression, the compression
//! queue).

mod common;

use std::collections::BTreeMap;

use common::api::{build_section, sh_step};
use common::nix::{hash_part, unknown_store_path};
use common::{TestCache, TestStore};

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines of the text exposition (label values without `"`, `,` or
/// escapes, which is all tailcache emits).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample line {l:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {l:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{l:?}"));
                    let labels = body
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{l:?}"));
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (n.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

#[test]
fn metrics_pass_promtool_and_cover_actors_builds_and_cache() {
    let store = TestStore::build_small();
    let steps = [sh_step("quick", "echo metrics-build", "")];
    let server = TestCache::builder()
        .store(&store)
        .compression("xz")
        .build_toml(&build_section("log_lines = 100", &steps))
        .start();

    let id = server.trigger_build();
    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("success"));

    // Cache traffic: hits (which queue the path's compression: CacheServer's messages),
    // a miss and a compressed NAR download.
    let leaf = store.path("leaf");
    let info = server.wait_compressed(&[leaf], "xz").remove(0);
    let nar = server.get(&format!("/{}", info.get("URL").unwrap()));
    assert_eq!(nar.status, 200);
    let miss = server.get(&format!("/{}.narinfo", hash_part(&unknown_store_path())));
    assert_eq!(miss.status, 404);

    let text = server.metrics();
    tailcache_testkit::promtool::check_metrics(&text);
    let all = samples(&text);
    let find = |name: &str, label: (&str, &str)| {
        all.iter()
            .filter(|s| {
                s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1)
            })
            .collect::<Vec<_>>()
    };

    for actor in ["BuildSupervisor", "StatusStore", "LogTail", "CacheServer"] {
        let handled = find("tailcache_actor_messages_handled_total", ("actor", actor));
        assert!(
            handled
                .iter()
                .any(|s| s.value >= 1.0 && s.labels.contains_key("message")),
            "no handled messages for {actor}: {handled:?}"
        );
        let latency = find(
            "tailcache_actor_handler_duration_seconds_count",
            ("actor", actor),
        );
        assert!(
            latency.iter().any(|s| s.value >= 1.0),
            "no handler latency for {actor}"
        );
        assert!(
            !find("tailcache_actor_mailbox_depth", ("actor", actor)).is_empty(),
            "no mailbox depth for {actor}"
        );
        assert_eq!(
            find("tailcache_actor_restarts_total", ("actor", actor)).len(),
            1,
            "restarts of {actor}"
        );
    }
    let trigger = find(
        "tailcache_actor_messages_handled_total",
        ("message", "Trigger"),
    );
    assert!(trigger.iter().any(|s| s.value >= 1.0), "{trigger:?}");

    let success = find("tailcache_builds_total", ("result", "success"));
    assert!(
        success.len() == 1 && success[0].value >= 1.0,
        "builds by result: {success:?}"
    );
    for result in ["failed", "cancelled", "interrupted"] {
        assert_eq!(find("tailcache_builds_total", ("result", result)).len(), 1);
    }
    assert!(
        find(
            "tailcache_build_duration_seconds_count",
            ("result", "success")
        )
        .iter()
        .any(|s| s.value >= 1.0)
    );

    // The cache's own counters; their exact names are the server's choice, their
    // meaning is not.
    let cache: Vec<&Sample> = all
        .iter()
        .filter(|s| s.name.starts_with("tailcache_cache_"))
        .collect();
    // A part matches the family's name or one of the sample's label values
    // (`…narinfo_hits_total` and `…narinfo_requests_total{result="hit"}` alike).
    let named = |parts: &[&str]| {
        cache
            .iter()
            .filter(|s| {
                parts
                    .iter()
                    .all(|p| s.name.contains(p) || s.labels.values().any(|v| v.contains(p)))
            })
            .collect::<Vec<_>>()
    };
    let hits = named(&["narinfo", "hit"]);
    assert!(
        hits.iter().any(|s| s.value >= 1.0),
        "narinfo hits: {hits:?}"
    );
    let misses = named(&["narinfo", "miss"]);
    assert!(
        misses.iter().any(|s| s.value >= 1.0),
        "narinfo misses: {misses:?}"
    );
    let nar_bytes: Vec<_> = named(&["nar", "bytes"])
        .into_iter()
        .filter(|s| s.labels.contains_key("compression"))
        .collect();
    let served = nar.body.len() as f64;
    assert!(
        nar_bytes
            .iter()
            .any(|s| s.labels["compression"] == "xz" && s.value >= served),
        "NAR bytes by compression (served {served} as xz): {nar_bytes:?}"
    );
    assert!(
        !named(&["queue"]).is_empty(),
        "no compression queue length among {:?}",
        cache.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}
