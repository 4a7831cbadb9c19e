//! `[limits]`: the protocol's limits (what one connection, stream, frame and batch may be) and
//! the timeouts of a connection's life.
//!
//! Owns: the section's keys, defaults and checks. Must never: enforce them (the QUIC transport,
//! the session and the data plane's judge do).

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most connections held at once; beyond it new connections are refused before the TLS
    /// handshake. Default 10,000.
    pub max_connections: usize,
    /// Data streams one connection may have open at once. Default 4.
    pub max_data_streams: u32,
    /// Largest data frame accepted (bytes, length prefix excluded). Default 1 MiB.
    pub max_frame_bytes: u32,
    /// Most records in one batch. Default 10,000.
    pub max_records_per_batch: u32,
    /// Most batches a meter may have unsettled per data stream. Default 32.
    pub max_unacked_batches: u32,
    /// Longest string or bytes field in a record (interface name). Default 64.
    pub max_field_bytes: u32,
    /// Time allowed for the QUIC/TLS handshake. Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Time a new connection has to send `Hello`. Default 5 s.
    pub hello_timeout_ms: u64,
    /// A connection with no traffic for this long is closed (QUIC takes the lower of this and
    /// the meter's 60 s). Default 60 s: three of the meters' 20 s keep-alives.
    pub idle_timeout_ms: u64,
    /// Heartbeat interval suggested to meters in `Welcome`; 0 (the default): no heartbeats, the
    /// QUIC keep-alive alone keeps an idle session (and its NAT mapping) alive.
    pub heartbeat_interval_ms: u32,
    /// Batch size and age suggested to meters in `Welcome`. Defaults 1,000 records, 1 s.
    pub batch_hint_records: u32,
    pub batch_hint_max_age_ms: u32,
    /// Per-stream QUIC receive window: what one data stream can make us buffer. Default 1.25 MiB
    /// (one maximum frame and change).
    pub stream_receive_window: u32,
    /// Let meters that can send their batches' records as columns (`Hello.columns`) do so.
    /// Default true; false: every meter sends rows.
    pub columns: bool,
    /// The zstd level meters are asked to compress columns at (0: not compressed, up to 19).
    /// Default 1.
    pub columns_zstd_level: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_data_streams: 4,
            // The protocol's default frame limit, shared with the meter.
            max_frame_bytes: ringflow_proto::frame::DEFAULT_MAX_FRAME_BYTES as u32,
            max_records_per_batch: 10_000,
            max_unacked_batches: 32,
            // An interface name is at most 15 bytes on Linux; 64 leaves room elsewhere.
            max_field_bytes: 64,
            handshake_timeout_ms: 10_000,
            hello_timeout_ms: 5_000,
            // Three of the meters' keep-alives: a live meter is never idle this long.
            idle_timeout_ms: 60_000,
            // The keep-alive already proves the path; a heartbeat would only wake both sides.
            heartbeat_interval_ms: 0,
            batch_hint_records: 1_000,
            batch_hint_max_age_ms: 1_000,
            // One maximum frame (1 MiB) and a quarter more, so a full frame always fits.
            stream_receive_window: 1_310_720,
            columns: true,
            // Level 1: flow records compress as well as at zstd's default 3 (4.5 bytes a record
            // either way) at less of the meter's CPU (71 against 79 ns a record, columns
            // included; rows take 72).
            columns_zstd_level: ringflow_proto::columns::DEFAULT_ZSTD_LEVEL as u32,
        }
    }
}

impl LimitsConfig {
    /// Checks `[limits]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("limits.max_connections", self.max_connections as u64, 1, 1 << 20)?;
        check_range("limits.max_data_streams", self.max_data_streams.into(), 1, 64)?;
        check_range(
            "limits.max_frame_bytes",
            self.max_frame_bytes.into(),
            1024,
            16 << 20,
        )?;
        check_range(
            "limits.max_records_per_batch",
            self.max_records_per_batch.into(),
            1,
            1 << 20,
        )?;
        check_range(
            "limits.max_unacked_batches",
            self.max_unacked_batches.into(),
            1,
            4096,
        )?;
        check_range("limits.max_field_bytes", self.max_field_bytes.into(), 16, 4096)?;
        check_range(
            "limits.handshake_timeout_ms",
            self.handshake_timeout_ms,
            100,
            600_000,
        )?;
        check_range("limits.hello_timeout_ms", self.hello_timeout_ms, 100, 600_000)?;
        check_range("limits.idle_timeout_ms", self.idle_timeout_ms, 1_000, 3_600_000)?;
        check_range("limits.columns_zstd_level", self.columns_zstd_level.into(), 0, 19)?;
        let frame_and_prefix = u64::from(self.max_frame_bytes) + 4;
        if u64::from(self.stream_receive_window) < frame_and_prefix {
            return Err(ConfigError::invalid(
                "limits.stream_receive_window",
                format!(
                    "must be at least limits.max_frame_bytes + 4 ({frame_and_prefix}), or a full frame could never arrive"
                ),
            ));
        }
        Ok(())
    }
}
