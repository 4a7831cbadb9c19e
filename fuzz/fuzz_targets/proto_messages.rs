//! Every message of the ringflow/1 schema (proto/proto/ringflow/v1/ringflow.proto), decoded from
//! the same input: the top-level frame messages, the messages nested in them, and `StoredBatch`,
//! which sinks write and downstream consumers read.
//!
//! Checks: decoding never panics and gives the same result from a slice and from `Bytes`; whatever decodes re-encodes to bytes that decode to an equal
//! message, with `encoded_len` matching the bytes written, and re-encoding that is stable.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use ringflow_proto::pb;

fuzz_target!(|data: &[u8]| {
    // Control stream.
    round_trip::<pb::ControlFrame>(data);
    round_trip::<pb::Hello>(data);
    round_trip::<pb::Limits>(data);
    round_trip::<pb::FleetMember>(data);
    round_trip::<pb::Welcome>(data);
    round_trip::<pb::Reject>(data);
    round_trip::<pb::Drain>(data);
    round_trip::<pb::Heartbeat>(data);
    // Data stream.
    round_trip::<pb::DataUp>(data);
    round_trip::<pb::DataDown>(data);
    round_trip::<pb::FlowBatch>(data);
    round_trip::<pb::Ack>(data);
    round_trip::<pb::Nack>(data);
    round_trip::<pb::FlowRecord>(data);
    // Storage.
    round_trip::<pb::StoredBatch>(data);
});

fn round_trip<M>(data: &[u8]) -> Option<()>
where
    M: Message + Default + PartialEq + std::fmt::Debug,
{
    // Receivers decode from `Bytes` (bytes fields then slice the frame without copying); the
    // result must not depend on the buffer type.
    let from_bytes = M::decode(Bytes::copy_from_slice(data));
    let msg = match (M::decode(data), from_bytes) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            a
        }
        (Err(_), Err(_)) => return None,
        (a, b) => panic!("decoding from a slice gave {a:?}, from Bytes {b:?}"),
    };
    let encoded = msg.encode_to_vec();
    assert_eq!(encoded.len(), msg.encoded_len());
    let decoded = match M::decode(&encoded[..]) {
        Ok(m) => m,
        Err(e) => panic!("re-encoded {msg:?} does not decode: {e}"),
    };
    assert_eq!(decoded, msg);
    assert_eq!(decoded.encode_to_vec(), encoded);
    // Length-delimited form (several messages back to back, as in a stream of records).
    let delimited = msg.encode_length_delimited_to_vec();
    match M::decode_length_delimited(&delimited[..]) {
        Ok(m) => assert_eq!(m, msg),
        Err(e) => panic!("length-delimited {msg:?} does not decode: {e}"),
    }
    Some(())
}
