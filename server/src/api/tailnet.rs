//! Who asks, from the tailnet: tailscaled's LocalAPI (`GET /localapi/v0/whois?addr=<ip:port>`
//! on its unix socket, `Host: local-tailscaled.sock`) names the node, user and tags behind a
//! caller's address, which WireGuard authenticated — unlike the `X-Tailcache-*` headers,
//! which any client can set. [`Allow`] decides who may trigger and cancel from that.
//!
//! Of tailscale's `apitype.WhoIsResponse` this reads `Node.Name`, `Node.ComputedName`,
//! `Node.Tags` and `UserProfile.LoginName`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tailcache_actors::TailnetIdentity;

use crate::config::AllowEntry;

/// The Host tailscaled's LocalAPI insists on (its guard against browsers).
const LOCALAPI_HOST: &str = "local-tailscaled.sock";
/// A whois is a local map lookup; longer means tailscaled is stuck.
const WHOIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read (a node with many addresses and capabilities is a few KiB).
const MAX_ANSWER: usize = 256 << 10;

/// What tailscaled said about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whois {
    Known(TailnetIdentity),
    /// tailscaled answered that no tailnet node has this address (e.g. loopback).
    NotOnTailnet,
    /// tailscaled could not be asked.
    Unavailable(String),
}

/// The parts of `apitype.WhoIsResponse` used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WhoIsResponse {
    node: Option<Node>,
    user_profile: Option<UserProfile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    /// The MagicDNS FQDN with a trailing dot, `laptop.tail1234.ts.net.`.
    name: String,
    /// The short name, when the tailnet computed one.
    #[serde(default)]
    computed_name: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UserProfile {
    login_name: String,
}

/// A client of tailscaled's LocalAPI.
#[derive(Debug)]
pub struct LocalApi {
    socket: PathBuf,
    /// "Not reachable" was logged (once, until it is reachable again).
    said_unreachable: AtomicBool,
}

impl LocalApi {
    pub fn new(socket: PathBuf) -> Self {
        LocalApi {
            socket,
            said_unreachable: AtomicBool::new(false),
        }
    }

    /// Whether tailscaled answers (a whois of an address no node has; a missing socket
    /// is logged once, as for any whois).
    pub async fn reachable(&self) -> bool {
        let nobody = SocketAddr::from(([127, 0, 0, 1], 1));
        !matches!(self.whois(nobody).await, Whois::Unavailable(_))
    }

    /// Asks who is behind `peer`.
    pub async fn whois(&self, peer: SocketAddr) -> Whois {
        let target = format!("/localapi/v0/whois?addr={peer}");
        let answer = match tokio::time::timeout(WHOIS_TIMEOUT, self.get(&target)).await {
            Ok(a) => a,
            Err(_) => Err(format!("no answer within {WHOIS_TIMEOUT:?}")),
        };
        let whois = match answer {
            Ok((StatusCode::OK, body)) => match parse(&body) {
                Some(id) => Whois::Known(id),
                None => Whois::Unavailable("a whois answer without node or user".to_owned()),
            },
            Ok((StatusCode::NOT_FOUND, _)) => Whois::NotOnTailnet,
            Ok((status, body)) => Whois::Unavailable(format!(
                "whois answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )),
            Err(e) => Whois::Unavailable(e),
        };
        self.note_reachability(&whois);
        whois
    }

    /// Logs once that identities come from headers alone, and once that they come from
    /// the tailnet again.
    fn note_reachability(&self, whois: &Whois) {
        match whois {
            Whois::Unavailable(why) => {
                if !self.said_unreachable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "tailscaled's LocalAPI at {} cannot be asked ({why}): callers are \
                         known by the headers they send only, and an [api] allow list admits \
                         only `local` callers",
                        self.socket.display()
                    );
                }
            }
            _ => {
                if self.said_unreachable.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "tailscaled's LocalAPI at {} answers again: callers are identified \
                         by the tailnet",
                        self.socket.display()
                    );
                }
            }
        }
    }

    /// One GET on a fresh connection to the socket: status and body.
    async fn get(&self, target: &str) -> Result<(StatusCode, bytes::Bytes), String> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = Request::get(target)
            .header(header::HOST, LOCALAPI_HOST)
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let result = async {
            let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        }
        .await;
        conn.abort();
        result
    }
}

/// The identity in a whois answer.
fn parse(body: &[u8]) -> Option<TailnetIdentity> {
    let r: WhoIsResponse = serde_json::from_slice(body).ok()?;
    let node = r.node?;
    let short = node
        .computed_name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| node.name.split('.').next().unwrap_or("").to_owned());
    Some(TailnetIdentity {
        node: short,
        user: r.user_profile?.login_name,
        tags: node.tags.unwrap_or_default(),
    })
}

/// `[api] allow`: who may trigger and cancel.
#[derive(Debug, Clone)]
pub struct Allow {
    entries: Vec<AllowEntry>,
}

impl Allow {
    pub fn new(entries: Vec<AllowEntry>) -> Self {
        Allow { entries }
    }

    /// Whether anything is checked at all (an empty list admits everyone).
    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a caller from `peer`, known to the tailnet as `who`, is admitted.
    pub fn admits(&self, peer: SocketAddr, who: Option<&TailnetIdentity>) -> bool {
        self.is_open()
            || self.entries.iter().any(|e| match (e, who) {
                (AllowEntry::Local, _) => peer.ip().is_loopback(),
                (AllowEntry::User(u), Some(w)) => w.user.eq_ignore_ascii_case(u),
                (AllowEntry::Node(n), Some(w)) => w.node.eq_ignore_ascii_case(n),
                (AllowEntry::Tag(t), Some(w)) => w.tags.iter().any(|x| x == t),
                (_, None) => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As tailscaled writes it (fields trimmed), for a user's node and a tagged one.
    const USER_NODE: &str = r#"{
        "Node": {"ID": 1, "Name": "laptop.tail1234.ts.net.", "ComputedName": "laptop",
                 "Addresses": ["100.64.0.2/32"]},
        "UserProfile": {"ID": 7, "LoginName": "alice@example.com", "DisplayName": "Alice"},
        "CapMap": null
    }"#;
    const TAGGED_NODE: &str = r#"{
        "Node": {"Name": "ci-runner.tail1234.ts.net.", "Tags": ["tag:ci"]},
        "UserProfile": {"LoginName": "tagged-devices", "DisplayName": "Tagged Devices"}
    }"#;

    #[test]
    fn whois_answers_parse() {
        assert_eq!(
            parse(USER_NODE.as_bytes()),
            Some(TailnetIdentity {
                node: "laptop".into(),
                user: "alice@example.com".into(),
                tags: vec![],
            })
        );
        let tagged = parse(TAGGED_NODE.as_bytes()).unwrap();
        assert_eq!(tagged.node, "ci-runner");
        assert_eq!(tagged.tags, ["tag:ci"]);
        assert_eq!(parse(b"{}"), None);
        assert_eq!(parse(b"not json"), None);
    }

    #[test]
    fn allow_matches_users_nodes_tags_and_local() {
        let peer: SocketAddr = "100.64.0.2:1234".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:1234".parse().unwrap();
        let alice = parse(USER_NODE.as_bytes()).unwrap();
        let ci = parse(TAGGED_NODE.as_bytes()).unwrap();
        let allow = |e: &[&str]| {
            Allow::new(
                e.iter()
                    .map(|s| AllowEntry::try_from((*s).to_owned()).unwrap())
                    .collect(),
            )
        };
        assert!(allow(&[]).admits(peer, None));
        assert!(allow(&["user:Alice@example.com"]).admits(peer, Some(&alice)));
        assert!(!allow(&["user:bob@example.com"]).admits(peer, Some(&alice)));
        assert!(allow(&["node:laptop"]).admits(peer, Some(&alice)));
        assert!(allow(&["tag:ci"]).admits(peer, Some(&ci)));
        assert!(!allow(&["tag:ci"]).admits(peer, Some(&alice)));
        assert!(!allow(&["user:alice@example.com"]).admits(peer, None));
        assert!(allow(&["local"]).admits(local, None));
        assert!(!allow(&["local"]).admits(peer, Some(&alice)));
    }
}
