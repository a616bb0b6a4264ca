//! Who triggers and cancels builds, as the tailnet says, and `[api] allow`.
//!
//! tailscaled cannot run here, so a stand-in answers on a unix socket the way its LocalAPI
//! does: `GET /localapi/v0/whois?addr=<ip:port>` with `Host: local-tailscaled.sock` (any
//! other Host is refused with 403, as tailscaled refuses browsers), 200 with an
//! `apitype.WhoIsResponse` for a known address, 404 `no match for IP:port` otherwise. The
//! server relies on `Node.Name`, `Node.ComputedName`, `Node.Tags` and
//! `UserProfile.LoginName` of the answer. Tests play several tailnet peers by connecting
//! from different loopback addresses (127.0.0.2, …), which the server sees as the caller's
//! address, exactly what it hands to whois.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::TestCache;
use common::api::{Gate, StepPids, build_section, parse_json, sh_step};
use common::http::{self, Response};

const ALICE: &str = "127.0.0.2";
const CI: &str = "127.0.0.3";
const BOB: &str = "127.0.0.4";

/// What the stand-in was asked: (Host header, addr parameter).
type Asked = Arc<Mutex<Vec<(String, String)>>>;

/// The whois answer for a caller's IP, as tailscaled would give it.
fn whois_answer(ip: &str) -> Option<String> {
    let (name, computed, tags, login) = match ip {
        ALICE => ("laptop.tail1234.ts.net.", "laptop", "", "alice@example.com"),
        CI => (
            "ci-runner.tail1234.ts.net.",
            "ci-runner",
            r#""tag:ci""#,
            "tagged-devices",
        ),
        BOB => ("desktop.tail1234.ts.net.", "desktop", "", "bob@example.com"),
        _ => return None,
    };
    let tags = if tags.is_empty() {
        String::new()
    } else {
        format!(r#", "Tags": [{tags}]"#)
    };
    Some(format!(
        r#"{{"Node": {{"ID": 1, "StableID": "n1", "Name": "{name}", "ComputedName": "{computed}",
            "Addresses": ["{ip}/32"]{tags}}},
           "UserProfile": {{"ID": 2, "LoginName": "{login}", "DisplayName": "Someone"}},
           "CapMap": null}}"#
    ))
}

/// Serves the stand-in LocalAPI on `socket` for the rest of the test process.
fn stand_in_local_api(socket: &Path) -> Asked {
    let listener = UnixListener::bind(socket).unwrap();
    let asked: Asked = Arc::default();
    let log = asked.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let target = head
                .first()
                .and_then(|l| l.split(' ').nth(1))
                .unwrap_or("")
                .to_string();
            let host = head
                .iter()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            let addr = target
                .strip_prefix("/localapi/v0/whois?addr=")
                .unwrap_or("")
                .to_string();
            log.lock().unwrap().push((host.clone(), addr.clone()));
            let ip = addr.rsplit_once(':').map_or("", |(ip, _)| ip);
            let (status, body) = if host != "local-tailscaled.sock" {
                ("403 Forbidden", "invalid localapi request\n".to_string())
            } else if addr.is_empty() {
                ("400 Bad Request", "missing 'addr' parameter\n".to_string())
            } else {
                match whois_answer(ip) {
                    Some(json) => ("200 OK", json),
                    None => ("404 Not Found", "no match for IP:port\n".to_string()),
                }
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    asked
}

/// `[api]` keys naming the LocalAPI socket and the allow list.
fn api_config(socket: &Path, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "tailscale_socket = {:?}\nallow = [{}]\n",
        socket.to_str().unwrap(),
        allow.join(", ")
    )
}

fn builder<'a>(dir: &Path, extra_api: &str, build: &str) -> common::cache::TestCacheBuilder<'a> {
    let root = dir.join("store-root");
    std::fs::create_dir_all(root.join("nix/store")).unwrap();
    TestCache::builder()
        .store_root(&root)
        .api_extra(extra_api)
        .build_toml(build)
}

fn post(server: &TestCache, from: &str, target: &str, claim: (&str, &str)) -> Response {
    let from: IpAddr = from.parse().unwrap();
    http::request_from(
        from,
        server.api_url(),
        "POST",
        target,
        &[("X-Tailcache-User", claim.0), ("X-Tailcache-Host", claim.1)],
    )
}

fn refusals(server: &TestCache, reason: &str) -> f64 {
    server.metric("tailcache_api_refusals_total", &[("reason", reason)])
}

#[test]
fn callers_are_named_by_the_tailnet_and_the_allow_list_holds() {
    let d = tempfile::tempdir().unwrap();
    let socket = d.path().join("tailscaled.sock");
    let asked = stand_in_local_api(&socket);
    let gate = Gate::new(d.path(), "never");
    let pids = StepPids::new(d.path());
    let steps = [sh_step(
        "wait",
        &format!("{}; {}", pids.record(), gate.wait_script()),
        "",
    )];
    let server = builder(
        d.path(),
        &api_config(&socket, &["user:alice@example.com", "tag:ci"]),
        &build_section("kill_grace_secs = 2", &steps),
    )
    .start();

    // Bob is on the tailnet but not allowed, whatever his headers claim.
    let r = post(&server, BOB, "/build/trigger", ("alice", "laptop"));
    assert_eq!(r.status, 403, "{}", r.text());
    let j = parse_json("403", &r.text());
    let message = j["message"].as_str().unwrap_or("");
    assert!(
        message.contains("bob@example.com") && message.contains("[api] allow"),
        "{message}"
    );
    // A caller the tailnet does not know (loopback): refused too.
    let r = post(&server, "127.0.0.1", "/build/trigger", ("alice", "laptop"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("not a tailnet node"), "{}", r.text());
    assert_eq!(refusals(&server, "not_allowed"), 2.0);

    // Alice is allowed; her claims stay next to what the tailnet says.
    let r = post(&server, ALICE, "/build/trigger", ("mallory", "somewhere"));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = parse_json("trigger", &r.text())["build_id"]
        .as_u64()
        .unwrap();
    let s = server.wait_step(id, "wait");
    let by = &s["requested_by"];
    assert_eq!(by["user"].as_str(), Some("mallory"), "{s:?}");
    assert_eq!(by["host"].as_str(), Some("somewhere"), "{s:?}");
    let tailnet = &by["tailnet"];
    assert_eq!(tailnet["user"].as_str(), Some("alice@example.com"), "{s:?}");
    assert_eq!(tailnet["node"].as_str(), Some("laptop"), "{s:?}");

    // Bob may not cancel; the tagged CI node may, and is recorded as who did.
    let r = post(&server, BOB, "/build/cancel", ("bob", "desktop"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(server.build_status()["is_running"].as_bool(), Some(true));
    let r = post(&server, CI, "/build/cancel", ("ci", "runner"));
    assert_eq!(r.status, 200, "{}", r.text());
    let s = server.wait_finished(id);
    let record = &s["history"].as_array().unwrap()[0];
    assert_eq!(record["result"].as_str(), Some("cancelled"), "{s:?}");
    let cancelled = &record["cancelled_by"]["tailnet"];
    assert_eq!(cancelled["node"].as_str(), Some("ci-runner"), "{s:?}");
    let tags: Vec<&str> = cancelled["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(tags, ["tag:ci"], "{s:?}");
    assert_eq!(refusals(&server, "not_allowed"), 3.0);

    // Every whois went with tailscaled's Host and the caller's ip:port.
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .all(|(host, _)| host == "local-tailscaled.sock"),
        "{asked:?}"
    );
    for ip in [ALICE, BOB, CI, "127.0.0.1"] {
        assert!(
            asked.iter().any(|(_, addr)| addr
                .rsplit_once(':')
                .is_some_and(|(a, port)| a == ip && port.parse::<u16>().is_ok())),
            "no whois of {ip}: {asked:?}"
        );
    }
}

#[test]
fn without_the_local_api_callers_are_known_by_their_headers() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-tailscaled.sock");
    let steps = [sh_step("quick", "true", "")];
    let build = build_section("", &steps);
    let server = builder(d.path(), &api_config(&missing, &[]), &build).start();
    for _ in 0..2 {
        let r = post(&server, "127.0.0.1", "/build/trigger", ("alice", "laptop"));
        assert_eq!(r.status, 200, "{}", r.text());
        let id = parse_json("trigger", &r.text())["build_id"]
            .as_u64()
            .unwrap();
        let s = server.wait_finished(id);
        let by = &s["requested_by"];
        assert_eq!(by["user"].as_str(), Some("alice"), "{s:?}");
        assert!(by.get("tailnet").is_none(), "{s:?}");
    }
    let said = server.stderr().matches("cannot be asked").count();
    assert_eq!(said, 1, "said once:\n{}", server.stderr());

    // With an allow list but no LocalAPI, only `local` can be checked.
    let d2 = tempfile::tempdir().unwrap();
    let strict = builder(
        d2.path(),
        &api_config(&missing, &["user:alice@example.com"]),
        &build,
    )
    .start();
    let r = post(&strict, "127.0.0.1", "/build/trigger", ("alice", "laptop"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("cannot tell who"), "{}", r.text());
    assert_eq!(refusals(&strict, "unidentified"), 1.0);
    let d3 = tempfile::tempdir().unwrap();
    let local = builder(d3.path(), &api_config(&missing, &["local"]), &build).start();
    let r = post(&local, "127.0.0.1", "/build/trigger", ("timer", "server"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        refusals(&local, "unidentified") + refusals(&local, "not_allowed"),
        0.0
    );
}
