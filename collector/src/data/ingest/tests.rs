//! The frame judge and a data stream's ack window, on frames built here.

use super::*;

const LIMITS: DataLimits = DataLimits {
    max_frame_bytes: 1 << 20,
    max_records_per_batch: 3,
    max_unacked_batches: 8,
    max_field_bytes: 16,
};

fn frame_body(batch: pb::FlowBatch) -> Bytes {
    Bytes::from(
        pb::DataUp {
            msg: Some(pb::data_up::Msg::Batch(batch)),
        }
        .encode_to_vec(),
    )
}

fn record() -> pb::FlowRecord {
    pb::FlowRecord {
        src_addr: Bytes::from_static(&[10, 0, 0, 1]),
        dst_addr: Bytes::from_static(&[10, 0, 0, 2]),
        src_port: 40000,
        dst_port: 443,
        ip_protocol: 6,
        ..Default::default()
    }
}

fn batch(seq: u64, records: Vec<pb::FlowRecord>) -> pb::FlowBatch {
    pb::FlowBatch {
        columns: Default::default(),
        loss: None,
        seq,
        records,
        created_unix_nanos: 1,
    }
}

#[test]
fn valid_batches_are_accepted_in_seq_order() {
    let b = batch(5, vec![record(), record()]);
    assert_eq!(
        judge_frame(frame_body(b.clone()), 4, &LIMITS),
        Verdict::Accept { batch: b, records: 2 }
    );
    let v = judge_frame(frame_body(batch(4, vec![record()])), 4, &LIMITS);
    assert!(
        matches!(v, Verdict::Close(StreamCode::ProtocolViolation, _)),
        "{v:?}"
    );
}

#[test]
fn bad_batches_are_nacked_with_their_seq() {
    let v = judge_frame(frame_body(batch(1, vec![record(); 4])), 0, &LIMITS);
    assert!(
        matches!(
            v,
            Verdict::Nack {
                seq: 1,
                reason: pb::NackReason::TooManyRecords,
                ..
            }
        ),
        "{v:?}"
    );
    let mut r = record();
    r.src_addr = Bytes::from_static(&[1, 2, 3]);
    let v = judge_frame(frame_body(batch(2, vec![r])), 1, &LIMITS);
    assert!(
        matches!(
            v,
            Verdict::Nack {
                seq: 2,
                reason: pb::NackReason::InvalidRecord,
                ..
            }
        ),
        "{v:?}"
    );
    let mut r = record();
    r.interface = "x".repeat(17);
    let v = judge_frame(frame_body(batch(3, vec![r])), 2, &LIMITS);
    assert!(
        matches!(
            v,
            Verdict::Nack {
                seq: 3,
                reason: pb::NackReason::FieldTooLong,
                ..
            }
        ),
        "{v:?}"
    );
}

/// The text field `name` of a record, to set.
fn text_field<'a>(r: &'a mut pb::FlowRecord, name: &str) -> &'a mut String {
    match name {
        "process_name" => &mut r.process_name,
        "cgroup" => &mut r.cgroup,
        "container_id" => &mut r.container_id,
        "pod_uid" => &mut r.pod_uid,
        "systemd_unit" => &mut r.systemd_unit,
        "community_id" => &mut r.community_id,
        other => panic!("no text field {other}"),
    }
}

#[test]
fn each_host_field_is_accepted_at_its_limit_and_nacked_one_byte_over() {
    for (seq, (name, limit)) in (1..).zip(FIELD_LIMITS) {
        let mut r = record();
        *text_field(&mut r, name) = "x".repeat(limit);
        let at = batch(seq, vec![r.clone()]);
        assert_eq!(
            judge_frame(frame_body(at.clone()), 0, &LIMITS),
            Verdict::Accept {
                batch: at,
                records: 1
            },
            "{name} at {limit} bytes"
        );
        text_field(&mut r, name).push('x');
        match judge_frame(frame_body(batch(seq, vec![r])), 0, &LIMITS) {
            Verdict::Nack {
                seq: s,
                reason: pb::NackReason::FieldTooLong,
                message,
            } => {
                assert_eq!(s, seq);
                assert_eq!(
                    message,
                    format!("record 0: {name} of {} bytes, the limit is {limit}", limit + 1)
                );
            }
            other => panic!("{name} of {} bytes: {other:?}", limit + 1),
        }
    }
}

#[test]
fn undecodable_records_are_nacked_when_the_seq_is_readable() {
    // DataUp{batch: FlowBatch{seq: 9, records: [garbage]}}, built by hand.
    let records_garbage = [0x12, 0x03, 0xff, 0xff, 0xff];
    let mut inner = vec![0x08, 9];
    inner.extend_from_slice(&records_garbage);
    let mut body = vec![0x0a, inner.len() as u8];
    body.extend_from_slice(&inner);
    let v = judge_frame(Bytes::from(body), 0, &LIMITS);
    assert!(
        matches!(
            v,
            Verdict::Nack {
                seq: 9,
                reason: pb::NackReason::Undecodable,
                ..
            }
        ),
        "{v:?}"
    );
}

#[test]
fn garbage_closes_the_stream() {
    let v = judge_frame(Bytes::from_static(b"\xff\xff\xff\xff garbage"), 0, &LIMITS);
    assert!(
        matches!(v, Verdict::Close(StreamCode::MalformedFrame, _)),
        "{v:?}"
    );
    let v = judge_frame(Bytes::new(), 0, &LIMITS);
    assert!(
        matches!(v, Verdict::Close(StreamCode::ProtocolViolation, _)),
        "{v:?}"
    );
}

#[test]
fn replies_nack_refused_batches_and_ack_cumulatively() {
    let metrics = CollectorMetrics::new();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let (tx2, rx2) = tokio::sync::oneshot::channel();
    in_flight.push_back(InFlight {
        seq: 1,
        state: InFlightState::Settled(Settlement::Stored),
    });
    in_flight.push_back(InFlight {
        seq: 2,
        state: InFlightState::Settled(Settlement::Nack(pb::NackReason::TooManyRecords, "x".into())),
    });
    in_flight.push_back(InFlight {
        seq: 3,
        state: InFlightState::Waiting(rx2),
    });
    let (_tx4, rx4) = tokio::sync::oneshot::channel();
    in_flight.push_back(InFlight {
        seq: 4,
        state: InFlightState::Waiting(rx4),
    });
    tx2.send(SinkOutcome::Stored).unwrap();

    let mut wire = BytesMut::from(&encode_replies(Settlement::Stored, &mut in_flight, &metrics)[..]);
    let mut codec = frame::FrameCodec::new(1 << 20);
    let mut replies = Vec::new();
    while let Some(f) = tokio_util::codec::Decoder::decode(&mut codec, &mut wire).unwrap() {
        replies.push(frame::decode_body::<pb::DataDown>(f).unwrap().msg.unwrap());
    }
    // Batch 4 is still waiting, so the ack stops at 3.
    assert_eq!(
        replies,
        vec![
            pb::data_down::Msg::Nack(pb::Nack {
                seq: 2,
                reason: pb::NackReason::TooManyRecords as i32,
                message: "x".into()
            }),
            pb::data_down::Msg::Ack(pb::Ack { up_to_seq: 3 }),
        ]
    );
    assert_eq!(in_flight.len(), 1);
    assert_eq!(
        CollectorMetrics::count(&metrics.ingest.nacks, "too_many_records"),
        1
    );
}

mod stored_form {
    use super::*;
    use proptest::prelude::*;

    /// Records as a host's sources make them: addresses from a small pool, a Community ID
    /// stamped (readers derive it from columns), some texts.
    fn host_record() -> impl Strategy<Value = pb::FlowRecord> {
        (
            any::<u64>(),
            0u8..4,
            any::<u16>(),
            prop_oneof![Just(6u32), Just(17u32), Just(1u32)],
            any::<u64>(),
            "[a-z]{0,12}",
            any::<bool>(),
        )
            .prop_map(|(start, host, port, proto, bytes, process, stamp)| {
                let mut r = pb::FlowRecord {
                    start_unix_nanos: start,
                    src_addr: Bytes::copy_from_slice(&[10, 0, 0, host]),
                    dst_addr: Bytes::from_static(&[93, 184, 216, 34]),
                    src_port: port.into(),
                    dst_port: 443,
                    ip_protocol: proto,
                    bytes_from_src: bytes,
                    process_name: process,
                    ..Default::default()
                };
                if stamp {
                    ringflow_proto::community_id::stamp(&mut r);
                }
                r
            })
    }

    fn session() -> SessionIdentity {
        SessionIdentity {
            org: "acme".into(),
            meter_id: "m1".into(),
            session_id: "s1".into(),
            collector_id: "c1".into(),
        }
    }

    proptest! {
        /// A batch stored in either form reads back (`into_rows`, as every sink reader does)
        /// to the records the meter sent, with the same identity fields, and columns are
        /// stored as they arrived.
        #[test]
        fn either_form_is_stored_and_read_back_as_sent(
            records in proptest::collection::vec(host_record(), 0..50),
            zstd in any::<bool>(),
        ) {
            let rows = batch(7, records.clone());
            let columns = pb::FlowBatch {
                columns: ringflow_proto::columns::encode(&records, zstd.then_some(1)).into(),
                records: Vec::new(),
                ..rows.clone()
            };
            let read = |b: pb::FlowBatch| {
                let body = frame_body(b.clone());
                let stored = stored_batch(&session(), b, &body);
                let stored = pb::StoredBatch::decode(stored).expect("a stored batch decodes");
                (stored.columns.clone(), ringflow_proto::columns::into_rows(stored).expect("reads"))
            };
            let (kept, from_columns) = read(columns.clone());
            let (_, from_rows) = read(rows);
            prop_assert_eq!(kept, columns.columns);
            prop_assert_eq!(&from_columns.records, &records);
            prop_assert_eq!(&from_rows.records, &records);
            let identity = |s: &pb::StoredBatch| {
                (s.org_id.clone(), s.meter_id.clone(), s.seq, s.collector_id.clone(), s.session_id.clone())
            };
            prop_assert_eq!(identity(&from_columns), identity(&from_rows));
        }
    }
}
