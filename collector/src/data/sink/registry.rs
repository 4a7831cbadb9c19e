//! The one list of sinks. Each sink is a folder beside `file/`, `nats/` and `kafka/` that owns
//! its `[sink.<name>]` table (`config.rs`), its opening and its read-back (`consume.rs`), and
//! gives them to the registry through one [`SinkEntry`] (`entry.rs`). Adding a sink is that
//! folder, its `pub mod` line in `sink/mod.rs` (Rust compiles only the modules it is told of),
//! and one line in `sinks!` below. From that list come the `sink.kind` values ([`SinkKind`]), the
//! `[sink]` section ([`SinkConfig`]), opening the configured sink ([`open_sink`]) and reading it
//! back ([`read_back`], for `collector read --config`).
//!
//! Must never: run on the data path (it opens the sink once, before the collector serves), or
//! import the top-level config (which holds [`SinkConfig`]): what a sink needs from outside its
//! table comes in a [`SinkSite`].

use std::ops::ControlFlow;
use std::path::PathBuf;

use ringflow_ops::{ConfigError, check_range};
use serde::Deserialize;

pub use super::entry::{Found, OpenError, Opened, ReadError, SinkEntry, SinkSite};

sinks! {
    /// Per-org segment files in `data_dir` (the default).
    File file => super::file::FileEntry,
    /// A NATS JetStream stream, for a fleet.
    Nats nats => super::nats::NatsEntry,
    /// A Kafka topic (or one per org), for a fleet.
    Kafka kafka => super::kafka::KafkaEntry,
}

/// `sink.kind` when unset: local files need nothing else running.
const DEFAULT_KIND: SinkKind = SinkKind::File;
/// `sink.queue_batches` when unset: the queue is bounded by count as well as by bytes.
const DEFAULT_QUEUE_BATCHES: usize = 4_096;
/// `sink.queue_bytes` when unset: 64 frames of the default 1 MiB, what the queue absorbs while
/// the sink syncs or waits on acks.
const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

impl SinkConfig {
    /// Checks `[sink]` and every sink's table; `max_frame_bytes` is `limits.max_frame_bytes`,
    /// which one queued batch may take.
    pub fn validate(&self, max_frame_bytes: u32) -> Result<(), ConfigError> {
        check_range("sink.queue_batches", self.queue_batches as u64, 1, 1 << 20)?;
        if (self.queue_bytes as u64) < u64::from(max_frame_bytes) {
            return Err(ConfigError::invalid(
                "sink.queue_bytes",
                "must be at least limits.max_frame_bytes, or one full batch could never be queued",
            ));
        }
        self.validate_tables()
    }
}

/// Makes, from the list of sinks, [`SinkKind`], [`SinkConfig`] with one table per sink, and
/// the dispatch of [`open_sink`] and [`read_back`] to the configured sink's entry. Each line is
/// `Variant table => entry type`: the variant's kebab-case name is its `sink.kind` value and
/// `table` its `[sink.<table>]`.
macro_rules! sinks {
    ($( $(#[doc = $doc:literal])* $kind:ident $table:ident => $entry:ty ),+ $(,)?) => {
        /// Which sink stores accepted batches (`sink.kind`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum SinkKind {
            $( $(#[doc = $doc])* $kind, )+
        }

        /// `[sink]`: which sink stores batches, the queue in front of it, and every sink's table.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct SinkConfig {
            /// Which sink stores accepted batches: `file` (default), `nats` or `kafka`.
            pub kind: SinkKind,
            /// Batches waiting for the sink across all connections. When full, data streams stop
            /// reading (QUIC flow control pushes back to meters). Default 4,096.
            pub queue_batches: usize,
            /// Bytes waiting for the sink across all connections. Default 64 MiB.
            pub queue_bytes: usize,
            $(
                #[doc = concat!("`[sink.", stringify!($table), "]`.")]
                pub $table: <$entry as SinkEntry>::Config,
            )+
        }

        impl Default for SinkConfig {
            fn default() -> Self {
                Self {
                    kind: DEFAULT_KIND,
                    queue_batches: DEFAULT_QUEUE_BATCHES,
                    queue_bytes: DEFAULT_QUEUE_BYTES,
                    $( $table: Default::default(), )+
                }
            }
        }

        impl SinkConfig {
            fn validate_tables(&self) -> Result<(), ConfigError> {
                $( <$entry as SinkEntry>::validate(&self.$table)?; )+
                Ok(())
            }

            /// The files every sink's table names, to resolve against the config file's
            /// directory.
            pub fn paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
                let mut paths = Vec::new();
                $( paths.extend(<$entry as SinkEntry>::paths_mut(&mut self.$table)); )+
                paths.into_iter()
            }
        }

        /// Opens the configured sink, with the store's recovery report (file) and the largest
        /// data frame the sink can take.
        pub async fn open_sink(config: &SinkConfig, site: &SinkSite) -> Result<Opened, OpenError> {
            match config.kind {
                $( SinkKind::$kind => <$entry as SinkEntry>::open(&config.$table, site).await, )+
            }
        }

        /// Reads the configured sink back (what `collector read --config` prints): every
        /// stored batch (of `org`, or of all orgs) to `found`, oldest first; with `follow`, new
        /// ones as they come. Blocking: it runs on the caller's thread.
        pub fn read_back(
            config: &SinkConfig,
            site: &SinkSite,
            org: Option<&str>,
            follow: bool,
            found: &mut dyn FnMut(Found<'_>) -> ControlFlow<()>,
        ) -> Result<(), ReadError> {
            match config.kind {
                $( SinkKind::$kind => {
                    <$entry as SinkEntry>::read_back(&config.$table, site, org, follow, found)
                } )+
            }
        }
    };
}
use sinks;
