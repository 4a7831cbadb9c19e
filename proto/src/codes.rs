//! QUIC application error codes of ringflow/1.
//!
//! Stream codes travel in STOP_SENDING / RESET_STREAM and name why one stream was closed; the
//! connection and every other stream on it go on. Connection codes travel in CONNECTION_CLOSE.
//! The numbers are part of the protocol: add codes, never renumber them.

use quinn::VarInt;

/// Why a single stream was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum StreamCode {
    /// Closed on purpose with nothing wrong.
    Done = 0,
    /// A length prefix announced a frame larger than the session's `max_frame_bytes`. Nothing of
    /// the frame was buffered.
    FrameTooLarge = 0x10,
    /// A frame arrived whole but its body is not the message this stream carries.
    MalformedFrame = 0x11,
    /// A well-formed message that breaks the protocol: the wrong message for this stream, or a
    /// `seq` that does not increase.
    ProtocolViolation = 0x12,
    /// The peer is shutting down; what was not settled must be sent again elsewhere.
    ShuttingDown = 0x13,
    /// The stream ended in the middle of a frame.
    TruncatedFrame = 0x14,
}

impl StreamCode {
    /// All codes, for exhaustive tests and metric label sets.
    pub const ALL: [StreamCode; 6] = [
        StreamCode::Done,
        StreamCode::FrameTooLarge,
        StreamCode::MalformedFrame,
        StreamCode::ProtocolViolation,
        StreamCode::ShuttingDown,
        StreamCode::TruncatedFrame,
    ];

    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }

    pub fn from_varint(code: VarInt) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.varint() == code)
    }

    /// Short stable name, used as a metric label and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamCode::Done => "done",
            StreamCode::FrameTooLarge => "frame_too_large",
            StreamCode::MalformedFrame => "malformed_frame",
            StreamCode::ProtocolViolation => "protocol_violation",
            StreamCode::ShuttingDown => "shutting_down",
            StreamCode::TruncatedFrame => "truncated_frame",
        }
    }
}

/// Why a whole connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ConnectionCode {
    /// Session ended normally.
    Done = 0,
    /// The collector answered `Reject`; the reason is in that message.
    Rejected = 0x1,
    /// The meter did not send `Hello` in time.
    HelloTimeout = 0x2,
    /// The control stream broke the protocol.
    ProtocolViolation = 0x3,
    /// The closing side is shutting down.
    ShuttingDown = 0x4,
    /// The session was drained and the meter moved on.
    Drained = 0x5,
}

impl ConnectionCode {
    pub const ALL: [ConnectionCode; 6] = [
        ConnectionCode::Done,
        ConnectionCode::Rejected,
        ConnectionCode::HelloTimeout,
        ConnectionCode::ProtocolViolation,
        ConnectionCode::ShuttingDown,
        ConnectionCode::Drained,
    ];

    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }

    pub fn from_varint(code: VarInt) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.varint() == code)
    }

    /// Closes `conn` with this code and its reason.
    pub fn close(self, conn: &quinn::Connection) {
        conn.close(self.varint(), self.reason());
    }

    /// Closes every connection of `endpoint` with this code and its reason.
    pub fn close_endpoint(self, endpoint: &quinn::Endpoint) {
        endpoint.close(self.varint(), self.reason());
    }

    /// Reason bytes sent with CONNECTION_CLOSE (short, never secret).
    pub fn reason(self) -> &'static [u8] {
        match self {
            ConnectionCode::Done => b"done",
            ConnectionCode::Rejected => b"rejected",
            ConnectionCode::HelloTimeout => b"hello timeout",
            ConnectionCode::ProtocolViolation => b"protocol violation",
            ConnectionCode::ShuttingDown => b"shutting down",
            ConnectionCode::Drained => b"drained",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for c in StreamCode::ALL {
            assert_eq!(StreamCode::from_varint(c.varint()), Some(c));
        }
        for c in ConnectionCode::ALL {
            assert_eq!(ConnectionCode::from_varint(c.varint()), Some(c));
        }
        assert_eq!(StreamCode::from_varint(VarInt::from_u32(0xdead)), None);
    }

    #[test]
    fn wire_numbers_are_pinned() {
        // These numbers are on the wire: changing one breaks every deployed peer.
        assert_eq!(StreamCode::FrameTooLarge as u32, 0x10);
        assert_eq!(StreamCode::MalformedFrame as u32, 0x11);
        assert_eq!(StreamCode::ProtocolViolation as u32, 0x12);
        assert_eq!(ConnectionCode::Rejected as u32, 0x1);
        assert_eq!(ConnectionCode::HelloTimeout as u32, 0x2);
    }
}
