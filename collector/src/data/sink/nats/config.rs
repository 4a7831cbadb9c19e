//! `[sink.nats]`: the NATS JetStream sink's keys, defaults and checks (see docs/sinks.md, "A
//! collector fleet on NATS JetStream").
//!
//! Owns: what an operator may set, and how its credentials stay out of every printout
//! ([`Secret`], and [`loggable_servers`] for a URL with a password in it). Must never: talk to
//! a server.

use std::path::PathBuf;

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

/// A secret from the config file (a token or a password): never printed, not even by `{:?}`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, message)
}

/// The NATS JetStream sink: where the fleet's collectors forward batches (see docs/sinks.md,
/// "A collector fleet on NATS JetStream").
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSinkConfig {
    /// NATS server URLs (`nats://host:port`, `tls://host:port`); the client fails over between
    /// them and learns the rest of the cluster from the servers. Default `nats://127.0.0.1:4222`.
    pub servers: Vec<String>,
    /// Credentials: at most one of `token`, `user` + `password`, `creds_file` (a `.creds` file
    /// with a JWT and NKey seed). Default: none.
    pub token: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub creds_file: Option<PathBuf>,
    /// PEM CA that signs the NATS servers' certificates; setting it requires TLS. Default: none
    /// (plain connections unless a `tls://` URL is given, then the system roots).
    pub ca_file: Option<PathBuf>,
    /// JetStream stream the batches go to; created if missing. Default `RINGFLOW`.
    pub stream: String,
    /// Batches of org ORG are published on subject `PREFIX.ORG`; the stream holds `PREFIX.>`.
    /// Default `ringflow.flows`.
    pub subject_prefix: String,
    /// Stream limits used when the collector creates the stream: oldest messages are removed
    /// after `max_age_ms` (0: kept until `max_bytes`), or once the stream holds `max_bytes`
    /// (0: no limit of its own; the server's JetStream storage limit applies). Defaults 7 days, 0.
    pub max_age_ms: u64,
    pub max_bytes: u64,
    /// Copies of each message in a clustered JetStream (1-5). Default 1.
    pub replicas: u32,
    /// JetStream drops a message whose `Nats-Msg-Id` (`ORG:METER_ID:SEQ`) it has seen within this
    /// window: a batch re-sent after a collector failover is stored once. The stream must have at
    /// least this window. Default 2 min.
    pub duplicate_window_ms: u64,
    /// Publishes awaiting their JetStream ack at once (pipelining). Default 256.
    pub max_in_flight: usize,
    /// A publish not acked within this is retried (same `Nats-Msg-Id`, so never stored twice
    /// within the window). Default 5 s.
    pub publish_timeout_ms: u64,
    /// Time allowed for one connection attempt. Default 5 s.
    pub connect_timeout_ms: u64,
}

impl Default for NatsSinkConfig {
    fn default() -> Self {
        Self {
            // A NATS server beside the collector, on its standard port.
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            token: None,
            user: None,
            password: None,
            creds_file: None,
            ca_file: None,
            stream: "RINGFLOW".to_owned(),
            subject_prefix: "ringflow.flows".to_owned(),
            // A week of history for a consumer that falls behind or replays.
            max_age_ms: 7 * 24 * 3_600_000,
            max_bytes: 0,
            replicas: 1,
            // JetStream's own default window.
            duplicate_window_ms: 120_000,
            max_in_flight: 256,
            publish_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
        }
    }
}

/// Written out by hand so that no secret, and no credential inside a server URL, is printed.
impl std::fmt::Debug for NatsSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSinkConfig")
            .field("servers", &loggable_servers(&self.servers))
            .field("token", &self.token)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("creds_file", &self.creds_file)
            .field("ca_file", &self.ca_file)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("max_age_ms", &self.max_age_ms)
            .field("max_bytes", &self.max_bytes)
            .field("replicas", &self.replicas)
            .field("duplicate_window_ms", &self.duplicate_window_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("publish_timeout_ms", &self.publish_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

impl NatsSinkConfig {
    /// Checks every key of `[sink.nats]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_servers()?;
        self.check_credentials()?;
        self.check_names()?;
        check_range("sink.nats.replicas", self.replicas.into(), 1, 5)?;
        check_range(
            "sink.nats.duplicate_window_ms",
            self.duplicate_window_ms,
            1_000,
            7 * 24 * 3_600_000,
        )?;
        if self.max_age_ms != 0 && self.max_age_ms < self.duplicate_window_ms {
            return Err(invalid(
                "sink.nats.max_age_ms",
                "must be 0 (no age limit) or at least sink.nats.duplicate_window_ms",
            ));
        }
        check_range("sink.nats.max_in_flight", self.max_in_flight as u64, 1, 4_096)?;
        check_range(
            "sink.nats.publish_timeout_ms",
            self.publish_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            "sink.nats.connect_timeout_ms",
            self.connect_timeout_ms,
            100,
            600_000,
        )?;
        Ok(())
    }

    /// The files this table names (resolved against the config file's directory).
    pub fn paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        self.creds_file.iter_mut().chain(self.ca_file.iter_mut())
    }

    /// At least one server, each a NATS URL (shown without its credentials when it is not).
    fn check_servers(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(invalid("sink.nats.servers", "lists no server"));
        }
        for (i, (url, shown)) in self
            .servers
            .iter()
            .zip(loggable_servers(&self.servers))
            .enumerate()
        {
            if url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(invalid(
                    format!("sink.nats.servers[{i}]"),
                    format!("{shown:?} is not a NATS URL (e.g. \"nats://10.0.0.5:4222\")"),
                ));
            }
        }
        Ok(())
    }

    /// At most one way to authenticate, and a user with its password.
    fn check_credentials(&self) -> Result<(), ConfigError> {
        let credentials = [
            self.token.is_some(),
            self.user.is_some(),
            self.creds_file.is_some(),
        ];
        if credentials.iter().filter(|c| **c).count() > 1 {
            return Err(invalid(
                "sink.nats",
                "set at most one of token, user (with password) and creds_file",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid("sink.nats.password", "user and password go together"));
        }
        Ok(())
    }

    /// The stream's name and the subjects' prefix are ones JetStream takes.
    fn check_names(&self) -> Result<(), ConfigError> {
        if !valid_stream_name(&self.stream) {
            return Err(invalid(
                "sink.nats.stream",
                format!(
                    "{:?} is not a JetStream stream name: 1-64 characters, no spaces, '.', '*', '>', '/' or '\\'",
                    self.stream
                ),
            ));
        }
        if !valid_subject_prefix(&self.subject_prefix) {
            return Err(invalid(
                "sink.nats.subject_prefix",
                format!(
                    "{:?} is not a subject prefix: dot-separated tokens of letters, digits, '-' and '_' (e.g. \"ringflow.flows\")",
                    self.subject_prefix
                ),
            ));
        }
        Ok(())
    }
}

fn valid_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

fn valid_subject_prefix(prefix: &str) -> bool {
    prefix.len() <= 128
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `servers` as they may be logged: any `user:password@` part of a URL is masked.
pub fn loggable_servers(servers: &[String]) -> Vec<String> {
    servers
        .iter()
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            (None, Some(at)) => format!("***{}", &url[at..]),
            _ => url.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_masked_for_logs() {
        let servers = [
            "nats://alice:s3cret@10.0.0.1:4222".to_owned(),
            "tok3n@10.0.0.2:4222".to_owned(),
            "nats://10.0.0.3:4222".to_owned(),
        ];
        assert_eq!(
            loggable_servers(&servers),
            [
                "nats://***@10.0.0.1:4222",
                "***@10.0.0.2:4222",
                "nats://10.0.0.3:4222"
            ]
        );
    }
}
