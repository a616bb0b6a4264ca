//! Build notifications (`[notify]`) against a local HTTP receiver on 127.0.0.1: a fleet
//! build's summary arrives as ntfy-style text (title header, one line per host, the bearer
//! token); a receiver that holds the request without answering does not hold up the next
//! build (it is recorded finished while the first request is still held); a receiver that
//! answers 500 gets the configured number of attempts and the builds are unaffected.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCache;
use common::api::{build_section, parse_json, sh_step};
use common::fleet::{Fleet, FleetVariant, toml_str};

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Status500,
    /// Reads the request and keeps the connection open without answering.
    Hang,
}

#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 receiver that records every request.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Connections held open (Hang).
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Receiver {
    fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/tailcache-builds", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (reqs, hold) = (requests.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let Some(req) = read_request(&mut stream) else {
                    continue;
                };
                reqs.lock().unwrap().push(req);
                match mode {
                    Mode::Ok => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        );
                    }
                    Mode::Status500 => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                    }
                    Mode::Hang => hold.lock().unwrap().push(stream),
                }
            }
        });
        Receiver {
            url,
            requests,
            _held: held,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    fn wait(&self, n: usize) -> Vec<Request> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.requests();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{n} notifications did not arrive; got {r:?}"
            );
            // Polling what the receiver has seen.
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn notify_section(url: &str, extra: &str) -> String {
    format!("\n[notify]\nurl = {}\n{extra}\n", toml_str(url))
}

#[test]
fn a_fleet_build_is_summarised_one_line_per_host() {
    let receiver = Receiver::start(Mode::Ok);
    let fleet = Fleet::new(FleetVariant::FIRST);
    let token = fleet.scratch("notify").join("token");
    std::fs::write(&token, "notify-secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = notify_section(
        &receiver.url,
        &format!("token_file = {}", toml_str(token.to_str().unwrap())),
    );
    let server = fleet.server(&extra).start();
    let (id, _) = server.build_fleet();
    let r = receiver.wait(1);
    assert_eq!(r.len(), 1, "{r:?}");
    let r = &r[0];
    assert_eq!(r.path, "/tailcache-builds");
    assert_eq!(r.header("authorization"), Some("Bearer notify-secret"));
    let title = r.header("title").unwrap_or_default();
    assert!(
        title.starts_with(&format!("tailcache: build {id} of ")) && title.contains("failed"),
        "{title}"
    );
    assert_eq!(r.header("tags"), Some("x"));
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.body);
    assert!(
        lines[0].starts_with("alice@laptop: generation 1 built"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("laptop: generation 1 built"),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("server: failed: /nix/store/")
            && lines[2].ends_with("-fleet-broken-0.1.drv"),
        "{lines:?}"
    );
}

/// A server whose build is one shell step, notifying `url` (and the directory of its store).
fn quick_server(url: &str, extra: &str) -> (TestCache, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("nix/store")).unwrap();
    let build = build_section("", &[sh_step("hello", "echo hello", "")]);
    let server = TestCache::builder()
        .store_root(root.path())
        .build_toml(&format!("{build}{}", notify_section(url, extra)))
        .start();
    (server, root)
}

#[test]
fn a_receiver_that_never_answers_holds_up_no_build() {
    let receiver = Receiver::start(Mode::Hang);
    let (server, _root) = quick_server(&receiver.url, "format = \"json\"\ntimeout_secs = 600");
    let first = server.trigger_build();
    let held = receiver.wait(1);
    let body = parse_json("the notification", &held[0].body);
    assert_eq!(body["build_id"].as_u64(), Some(first));
    assert_eq!(body["result"].as_str(), Some("success"));
    assert_eq!(held[0].header("content-type"), Some("application/json"));
    // The receiver holds that request; the next build runs and is recorded all the same.
    let second = server.trigger_build();
    let s = server.wait_finished(second);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s:?}");
    assert_eq!(
        receiver.requests().len(),
        1,
        "the first request is still held, so the second waits in the queue"
    );
}

#[test]
fn a_receiver_that_answers_500_gets_every_attempt_and_the_build_is_unaffected() {
    let receiver = Receiver::start(Mode::Status500);
    let (server, _root) = quick_server(&receiver.url, "attempts = 3");
    let id = server.trigger_build();
    let s = server.wait_finished(id);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s:?}");
    let r = receiver.wait(3);
    assert!(
        r.iter().all(|q| q.body == format!("build {id} success")),
        "{r:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.stderr().contains("not delivered after 3 attempts") {
        assert!(
            Instant::now() < deadline,
            "no final warning; stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(receiver.requests().len(), 3, "no attempt after the last");
    // The next build is not held up either.
    let next = server.trigger_build();
    let s = server.wait_finished(next);
    assert_eq!(s["last_status"].as_str(), Some("success"), "{s:?}");
}
