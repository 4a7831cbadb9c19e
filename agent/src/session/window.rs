//! The session's sans-IO core: which batches are in flight on a data stream, and what an ack or
//! nack from the collector settles.
//!
//! Owns: the window rule (at most `limit` unsettled batches, the limit `Welcome` grants) and the
//! checks that catch a collector acking what was never sent. Must never: do I/O or read a clock.

use std::collections::VecDeque;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("ack up to seq {up_to}, but the last batch sent on this stream was {last_sent:?}")]
    AckBeyondSent { up_to: u64, last_sent: Option<u64> },
    #[error("nack for seq {seq}, which is not in flight on this stream")]
    NackNotInFlight { seq: u64 },
}

#[derive(Debug)]
pub struct Window {
    limit: usize,
    /// (seq, records) of each batch in flight.
    in_flight: VecDeque<(u64, u32)>,
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

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Records that batch `seq` (of `records` records) was written. Seqs increase along a stream.
    pub fn sent(&mut self, seq: u64, records: u32) {
        debug_assert!(self.last_sent.is_none_or(|l| l < seq));
        self.in_flight.push_back((seq, records));
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

    /// Settles every batch up to `up_to`; returns how many.
    pub fn ack(&mut self, up_to: u64) -> Result<usize, WindowError> {
        self.check_ack(up_to)?;
        let before = self.in_flight.len();
        while self.in_flight.front().is_some_and(|&(s, _)| s <= up_to) {
            self.in_flight.pop_front();
        }
        Ok(before - self.in_flight.len())
    }

    /// The record count of in-flight batch `seq`, if it is in flight (a nack is valid only then).
    pub fn check_nack(&self, seq: u64) -> Result<u32, WindowError> {
        self.in_flight
            .iter()
            .find(|&&(s, _)| s == seq)
            .map(|&(_, records)| records)
            .ok_or(WindowError::NackNotInFlight { seq })
    }

    /// Settles batch `seq`, refused for good; returns its record count.
    pub fn nack(&mut self, seq: u64) -> Result<u32, WindowError> {
        let i = self
            .in_flight
            .iter()
            .position(|&(s, _)| s == seq)
            .ok_or(WindowError::NackNotInFlight { seq })?;
        Ok(self.in_flight.remove(i).map_or(0, |(_, r)| r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_fills_and_acks_release_it() {
        let mut w = Window::new(2);
        w.sent(10, 1);
        w.sent(11, 1);
        assert!(!w.has_room());
        assert_eq!(w.ack(10), Ok(1));
        assert!(w.has_room());
        w.sent(12, 1);
        assert_eq!(w.ack(10), Ok(0), "a repeated ack settles nothing");
        assert_eq!(w.ack(12), Ok(2));
        assert!(w.is_empty());
    }

    #[test]
    fn nack_then_cumulative_ack() {
        let mut w = Window::new(8);
        for s in 1..=4 {
            w.sent(s, 1);
        }
        assert_eq!(w.nack(2), Ok(1));
        assert_eq!(w.ack(3), Ok(2));
        assert_eq!(w.in_flight(), 1);
    }

    #[test]
    fn acks_and_nacks_for_unsent_batches_are_protocol_errors() {
        let mut w = Window::new(8);
        assert!(w.ack(1).is_err());
        w.sent(5, 1);
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
