//! A bare ringflow/1 client for protocol tests: it does the handshake like a meter, then lets the
//! test write whatever bytes it wants on data streams.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes};
use prost::Message;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use ringflow_proto::frame::{self, FrameReader, MAX_CONTROL_FRAME_BYTES};
use ringflow_proto::{PROTOCOL_VERSION, pb};

use crate::TestBed;

pub struct RawSession {
    pub conn: Connection,
    pub welcome: pb::Welcome,
    _endpoint: Endpoint,
    control: (SendStream, FrameReader<RecvStream>),
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
        let client = ringflow_meter::transport::client_config(&bed.certs.ca)?;
        let endpoint = ringflow_meter::transport::client_endpoint(client)?;
        Self::hello_on(&endpoint, addr, org, meter_id, token).await
    }

    /// A client endpoint bound to `ip` (a loopback address: each its own source address to the
    /// collector), trusting the bed's CA and presenting `client_cert`, one of the bed's client
    /// certificates (`certs.clients`), when asked.
    pub fn endpoint_at(
        bed: &TestBed,
        ip: std::net::IpAddr,
        client_cert: Option<usize>,
    ) -> anyhow::Result<Endpoint> {
        let identity = match client_cert {
            None => None,
            Some(i) => {
                let (_, cert, key) = bed
                    .certs
                    .clients
                    .get(i)
                    .ok_or_else(|| anyhow::anyhow!("the bed has no client certificate {i}"))?;
                Some(ringflow_meter::transport::ClientIdentity { cert, key })
            }
        };
        let client = ringflow_meter::transport::client_config_with_identity(&bed.certs.ca, identity)?;
        Ok(ringflow_meter::transport::client_endpoint_at(
            client,
            SocketAddr::new(ip, 0),
        )?)
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
                columns: Default::default(),
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
                control: (send, reader),
            }))),
            Some(pb::control_frame::Msg::Reject(reject)) => Ok(RawHello::Rejected(reject)),
            other => anyhow::bail!("expected Welcome or Reject, got {other:?}"),
        }
    }

    /// The session's control stream (its send half and the collector's frames), for a client that
    /// keeps the session alive as a meter does: heartbeats out, the collector's answers read.
    pub fn control(&mut self) -> (&mut SendStream, &mut FrameReader<RecvStream>) {
        (&mut self.control.0, &mut self.control.1)
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
            columns: Default::default(),
            loss: None,
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

/// A length-delimited field `tag` holding `value`, as protobuf encodes it.
fn unknown_field(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    out
}

/// A data frame of one batch whose every level also names `org`: unknown fields in `DataUp` and
/// `FlowBatch` holding it (one as `org_id=ORG`), and the org's name as a record's interface.
/// Tenancy must come from the session, never from these.
pub fn batch_naming_another_org(org: &str, seq: u64) -> Bytes {
    let record = pb::FlowRecord {
        src_addr: Bytes::from_static(&[10, 0, 0, 1]),
        dst_addr: Bytes::from_static(&[10, 0, 0, 2]),
        ip_protocol: 6,
        interface: org.into(),
        ..Default::default()
    };
    let mut batch = pb::FlowBatch {
        columns: Default::default(),
        loss: None,
        seq,
        records: vec![record],
        created_unix_nanos: 0,
    }
    .encode_to_vec();
    batch.extend(unknown_field(9, org.as_bytes()));
    batch.extend(unknown_field(100, format!("org_id={org}").as_bytes()));
    let mut up = unknown_field(1, &batch);
    up.extend(unknown_field(15, org.as_bytes()));
    let mut frame = bytes::BytesMut::new();
    frame.put_u32(up.len() as u32);
    frame.extend_from_slice(&up);
    frame.freeze()
}

/// The collector's next reply on a data stream (an ack or a nack), within 10 s; an error if the
/// stream ends without one.
pub async fn next_reply(reader: &mut FrameReader<RecvStream>) -> anyhow::Result<pb::data_down::Msg> {
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.next_message::<pb::DataDown>(),
    )
    .await??
    .and_then(|d| d.msg)
    .ok_or_else(|| anyhow::anyhow!("data stream ended without a reply"))
}
