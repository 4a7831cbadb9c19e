//! What a sink folder gives the registry ([`super::registry`]): one [`SinkEntry`] saying what
//! its `[sink.<name>]` table is, how to check it, how to open the sink and how to read it back,
//! and the types those speak: [`SinkSite`] (what a sink gets from outside its table), [`Opened`],
//! [`OpenError`], [`Found`] and [`ReadError`].
//!
//! Must never: list the sinks (the registry does), or import the top-level config.

use std::fmt::Debug;
use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;

use ringflow_ops::ConfigError;
use ringflow_proto::pb;
use serde::de::DeserializeOwned;

use super::ConfiguredSink;
use super::file::store::RecoveryReport;

/// What a sink folder gives the registry: its table, how to check it, open the sink and read it
/// back.
pub trait SinkEntry {
    /// The sink's `[sink.<name>]` table; its `Default` is every key at its default.
    type Config: Clone + Debug + Default + DeserializeOwned;

    /// Checks the table (every error names its key, `sink.<name>.<key>`). Runs for every sink's
    /// table, configured or not.
    fn validate(config: &Self::Config) -> Result<(), ConfigError>;

    /// The files the table names, resolved against the config file's directory at load.
    fn paths_mut(_config: &mut Self::Config) -> Vec<&mut PathBuf> {
        Vec::new()
    }

    /// Opens the sink (connecting or recovering as it must), once, before the collector serves.
    fn open(config: &Self::Config, site: &SinkSite)
    -> impl Future<Output = Result<Opened, OpenError>> + Send;

    /// Hands every stored batch (of `org`, or of all orgs) to `found`, oldest first; with
    /// `follow`, keeps waiting for new ones. Stops when `found` breaks.
    fn read_back(
        config: &Self::Config,
        site: &SinkSite,
        org: Option<&str>,
        follow: bool,
        found: &mut dyn FnMut(Found<'_>) -> ControlFlow<()>,
    ) -> Result<(), ReadError>;
}

/// What a sink is opened (or read back) with besides its own table.
#[derive(Debug, Clone)]
pub struct SinkSite {
    /// `data_dir`: the file sink's store; the endpoint keys of every collector live there too.
    pub data_dir: PathBuf,
    /// The collector's id, which remote sinks name their client after.
    pub collector_id: String,
    /// `limits.max_frame_bytes`: a sink may lower it so that every batch fits one message.
    pub max_frame_bytes: u32,
}

impl SinkSite {
    /// Creates `data_dir` for a sink that keeps no store there (the endpoint keys still do).
    pub fn create_data_dir(&self) -> Result<(), OpenError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|source| OpenError::DataDir {
            path: self.data_dir.clone(),
            source,
        })
    }
}

/// An opened sink: the sink, the store's recovery report (file; empty for the others) and the
/// largest data frame the sink can take.
pub type Opened = (ConfiguredSink, RecoveryReport, u32);

/// Why the configured sink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The sink refused to open: `what` says which (e.g. "cannot use the NATS sink").
    #[error("{what}: {error}")]
    Sink {
        what: &'static str,
        #[source]
        error: Box<dyn std::error::Error + Send + Sync>,
        /// Whether the operator's configuration is at fault (exit code 64).
        config_fault: bool,
    },
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl OpenError {
    /// True when the operator's configuration is at fault (exit code 64).
    pub fn is_config(&self) -> bool {
        match self {
            OpenError::Config(_) => true,
            OpenError::Sink { config_fault, .. } => *config_fault,
            OpenError::DataDir { .. } => false,
        }
    }
}

/// What a sink's read-back finds, handed over one at a time.
#[derive(Debug)]
pub enum Found<'a> {
    /// A stored batch.
    Batch(&'a pb::StoredBatch),
    /// Something the reader is told, reading on: a message that is not a readable batch, records
    /// deleted by retention before they could be read, a damaged segment.
    Problem(String),
}

/// Why a sink could not be read back: the sink's own error, shown as it is.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReadError(Box<dyn std::error::Error + Send + Sync>);

impl ReadError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ReadError(error.into())
    }
}
