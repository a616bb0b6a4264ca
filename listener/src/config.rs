//! A listener's connection settings (`[cache.connections]`, `[api.connections]` of the
//! server, `[agent.connections]` of the agent): one type with its defaults and its checks,
//! so every listener is configured and refused alike.

use serde::Deserialize;

/// How many connections one listener serves and how long it waits for their clients
/// (`[cache.connections]`, `[api.connections]`, `[agent.connections]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// Connections served at once. At the limit, a new connection makes the server close
    /// the connection that has been idle the longest; with none idle it waits. Unset:
    /// derived from the file descriptor limit (so descriptors never run out first), at most
    /// [`ConnectionConfig::DEFAULT_MAX`].
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a whole request head once its first byte arrived
    /// (slowloris clients are closed after this).
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight: before its first
    /// byte, and between requests on a kept-alive connection.
    pub idle_timeout_secs: u64,
    /// Seconds a response may wait for its client to take more bytes; a reader that
    /// stalls longer is disconnected.
    pub send_timeout_secs: u64,
}

/// Why a [`ConnectionConfig`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "limits and timeouts must be at least 1, and max_connections at most {}",
    ConnectionConfig::MAX
)]
pub struct InvalidConnectionConfig;

impl ConnectionConfig {
    /// Upper bound of the derived connection limit: far above what a tailnet's machines
    /// open (Nix uses up to 25 connections per client), and an idle connection costs ~10 KiB.
    pub const DEFAULT_MAX: usize = 1024;
    /// The most `max_connections` may be set to.
    pub const MAX: usize = 1 << 20;

    /// Refuses a zero limit or timeout (a listener that serves nothing, or closes every
    /// connection at once) and a limit beyond [`ConnectionConfig::MAX`].
    pub fn validate(&self) -> Result<(), InvalidConnectionConfig> {
        if self.max_connections == Some(0)
            || self.max_connections > Some(Self::MAX)
            || self.header_read_timeout_secs == 0
            || self.idle_timeout_secs == 0
            || self.send_timeout_secs == 0
        {
            return Err(InvalidConnectionConfig);
        }
        Ok(())
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_connections: None,
            header_read_timeout_secs: 15,
            idle_timeout_secs: 60,
            send_timeout_secs: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_oversized_settings_are_refused() {
        assert_eq!(ConnectionConfig::default().validate(), Ok(()));
        let parse = |text: &str| toml::from_str::<ConnectionConfig>(text).unwrap();
        for bad in [
            "max_connections = 0",
            "max_connections = 1048577",
            "header_read_timeout_secs = 0",
            "idle_timeout_secs = 0",
            "send_timeout_secs = 0",
        ] {
            assert_eq!(parse(bad).validate(), Err(InvalidConnectionConfig), "{bad}");
        }
        let ok = parse("max_connections = 1048576\nidle_timeout_secs = 1");
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.header_read_timeout_secs, 15);
        assert!(toml::from_str::<ConnectionConfig>("idle_timeout = 5").is_err());
    }
}
