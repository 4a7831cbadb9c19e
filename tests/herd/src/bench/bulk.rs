//! Bulk transfer of one workload of framed batches: over a bare quinn stream (the ceiling), and
//! over a ringflow session into a collector, acks on.
//!
//! Owns: the workload (the synthetic source's records in 1,000-record batches, framed as a data
//! stream carries them), the raw quinn server and sender, the windowed ringflow sender. Must
//! never: decide what the figures mean (the report does).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use quinn::{Endpoint, TokioRuntime};
use ringflow_meter::source::synthetic::FlowAddresses;
use ringflow_proto::frame::{self, FrameReader, MAX_CONTROL_FRAME_BYTES};
use ringflow_proto::{pb, quic};
use tokio::time::Instant;

use ringflow_tests::TestBed;
use ringflow_tests::raw::{RawHello, RawSession, batch_frame};

/// Records per batch: the meter's default `batch.max_records`.
pub const RECORDS_PER_BATCH: usize = 1_000;
/// Distinct flows the records cycle through: the synthetic source's default.
pub const FLOWS: u32 = 100;

/// Framed batches of synthetic records, seqs 1, 2, ...
pub struct Workload {
    pub frames: Vec<Bytes>,
    pub records: u64,
    pub bytes: u64,
    pub form: Form,
}

impl Workload {
    /// Every record of a row workload, decoded from its frames (for senders of other
    /// protocols, such as nfcapd's NetFlow v5).
    pub fn records(&self) -> anyhow::Result<Vec<pb::FlowRecord>> {
        anyhow::ensure!(self.form == Form::Rows, "records are read from the row form");
        let mut out = Vec::with_capacity(self.records as usize);
        for frame in &self.frames {
            let Some(pb::data_up::Msg::Batch(batch)) = decode_frame(frame)?.msg else {
                anyhow::bail!("a workload frame holds no batch");
            };
            out.extend(batch.records);
        }
        Ok(out)
    }
}

/// How a workload's batches carry their records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// One protobuf message per record (`FlowBatch.records`).
    Rows,
    /// Columns compressed at the collectors' default zstd level (`FlowBatch.columns`), as a
    /// meter seals them by default.
    Columns,
}

impl Form {
    /// The meter's `batch.columns` for this form.
    pub fn meter_columns(self) -> bool {
        self == Form::Columns
    }

    /// Records a meter with the default `[batch]` seals into a batch of this form at full
    /// speed: `batch.max_records` rows, `batch.columns_max_records` as columns.
    pub fn records_per_batch(self) -> usize {
        let defaults = ringflow_meter::config::BatchConfig::default();
        match self {
            Form::Rows => defaults.max_records,
            Form::Columns => defaults.columns_max_records,
        }
    }
}

/// The first `records` records of the synthetic source (rounded up to whole batches, as large as
/// a default meter seals in `form`), as data frames in `form`.
pub fn workload(records: u64, form: Form) -> Workload {
    let now = ringflow_meter::unix_nanos_now();
    let per_batch = form.records_per_batch();
    let batches = records.div_ceil(per_batch as u64);
    let frames: Vec<Bytes> = (0..batches)
        .map(|b| {
            let batch = synthetic_batch_of(b + 1, per_batch, now);
            batch_frame(match form {
                Form::Rows => batch,
                Form::Columns => columns_of(&batch, Some(ringflow_proto::columns::DEFAULT_ZSTD_LEVEL)),
            })
        })
        .collect();
    Workload {
        bytes: frames.iter().map(|f| f.len() as u64).sum(),
        records: batches * per_batch as u64,
        frames,
        form,
    }
}

/// `batch` (of rows) with its records as columns, compressed at `zstd_level` when given, as a
/// meter seals it (no record copied).
pub fn columns_of(batch: &pb::FlowBatch, zstd_level: Option<i32>) -> pb::FlowBatch {
    pb::FlowBatch {
        seq: batch.seq,
        records: Vec::new(),
        created_unix_nanos: batch.created_unix_nanos,
        loss: batch.loss,
        columns: ringflow_proto::columns::encode(&batch.records, zstd_level).into(),
    }
}

/// Batch `seq` (1-based) of the synthetic source's records, [`RECORDS_PER_BATCH`] a batch.
pub fn synthetic_batch(seq: u64, now_nanos: u64) -> pb::FlowBatch {
    synthetic_batch_of(seq, RECORDS_PER_BATCH, now_nanos)
}

/// Batch `seq` (1-based) of the synthetic source's records, `per_batch` a batch.
pub fn synthetic_batch_of(seq: u64, per_batch: usize, now_nanos: u64) -> pb::FlowBatch {
    let first = (seq - 1) * per_batch as u64;
    let addresses = FlowAddresses::new(FLOWS);
    pb::FlowBatch {
        columns: Default::default(),
        loss: None,
        seq,
        records: (first..first + per_batch as u64)
            .map(|i| addresses.record(i, now_nanos))
            .collect(),
        created_unix_nanos: now_nanos,
    }
}

/// What moved, how fast.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Transfer {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

/// A bare quinn server with the collector's certificate, crypto, transport settings (stream and
/// connection windows, `limits` defaults) and socket buffers. On each bidirectional stream it
/// reads to the end, counting bytes, then answers with the count (8 bytes) and finishes.
pub fn raw_quinn_server(bed: &TestBed) -> anyhow::Result<Endpoint> {
    let config = collector_server_config(&bed.certs.server_cert, &bed.certs.server_key)?;
    let socket = quic::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)), quic::SOCKET_BUFFER_BYTES)?;
    let endpoint = Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(TokioRuntime),
    )?;
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.accept() else { return };
                let Ok(conn) = conn.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut total = 0u64;
                        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                            total += chunk.bytes.len() as u64;
                        }
                        let _ = send.write_all(&total.to_be_bytes()).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    Ok(endpoint)
}

/// A collector's QUIC server configuration with the default `[limits]` (stream counts, windows,
/// idle timeout: `ringflow_collector::control::listener::server_config`), serving the certificate
/// and key at these paths: what every raw quinn ceiling runs with.
pub fn collector_server_config(cert: &Path, key: &Path) -> anyhow::Result<quinn::ServerConfig> {
    let chain = quic::load_certificates("server certificate", cert)?;
    let key = quic::load_private_key("server key", key)?;
    let crypto = quic::server_crypto(chain, key)?;
    let limits = ringflow_collector::config::LimitsConfig::default();
    Ok(ringflow_collector::control::listener::server_config(
        crypto, &limits,
    ))
}

/// The workload's bytes over one stream to a [`raw_quinn_server`], timed from opening the stream
/// to the server's answer that it read all of them.
pub async fn raw_quinn_bulk(
    client: &Endpoint,
    server: SocketAddr,
    work: &Workload,
) -> anyhow::Result<Transfer> {
    let conn = client.connect(server, "localhost")?.await?;
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    for frame in &work.frames {
        send.write_chunk(frame.clone()).await?;
    }
    send.finish()?;
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await?;
    let seconds = started.elapsed().as_secs_f64();
    conn.close(0u32.into(), b"");
    anyhow::ensure!(
        u64::from_be_bytes(count) == work.bytes,
        "the raw server read {} of {} bytes",
        u64::from_be_bytes(count),
        work.bytes
    );
    Ok(Transfer {
        records: work.records,
        bytes: work.bytes,
        seconds,
    })
}

/// The workload over a ringflow session as meter `meter_id` (Hello, one data stream, at most the
/// `Welcome`'s `max_unacked_batches` unacked), timed from opening the data stream to the ack of
/// the last batch.
pub async fn ringflow_ingest(
    client: &Endpoint,
    collector: SocketAddr,
    (org, token): (&str, &str),
    meter_id: &str,
    work: &Workload,
) -> anyhow::Result<Transfer> {
    let session = match RawSession::hello_on(client, collector, org, meter_id, token).await? {
        RawHello::Welcomed(session) => session,
        RawHello::Rejected(reject) => anyhow::bail!("the collector rejected the bench meter: {reject:?}"),
    };
    let window = session
        .welcome
        .limits
        .as_ref()
        .map_or(1, |l| l.max_unacked_batches.max(1)) as usize;
    let last_seq = work.frames.len() as u64;
    let room = Arc::new(tokio::sync::Semaphore::new(window));
    let started = Instant::now();
    let (mut send, recv) = session.conn.open_bi().await?;
    let mut replies = FrameReader::new(recv, MAX_CONTROL_FRAME_BYTES);
    let sender = {
        let room = Arc::clone(&room);
        async move {
            for frame in &work.frames {
                room.acquire().await?.forget();
                send.write_chunk(frame.clone()).await?;
            }
            anyhow::Ok(send)
        }
    };
    let receiver = async {
        let mut acked = 0u64;
        while acked < last_seq {
            let reply = replies
                .next_frame()
                .await?
                .ok_or_else(|| anyhow::anyhow!("the collector closed the data stream at seq {acked}"))?;
            match pb::DataDown::decode(reply)?.msg {
                Some(pb::data_down::Msg::Ack(ack)) if ack.up_to_seq > acked => {
                    room.add_permits((ack.up_to_seq - acked) as usize);
                    acked = ack.up_to_seq;
                }
                Some(pb::data_down::Msg::Ack(_)) => {}
                other => anyhow::bail!("expected an ack, got {other:?}"),
            }
        }
        anyhow::Ok(())
    };
    // A collector that stops acking fails the run rather than hanging it.
    let limit = std::time::Duration::from_secs(60 + work.records / 20_000);
    let (send, ()) = tokio::time::timeout(limit, async { tokio::try_join!(sender, receiver) })
        .await
        .map_err(|_| anyhow::anyhow!("{meter_id}: not every batch was acked within {limit:?}"))??;
    let seconds = started.elapsed().as_secs_f64();
    drop(send);
    session.conn.close(0u32.into(), b"");
    Ok(Transfer {
        records: work.records,
        bytes: work.bytes,
        seconds,
    })
}

/// A `DataUp` frame's body decoded (what the codec measurement decodes).
pub fn decode_frame(frame: &Bytes) -> anyhow::Result<pb::DataUp> {
    Ok(frame::decode_body(frame.slice(4..))?)
}
