//! Frame codec: splitting a byte stream into length-prefixed frames under a size limit, then
//! decoding each frame body as the messages that travel in frames.
//!
//! Input layout:
//!   bytes 0..2  the codec's `max_frame_bytes`, big-endian, taken modulo 4096
//!   byte  2     how many chunk sizes follow (modulo 8; 0: the stream arrives in one piece)
//!   next bytes  the chunk sizes (each plus one); the stream is fed in chunks of these sizes,
//!               repeating the list until the stream is used up
//!   the rest    the stream itself
//!
//! Checks: the codec yields exactly the frames a plain reference splitter finds, whatever the
//! chunking; no frame is larger than the limit; a too-large prefix is refused as `TooLarge`
//! and a stream that ends inside a frame as `Truncated`, with the sizes the reference computes;
//! every body that decodes as `DataUp`, `DataDown` or `ControlFrame` survives
//! `encode_to_bytes` -> codec -> `decode_body` unchanged, and one that does not decode is
//! reported as `Malformed` naming the right message.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use ringflow_proto::frame::{self, FrameCodec, FrameError, LENGTH_PREFIX_BYTES};
use ringflow_proto::pb;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&[limit_hi, limit_lo, chunk_count], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max_frame_bytes = usize::from(u16::from_be_bytes([limit_hi, limit_lo])) % 4096;
    let chunk_count = usize::from(chunk_count % 8).min(rest.len());
    let (chunk_sizes, stream) = rest.split_at(chunk_count);

    let (expected_frames, expected_end) = reference_split(stream, max_frame_bytes);
    let (frames, end) = run_codec(stream, chunk_sizes, max_frame_bytes);

    assert_eq!(frames.len(), expected_frames.len(), "frame count");
    for (frame, expected) in frames.iter().zip(&expected_frames) {
        assert!(
            frame.len() <= max_frame_bytes,
            "frame of {} > {max_frame_bytes}",
            frame.len()
        );
        assert_eq!(&frame[..], *expected);
    }
    match (&end, &expected_end) {
        (Ok(()), End::Clean) => {}
        (Err(FrameError::TooLarge { len, max }), End::TooLarge { len: want }) => {
            assert_eq!((*len, *max), (*want, max_frame_bytes));
        }
        (
            Err(FrameError::Truncated { buffered, needed }),
            End::Truncated {
                buffered: b,
                needed: n,
            },
        ) => {
            assert_eq!((*buffered, *needed), (*b, *n));
        }
        (got, want) => panic!("codec ended with {got:?}, the reference with {want:?}"),
    }

    for body in frames {
        round_trip::<pb::DataUp>(&body, max_frame_bytes, "DataUp");
        round_trip::<pb::DataDown>(&body, max_frame_bytes, "DataDown");
        round_trip::<pb::ControlFrame>(&body, max_frame_bytes, "ControlFrame");
    }
});

/// How a stream ends, according to the reference splitter.
#[derive(Debug)]
enum End {
    Clean,
    TooLarge { len: usize },
    Truncated { buffered: usize, needed: usize },
}

/// The frames of `stream`, read the obvious way: a 4-byte big-endian length, then the body.
fn reference_split(stream: &[u8], max: usize) -> (Vec<&[u8]>, End) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let left = &stream[at..];
        if left.is_empty() {
            return (frames, End::Clean);
        }
        let Some(prefix) = left.first_chunk::<4>() else {
            return (
                frames,
                End::Truncated {
                    buffered: left.len(),
                    needed: 4,
                },
            );
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > max {
            return (frames, End::TooLarge { len });
        }
        if left.len() < 4 + len {
            return (
                frames,
                End::Truncated {
                    buffered: left.len(),
                    needed: 4 + len,
                },
            );
        }
        frames.push(&left[4..4 + len]);
        at += 4 + len;
    }
}

/// Feeds `stream` to a [`FrameCodec`] in chunks, as a reader would, then signals the end.
fn run_codec(stream: &[u8], chunk_sizes: &[u8], max: usize) -> (Vec<Bytes>, Result<(), FrameError>) {
    let mut codec = FrameCodec::new(max);
    assert_eq!(codec.max_frame_bytes(), max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut sizes = chunk_sizes.iter().map(|&s| usize::from(s) + 1).cycle();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
        // A pending frame never holds more than its prefix and body.
        if let Some(prefix) = buf.first_chunk::<4>() {
            let needed = LENGTH_PREFIX_BYTES + u32::from_be_bytes(*prefix) as usize;
            assert!(buf.len() < needed, "a whole frame was left in the buffer");
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, Ok(())),
            Err(e) => return (frames, Err(e)),
        }
    }
}

/// Decodes `body` as `M`; what decodes must come back unchanged through a frame.
fn round_trip<M>(body: &Bytes, max: usize, name: &str)
where
    M: Message + Default + PartialEq + std::fmt::Debug,
{
    let msg = match frame::decode_body::<M>(body.clone()) {
        Ok(msg) => msg,
        Err(FrameError::Malformed { message, .. }) => {
            assert_eq!(message, name);
            return;
        }
        Err(other) => panic!("decode_body failed with {other:?}"),
    };
    let len = msg.encoded_len();
    // The limit is checked on the re-encoded length (which may differ from the body's: unknown
    // fields are dropped, over-long varints shortened, negative enums widened).
    match frame::encode_to_bytes(&msg, max) {
        Ok(_) => assert!(len <= max),
        Err(FrameError::TooLarge { len: l, max: m }) => assert_eq!((l, m), (len, max)),
        Err(other) => panic!("encode_to_bytes failed with {other:?}"),
    }
    let framed = match frame::encode_to_bytes(&msg, u32::MAX as usize) {
        Ok(framed) => framed,
        Err(e) => panic!("encoding a {name} of {len} bytes failed: {e}"),
    };
    assert_eq!(framed.len(), LENGTH_PREFIX_BYTES + len);
    let mut buf = BytesMut::from(&framed[..]);
    let again = match FrameCodec::new(len).decode(&mut buf) {
        Ok(Some(b)) => b,
        other => panic!("own frame of {len} bytes did not split: {other:?}"),
    };
    assert!(buf.is_empty());
    match frame::decode_body::<M>(again.clone()) {
        Ok(decoded) => assert_eq!(decoded, msg, "{name} changed in a round trip"),
        Err(e) => panic!("re-encoded {name} does not decode: {e}"),
    }
    // Encoding is canonical: a second round gives the same bytes.
    assert_eq!(msg.encode_to_vec(), &again[..]);
}
