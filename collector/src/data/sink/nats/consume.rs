//! Reading the stream back: what `collector read --config` prints for a NATS sink, and what the
//! tests check delivery with. An ordered consumer (ephemeral, no acks): reading changes nothing
//! in the stream.

use std::ops::ControlFlow;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures_util::StreamExt;
use ringflow_proto::pb;

use super::config::NatsSinkConfig;
use super::link;
use super::stream::{HEADER_SCHEMA, subject};

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error("no NATS server of sink.nats.servers {servers:?} answered within {timeout:?}")]
    Unreachable { servers: Vec<String>, timeout: Duration },
    #[error("cannot open stream {stream:?}: {error} (is sink.nats.stream right?)")]
    Stream { stream: String, error: String },
    #[error("reading stream {stream:?} failed: {error}")]
    Read { stream: String, error: String },
}

/// One message of the stream.
#[derive(Debug)]
pub struct StreamedBatch {
    /// Position in the stream.
    pub stream_seq: u64,
    pub subject: String,
    /// `Nats-Msg-Id` (`ORG:METER_ID:SEQ`).
    pub message_id: Option<String>,
    pub batch: Result<pb::StoredBatch, String>,
}

/// Calls `each` for every message (of `org`, or of all orgs) in the stream, oldest first. Stops
/// when the stream has been read to its end (unless `follow`) or when `each` says so.
pub async fn read_stream(
    config: &NatsSinkConfig,
    org: Option<&str>,
    follow: bool,
    mut each: impl FnMut(StreamedBatch) -> ControlFlow<()>,
) -> Result<(), ConsumeError> {
    let link = link::start(config, "reader").await?;
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    if !link.wait_connected(timeout).await {
        return Err(ConsumeError::Unreachable {
            servers: link::loggable_servers(&config.servers),
            timeout,
        });
    }
    let stream_err = |error: &dyn std::fmt::Display| ConsumeError::Stream {
        stream: config.stream.clone(),
        error: error.to_string(),
    };
    let stream = link
        .js
        .get_stream(&config.stream)
        .await
        .map_err(|e| stream_err(&e))?;
    let filter = match org {
        Some(org) => subject(&config.subject_prefix, org),
        None => format!("{}.>", config.subject_prefix),
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            ..Default::default()
        })
        .await
        .map_err(|e| stream_err(&e))?;
    if !follow && consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let read_err = |error: &dyn std::fmt::Display| ConsumeError::Read {
        stream: config.stream.clone(),
        error: error.to_string(),
    };
    let mut messages = consumer.messages().await.map_err(|e| read_err(&e))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| read_err(&e))?;
        let info = message.info().map_err(|e| read_err(&e))?;
        let (stream_seq, pending) = (info.stream_sequence, info.pending);
        let headers = message.headers.as_ref();
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        let batch = match header(HEADER_SCHEMA).as_deref() {
            Some(v) if ringflow_proto::reads_stored_schema(v) => {
                ringflow_proto::columns::read_stored(message.payload.clone())
            }
            other => Err(format!(
                "not a ringflow batch of schema 1 or 2 (Ringflow-Schema header: {other:?})"
            )),
        };
        let streamed = StreamedBatch {
            stream_seq,
            subject: message.subject.to_string(),
            message_id: header(async_nats::header::NATS_MESSAGE_ID.as_ref()),
            batch,
        };
        if each(streamed).is_break() || (!follow && pending == 0) {
            break;
        }
    }
    Ok(())
}
