//! A bare ringflow/1 client for protocol tests: it does the handshake like a meter, then lets the
//! test write whatever bytes it wants on data streams.

use std::net::SocketAddr;

use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use ringflow_proto::frame::{self, FrameReader, MAX_CONTROL_FRAME_BYTES};
use ringflow_proto::{PROTOCOL_VERSION, pb};

use crate::TestBed;

pub struct RawSession {
    pub conn: Connection,
    pub welcome: pb::Welcome,
    _endpoint: Endpoint,
    _control: (SendStream, FrameReader<RecvStream>),
}

/// The collector's answer to a raw Hello.
pub enum RawHello {
    Welcomed(Box<RawSession>),
    Rejected(pb::Reject),
}

impl RawSession {
    /// Connects and says Hello as `meter_id` of `org` with `token`.
    pub async fn hello(
        bed: &TestBed,
        addr: SocketAddr,
        org: &str,
        meter_id: &str,
        token: &str,
    ) -> anyhow::Result<RawHello> {
        let client = ringflow_agent::transport::client_config(&bed.certs.ca)?;
        let endpoint = ringflow_agent::transport::client_endpoint(client)?;
        Self::hello_on(&endpoint, addr, org, meter_id, token).await
    }

    /// Like [`RawSession::hello`], from an existing client `endpoint` (many sessions, one socket).
    pub async fn hello_on(
        endpoint: &Endpoint,
        addr: SocketAddr,
        org: &str,
        meter_id: &str,
        token: &str,
    ) -> anyhow::Result<RawHello> {
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let (mut send, recv) = conn.open_bi().await?;
        let hello = pb::ControlFrame {
            msg: Some(pb::control_frame::Msg::Hello(pb::Hello {
                protocol_version: PROTOCOL_VERSION,
                meter_id: meter_id.into(),
                org_id: org.into(),
                org_token: token.into(),
                software_version: "raw-test".into(),
                last_acked_seq: 0,
            })),
        };
        send.write_chunk(frame::encode_to_bytes(&hello, MAX_CONTROL_FRAME_BYTES)?)
            .await?;
        let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME_BYTES);
        match reader
            .next_message::<pb::ControlFrame>()
            .await?
            .and_then(|f| f.msg)
        {
            Some(pb::control_frame::Msg::Welcome(welcome)) => Ok(RawHello::Welcomed(Box::new(RawSession {
                conn,
                welcome,
                _endpoint: endpoint.clone(),
                _control: (send, reader),
            }))),
            Some(pb::control_frame::Msg::Reject(reject)) => Ok(RawHello::Rejected(reject)),
            other => anyhow::bail!("expected Welcome or Reject, got {other:?}"),
        }
    }

    /// Opens a data stream and writes `bytes` on it as they are.
    pub async fn send_raw(&self, bytes: Bytes) -> anyhow::Result<(SendStream, FrameReader<RecvStream>)> {
        let (mut send, recv) = self.conn.open_bi().await?;
        send.write_chunk(bytes).await?;
        Ok((send, FrameReader::new(recv, MAX_CONTROL_FRAME_BYTES)))
    }
}

/// Batches `seqs`, each of `records` empty records, framed back to back as a data stream
/// carries them.
pub fn batch_frames(seqs: std::ops::RangeInclusive<u64>, records: usize) -> Bytes {
    let mut wire = Vec::new();
    for seq in seqs {
        wire.extend_from_slice(&batch_frame(pb::FlowBatch {
            seq,
            records: vec![pb::FlowRecord::default(); records],
            created_unix_nanos: 0,
        }));
    }
    Bytes::from(wire)
}

/// `batch` framed as a data stream carries it.
pub fn batch_frame(batch: pb::FlowBatch) -> Bytes {
    let up = pb::DataUp {
        msg: Some(pb::data_up::Msg::Batch(batch)),
    };
    frame::encode_to_bytes(&up, usize::MAX).unwrap_or_default()
}
