//! Frame codec: a 4-byte big-endian length prefix, then that many bytes of one encoded protobuf
//! message.
//!
//! Owns: splitting a byte stream into frames and the frame size limit. The limit is enforced on
//! the length prefix, before a single byte of the body is buffered, so a peer cannot make us
//! allocate more than `max_frame_bytes` (plus one read chunk). [`FrameCodec`] is sans-IO (bytes in,
//! frames out); [`FrameReader`] is the one place where bytes are read from a stream and buffered.
//! Must never: interpret message contents beyond decoding them, or log frame bodies.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;

use crate::codes::StreamCode;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Default largest frame body on a data stream: 1 MiB. Large enough for batches of several
/// thousand typical (~60-byte) records; small enough that a collector with a few thousand
/// connections cannot be made to buffer gigabytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Largest frame body a meter may send on its control stream. Control messages are small; a
/// tight limit bounds what an unauthenticated peer can make a collector buffer before its
/// `Hello` is checked.
pub const MAX_CONTROL_FRAME_BYTES: usize = 16 * 1024;

/// Largest frame body a collector may send on a control stream: a `Welcome` carries the fleet
/// view, which for a fleet of thousands of collectors is tens of KiB.
pub const MAX_COLLECTOR_CONTROL_FRAME_BYTES: usize = 256 * 1024;

/// How much [`FrameReader`] asks the stream for at a time when the buffer is full.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// What a [`FrameReader`] with no buffer asks for first: a control message or a small batch. A
/// stream that sends more grows to [`READ_CHUNK_BYTES`] (a frame's announced length is reserved
/// whole), so an idle session's two readers hold a little memory each instead of 64 KiB.
const FIRST_READ_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(
        "frame of {len} bytes is larger than the limit of {max} bytes (the sender must split its batches)"
    )]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame: {buffered} bytes buffered, the frame needs {needed}")]
    Truncated { buffered: usize, needed: usize },
    #[error("frame body is not a valid {message} message: {source}")]
    Malformed {
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The stream code a receiver closes the stream with after this error, if the stream is
    /// still open (`None` for I/O errors, where the stream is already gone).
    pub fn stream_code(&self) -> Option<StreamCode> {
        match self {
            FrameError::TooLarge { .. } => Some(StreamCode::FrameTooLarge),
            FrameError::Truncated { .. } => Some(StreamCode::TruncatedFrame),
            FrameError::Malformed { .. } => Some(StreamCode::MalformedFrame),
            FrameError::Io(_) => None,
        }
    }

    /// The connection error underneath, if the stream ended because its connection did.
    pub fn connection_lost(&self) -> Option<&quinn::ConnectionError> {
        let FrameError::Io(io) = self else {
            return None;
        };
        match io.get_ref()?.downcast_ref::<quinn::ReadError>()? {
            quinn::ReadError::ConnectionLost(e) => Some(e),
            _ => None,
        }
    }

    /// The application code the peer reset its side of the stream with, if that is what
    /// ended the stream.
    pub fn peer_reset_code(&self) -> Option<quinn::VarInt> {
        let FrameError::Io(io) = self else {
            return None;
        };
        match io.get_ref()?.downcast_ref::<quinn::ReadError>()? {
            quinn::ReadError::Reset(code) => Some(*code),
            _ => None,
        }
    }
}

/// Sans-IO frame splitter with a size limit checked before allocation.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_bytes: usize,
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { max_frame_bytes }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = src.get(..LENGTH_PREFIX_BYTES) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; LENGTH_PREFIX_BYTES];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        let needed = LENGTH_PREFIX_BYTES + len;
        if src.len() < needed {
            // Safe to reserve: `needed` is bounded by the limit checked above.
            src.reserve(needed - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX_BYTES);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let needed = match src.get(..LENGTH_PREFIX_BYTES) {
                    Some(p) => LENGTH_PREFIX_BYTES + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
                    None => LENGTH_PREFIX_BYTES,
                };
                Err(FrameError::Truncated {
                    buffered: src.len(),
                    needed,
                })
            }
        }
    }
}

/// Appends `msg` to `dst` as one frame. Fails (writing nothing) if the body would exceed
/// `max_frame_bytes`.
pub fn encode<M: Message>(msg: &M, max_frame_bytes: usize, dst: &mut BytesMut) -> Result<(), FrameError> {
    let (len, prefix) = body_len(msg, max_frame_bytes)?;
    dst.reserve(LENGTH_PREFIX_BYTES + len);
    dst.put_u32(prefix);
    msg.encode_raw(dst);
    Ok(())
}

/// The length of `msg`'s body, and as the length prefix, if it fits `max_frame_bytes` (and the
/// prefix's 4 GiB).
fn body_len<M: Message>(msg: &M, max_frame_bytes: usize) -> Result<(usize, u32), FrameError> {
    let len = msg.encoded_len();
    let max = max_frame_bytes.min(u32::MAX as usize);
    match u32::try_from(len) {
        Ok(prefix) if len <= max => Ok((len, prefix)),
        _ => Err(FrameError::TooLarge { len, max }),
    }
}

/// `msg` as one frame in its own buffer. Encodes into a `Vec`: prost writes the many small
/// fields of a batch into a `Vec` twice as fast as into a `BytesMut` (docs/benchmarks.md).
pub fn encode_to_bytes<M: Message>(msg: &M, max_frame_bytes: usize) -> Result<Bytes, FrameError> {
    let (len, prefix) = body_len(msg, max_frame_bytes)?;
    let mut buf = Vec::with_capacity(LENGTH_PREFIX_BYTES + len);
    buf.put_u32(prefix);
    msg.encode_raw(&mut buf);
    Ok(Bytes::from(buf))
}

/// Decodes one frame body as `M`.
pub fn decode_body<M: Message + Default>(body: Bytes) -> Result<M, FrameError> {
    M::decode(body).map_err(|source| FrameError::Malformed {
        message: short_type_name::<M>(),
        source,
    })
}

fn short_type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Reads frames from a byte stream. The only place a stream's bytes are buffered.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    codec: FrameCodec,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max_frame_bytes: usize) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            codec: FrameCodec::new(max_frame_bytes),
        }
    }

    /// The next frame body, or `None` when the stream ended cleanly between frames.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.len() == self.buf.capacity() {
                let chunk = if self.buf.capacity() == 0 {
                    FIRST_READ_BYTES
                } else {
                    READ_CHUNK_BYTES
                };
                self.buf.reserve(chunk);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return self.codec.decode_eof(&mut self.buf);
            }
        }
    }

    /// The next frame decoded as `M`, or `None` at a clean end of stream.
    pub async fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        match self.next_frame().await? {
            Some(body) => decode_body(body).map(Some),
            None => Ok(None),
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use proptest::prelude::*;

    fn frame_of(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    proptest! {
        #[test]
        fn bodies_round_trip_in_sequence(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)
        ) {
            let mut stream = BytesMut::new();
            for b in &bodies {
                stream.extend_from_slice(&frame_of(b));
            }
            let mut codec = FrameCodec::new(1024);
            let mut out = Vec::new();
            while let Some(f) = codec.decode(&mut stream).unwrap() {
                out.push(f.to_vec());
            }
            prop_assert_eq!(codec.decode_eof(&mut stream).unwrap(), None);
            prop_assert_eq!(out, bodies);
        }

        #[test]
        fn every_truncation_waits_then_reports_truncated(
            body in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let whole = frame_of(&body);
            for cut in 0..whole.len() {
                let mut partial = BytesMut::from(&whole[..cut]);
                let mut codec = FrameCodec::new(1024);
                prop_assert_eq!(codec.decode(&mut partial).unwrap(), None, "cut at {}", cut);
                let eof = codec.decode_eof(&mut partial);
                if cut == 0 {
                    prop_assert!(matches!(eof, Ok(None)));
                } else {
                    let truncated = matches!(eof, Err(FrameError::Truncated { .. }));
                    prop_assert!(truncated, "cut at {}", cut);
                }
            }
        }

        #[test]
        fn byte_at_a_time_delivery_yields_the_same_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 1..8)
        ) {
            let wire: Vec<u8> = bodies.iter().flat_map(|b| frame_of(b)).collect();
            let mut codec = FrameCodec::new(1024);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for byte in wire {
                buf.put_u8(byte);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    out.push(f.to_vec());
                }
            }
            prop_assert_eq!(out, bodies);
        }

        #[test]
        fn oversize_is_refused_from_the_prefix_alone(len in 1025u32..=u32::MAX) {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            let before = buf.capacity();
            let mut codec = FrameCodec::new(1024);
            let err = codec.decode(&mut buf).unwrap_err();
            let refused = matches!(err, FrameError::TooLarge { len: l, max: 1024 } if l == len as usize);
            prop_assert!(refused);
            prop_assert_eq!(err.stream_code(), Some(StreamCode::FrameTooLarge));
            // Nothing was reserved for the announced body.
            prop_assert!(buf.capacity() <= before.max(64));
        }

        #[test]
        fn garbage_never_panics_and_never_overreads(
            garbage in proptest::collection::vec(any::<u8>(), 0..2048)
        ) {
            let mut buf = BytesMut::from(&garbage[..]);
            let mut codec = FrameCodec::new(512);
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                prop_assert!(f.len() <= 512);
                // Decoding any message from garbage must fail or succeed, not panic.
                let _ = decode_body::<pb::DataUp>(f.clone());
                let _ = decode_body::<pb::ControlFrame>(f);
            }
        }

        #[test]
        fn flow_batches_round_trip_through_frames(
            seq in any::<u64>(),
            ports in proptest::collection::vec((any::<u16>(), any::<u16>(), any::<u64>()), 0..40)
        ) {
            let batch = pb::FlowBatch {
                columns: Default::default(),
                loss: None,
                seq,
                created_unix_nanos: 7,
                records: ports
                    .iter()
                    .map(|&(s, d, b)| pb::FlowRecord {
                        src_addr: Bytes::from_static(&[10, 0, 0, 1]),
                        dst_addr: Bytes::from_static(&[10, 0, 0, 2]),
                        src_port: u32::from(s),
                        dst_port: u32::from(d),
                        bytes_from_src: b,
                        ..Default::default()
                    })
                    .collect(),
            };
            let up = pb::DataUp { msg: Some(pb::data_up::Msg::Batch(batch)) };
            let wire = encode_to_bytes(&up, DEFAULT_MAX_FRAME_BYTES).unwrap();
            let mut buf = BytesMut::from(&wire[..]);
            let body = FrameCodec::new(DEFAULT_MAX_FRAME_BYTES).decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(decode_body::<pb::DataUp>(body).unwrap(), up);
        }
    }

    #[test]
    fn encode_refuses_oversize_and_writes_nothing() {
        let batch = pb::FlowBatch {
            columns: Default::default(),
            loss: None,
            seq: 1,
            records: vec![pb::FlowRecord::default(); 100],
            created_unix_nanos: 0,
        };
        let mut dst = BytesMut::new();
        let err = encode(&batch, 10, &mut dst).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 10, .. }));
        assert!(dst.is_empty());
    }

    #[test]
    fn malformed_body_names_the_message() {
        let err = decode_body::<pb::ControlFrame>(Bytes::from_static(&[0xff, 0xff, 0xff])).unwrap_err();
        assert_eq!(err.stream_code(), Some(StreamCode::MalformedFrame));
        assert!(err.to_string().contains("ControlFrame"), "{err}");
    }

    #[tokio::test]
    async fn reader_reads_frames_from_a_stream_and_reports_a_torn_end() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for body in [&b"one"[..], b"", b"three"] {
                tx.write_all(&frame_of(body)).await.unwrap();
            }
            tx.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap(); // torn: 2 of 9 bytes
        });
        let mut reader = FrameReader::new(rx, 1024);
        assert_eq!(reader.next_frame().await.unwrap().unwrap(), &b"one"[..]);
        assert_eq!(reader.next_frame().await.unwrap().unwrap(), &b""[..]);
        assert_eq!(reader.next_frame().await.unwrap().unwrap(), &b"three"[..]);
        writer.await.unwrap();
        let err = reader.next_frame().await.unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    buffered: 6,
                    needed: 13
                }
            ),
            "{err}"
        );
    }
}
