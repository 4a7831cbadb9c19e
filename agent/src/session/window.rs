//! The session's sans-IO core: which batches are in flight on a data stream, and what an ack or
//! nack from the collector settles.
//!
//! Owns: the window rule (at most `limit` unsettled batches, the limit `Welcome` grants) and the
//! checks that catch a collector acking what was never sent. Must never: do I/O or read a clock
//! (the caller passes the time a batch was sent in, and gets it back when the batch settles).

use std::collections::VecDeque;

use tokio::time::Instant;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("ack up to seq {up_to}, but the last batch sent on this stream was {last_sent:?}")]
    AckBeyondSent { up_to: u64, last_sent: Option<u64> },
    #[error("nack for seq {seq}, which is not in flight on this stream")]
    NackNotInFlight { seq: u64 },
}

/// A batch written to the stream and not yet acked or nacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub seq: u64,
    pub records: u32,
    /// When it was written (given by the caller).
    pub sent_at: Instant,
}

#[derive(Debug)]
pub struct Window {
    limit: usize,
    in_flight: VecDeque<InFlight>,
    last_sent: Option<u64>,
}

impl Window {
    /// A window of `limit` batches (at least one).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            in_flight: VecDeque::new(),
            last_sent: None,
        }
    }

    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.limit
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// When the oldest batch in flight was sent.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.in_flight.front().map(|b| b.sent_at)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Records that batch `seq` (of `records` records) was written at `sent_at`. Seqs increase
    /// along a stream.
    pub fn sent(&mut self, seq: u64, records: u32, sent_at: Instant) {
        debug_assert!(self.last_sent.is_none_or(|l| l < seq));
        self.in_flight.push_back(InFlight {
            seq,
            records,
            sent_at,
        });
        self.last_sent = Some(seq);
    }

    /// Whether an ack up to `up_to` is valid: it must not cover a batch never sent.
    pub fn check_ack(&self, up_to: u64) -> Result<(), WindowError> {
        if self.last_sent.is_none_or(|l| up_to > l) {
            return Err(WindowError::AckBeyondSent {
                up_to,
                last_sent: self.last_sent,
            });
        }
        Ok(())
    }

    /// Settles every batch up to `up_to`; returns them, oldest first.
    pub fn ack(&mut self, up_to: u64) -> Result<Vec<InFlight>, WindowError> {
        self.check_ack(up_to)?;
        let settled = self.in_flight.iter().take_while(|b| b.seq <= up_to).count();
        Ok(self.in_flight.drain(..settled).collect())
    }

    /// The record count of in-flight batch `seq`, if it is in flight (a nack is valid only then).
    pub fn check_nack(&self, seq: u64) -> Result<u32, WindowError> {
        self.in_flight
            .iter()
            .find(|b| b.seq == seq)
            .map(|b| b.records)
            .ok_or(WindowError::NackNotInFlight { seq })
    }

    /// Settles batch `seq`, refused for good; returns its record count.
    pub fn nack(&mut self, seq: u64) -> Result<u32, WindowError> {
        let i = self
            .in_flight
            .iter()
            .position(|b| b.seq == seq)
            .ok_or(WindowError::NackNotInFlight { seq })?;
        Ok(self.in_flight.remove(i).map_or(0, |b| b.records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(w: &mut Window, up_to: u64) -> Result<Vec<u64>, WindowError> {
        Ok(w.ack(up_to)?.iter().map(|b| b.seq).collect())
    }

    #[test]
    fn window_fills_and_acks_release_it() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(5);
        let mut w = Window::new(2);
        w.sent(10, 1, t0);
        w.sent(11, 3, t1);
        assert!(!w.has_room());
        assert_eq!(settled(&mut w, 10), Ok(vec![10]));
        assert!(w.has_room());
        w.sent(12, 1, t1);
        assert_eq!(settled(&mut w, 10), Ok(vec![]), "a repeated ack settles nothing");
        let both = w.ack(12).unwrap();
        assert_eq!(
            both[0],
            InFlight {
                seq: 11,
                records: 3,
                sent_at: t1
            },
            "each settled batch comes back with its send time"
        );
        assert_eq!(both.len(), 2);
        assert!(w.is_empty());
    }

    #[test]
    fn nack_then_cumulative_ack() {
        let mut w = Window::new(8);
        for s in 1..=4 {
            w.sent(s, 1, Instant::now());
        }
        assert_eq!(w.nack(2), Ok(1));
        assert_eq!(settled(&mut w, 3), Ok(vec![1, 3]));
        assert_eq!(w.in_flight(), 1);
    }

    #[test]
    fn acks_and_nacks_for_unsent_batches_are_protocol_errors() {
        let mut w = Window::new(8);
        assert!(w.ack(1).is_err());
        w.sent(5, 1, Instant::now());
        assert_eq!(
            w.ack(6),
            Err(WindowError::AckBeyondSent {
                up_to: 6,
                last_sent: Some(5)
            })
        );
        assert_eq!(w.nack(4), Err(WindowError::NackNotInFlight { seq: 4 }));
        assert_eq!(w.check_nack(4), Err(WindowError::NackNotInFlight { seq: 4 }));
        assert_eq!(w.check_nack(5), Ok(1));
        assert!(w.check_ack(6).is_err() && w.check_ack(5).is_ok());
        assert_eq!(w.in_flight(), 1, "checks change nothing");
        assert_eq!(Window::new(0).limit, 1);
    }
}
