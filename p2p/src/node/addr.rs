//! Addresses as configuration names them: where a node listens by default, and a peer's
//! full address `<multiaddr>/p2p/<peer id>` (what the server prints for its tracker and an
//! agent is configured with).

use std::fmt;
use std::str::FromStr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Where a node listens unless configured otherwise: QUIC and TCP on loopback, any port.
/// Nothing is reachable from other machines until an address of the tailnet is configured.
pub fn loopback_listen_addrs() -> Vec<Multiaddr> {
    ["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// A peer and one address to reach it at: `<multiaddr>/p2p/<peer id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub peer: PeerId,
    pub addr: Multiaddr,
}

/// Why a string is not a [`PeerAddr`].
#[derive(Debug, thiserror::Error)]
pub enum PeerAddrError {
    #[error("invalid multiaddr {input:?}: {reason}")]
    Multiaddr { input: String, reason: String },
    #[error("{input:?} does not end in /p2p/<peer id>")]
    NoPeerId { input: String },
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, PeerAddrError> {
        let mut addr: Multiaddr =
            s.parse()
                .map_err(|e: libp2p::multiaddr::Error| PeerAddrError::Multiaddr {
                    input: s.to_owned(),
                    reason: e.to_string(),
                })?;
        match addr.pop() {
            Some(Protocol::P2p(peer)) => Ok(PeerAddr { peer, addr }),
            _ => Err(PeerAddrError::NoPeerId {
                input: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr.clone().with(Protocol::P2p(self.peer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_need_a_peer_id() {
        let peer = PeerId::random();
        let text = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}");
        let a: PeerAddr = text.parse().unwrap();
        assert_eq!(a.peer, peer);
        assert_eq!(a.addr.to_string(), "/ip4/127.0.0.1/tcp/4001");
        assert_eq!(a.to_string(), text);
        assert!(matches!(
            "/ip4/127.0.0.1/tcp/4001".parse::<PeerAddr>(),
            Err(PeerAddrError::NoPeerId { .. })
        ));
        assert!(matches!(
            "not a multiaddr".parse::<PeerAddr>(),
            Err(PeerAddrError::Multiaddr { .. })
        ));
        assert!(
            loopback_listen_addrs()
                .iter()
                .all(|a| a.to_string().starts_with("/ip4/127.0.0.1/"))
        );
    }
}
