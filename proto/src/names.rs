//! Stable short names of the protocol's enums, for metric labels, logs and JSON output. They are
//! part of what operators build dashboards on: add names, never change them.

use crate::pb;

pub fn nack_reason(r: pb::NackReason) -> &'static str {
    match r {
        pb::NackReason::Unspecified => "unspecified",
        pb::NackReason::Undecodable => "undecodable",
        pb::NackReason::TooManyRecords => "too_many_records",
        pb::NackReason::FieldTooLong => "field_too_long",
        pb::NackReason::InvalidRecord => "invalid_record",
        pb::NackReason::SinkRejected => "sink_rejected",
    }
}

pub fn reject_reason(r: pb::RejectReason) -> &'static str {
    match r {
        pb::RejectReason::Unspecified => "unspecified",
        pb::RejectReason::Auth => "auth",
        pb::RejectReason::Overloaded => "overloaded",
        pb::RejectReason::Draining => "draining",
        pb::RejectReason::UnsupportedVersion => "unsupported_version",
        pb::RejectReason::BadHello => "bad_hello",
        pb::RejectReason::SinkUnavailable => "sink_unavailable",
    }
}

/// The name of a `SourceKind` given as its wire value (unknown values name as "unspecified").
pub fn source_kind(kind: i32) -> &'static str {
    match pb::SourceKind::try_from(kind).unwrap_or_default() {
        pb::SourceKind::Unspecified => "unspecified",
        pb::SourceKind::Socket => "socket",
        pb::SourceKind::Interface => "interface",
        pb::SourceKind::NetflowV5 => "netflow_v5",
        pb::SourceKind::NetflowV9 => "netflow_v9",
        pb::SourceKind::Ipfix => "ipfix",
        pb::SourceKind::Synthetic => "synthetic",
        pb::SourceKind::SocketBpf => "socket_bpf",
    }
}

/// The name of a `ServerSide` given as its wire value.
pub fn server_side(side: i32) -> &'static str {
    match pb::ServerSide::try_from(side).unwrap_or_default() {
        pb::ServerSide::Unknown => "unknown",
        pb::ServerSide::Src => "src",
        pb::ServerSide::Dst => "dst",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_wire_names_in_lower_case() {
        // Pinned to prost's generated names, so a renamed enum value cannot slip through.
        for r in [pb::NackReason::Undecodable, pb::NackReason::SinkRejected] {
            assert_eq!(
                format!("NACK_REASON_{}", nack_reason(r).to_uppercase()),
                r.as_str_name()
            );
        }
        for r in [pb::RejectReason::Auth, pb::RejectReason::UnsupportedVersion] {
            assert_eq!(
                format!("REJECT_REASON_{}", reject_reason(r).to_uppercase()),
                r.as_str_name()
            );
        }
        assert_eq!(source_kind(pb::SourceKind::Ipfix as i32), "ipfix");
        assert_eq!(source_kind(999), "unspecified");
    }
}
