//! Interface counters: the `/proc/net/dev` format and the per-interface table that turns its
//! lifetime counters into per-interval deltas. Sans-IO: it is given the file's text and a clock
//! reading.
//!
//! Owns: parsing (a line it cannot read is an error naming the line, never a guess), counter
//! wrap and reset, interfaces appearing and vanishing, the cap on interfaces tracked. Must never:
//! report a negative or made-up delta.

use std::collections::HashMap;

use ringflow_proto::pb;

/// The counters of one interface that are reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line} of the interface counters is not \"NAME: 16 numbers\": {why}")]
pub struct ParseError {
    pub line: usize,
    pub why: String,
}

/// Parses `/proc/net/dev`: two header lines, then `NAME: rx(8 numbers) tx(8 numbers)`.
pub fn parse(text: &str) -> Result<Vec<(String, InterfaceCounters)>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(2) {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |why: String| ParseError { line: i + 1, why };
        let (name, numbers) = line
            .rsplit_once(':')
            .ok_or_else(|| fail("no ':' after the interface name".into()))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(fail("empty interface name".into()));
        }
        let values: Vec<u64> = numbers
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| fail(format!("{e}")))?;
        if values.len() < 16 {
            return Err(fail(format!("{} numbers", values.len())));
        }
        out.push((
            name.to_owned(),
            InterfaceCounters {
                rx_bytes: values[0],
                rx_packets: values[1],
                rx_errors: values[2],
                rx_drops: values[3],
                tx_bytes: values[8],
                tx_packets: values[9],
                tx_errors: values[10],
                tx_drops: values[11],
            },
        ));
    }
    Ok(out)
}

/// What a counter moved from `before` to `now`. Counters only grow, so a smaller value means
/// either a 32-bit counter that wrapped (it was in the upper half of the 32-bit range) or a
/// counter that was reset (the interface was re-created, the driver reloaded): then it counts
/// from zero.
pub fn counter_delta(before: u64, now: u64) -> u64 {
    const U32_RANGE: u64 = 1 << 32;
    if now >= before {
        now - before
    } else if (U32_RANGE / 2..U32_RANGE).contains(&before) && now < U32_RANGE / 2 {
        now + U32_RANGE - before
    } else {
        now
    }
}

impl InterfaceCounters {
    fn since(&self, before: &InterfaceCounters) -> InterfaceCounters {
        let d = counter_delta;
        InterfaceCounters {
            rx_bytes: d(before.rx_bytes, self.rx_bytes),
            rx_packets: d(before.rx_packets, self.rx_packets),
            rx_errors: d(before.rx_errors, self.rx_errors),
            rx_drops: d(before.rx_drops, self.rx_drops),
            tx_bytes: d(before.tx_bytes, self.tx_bytes),
            tx_packets: d(before.tx_packets, self.tx_packets),
            tx_errors: d(before.tx_errors, self.tx_errors),
            tx_drops: d(before.tx_drops, self.tx_drops),
        }
    }
}

#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub records: Vec<pb::FlowRecord>,
    /// Interfaces not tracked because the table was at its cap.
    pub untracked: u64,
}

pub struct InterfaceTable {
    max_interfaces: usize,
    last: HashMap<String, InterfaceCounters>,
    last_read_nanos: Option<u64>,
}

impl InterfaceTable {
    pub fn new(max_interfaces: usize) -> Self {
        Self {
            max_interfaces,
            last: HashMap::new(),
            last_read_nanos: None,
        }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Takes one read made at `now_nanos`; returns a record per interface whose counters moved.
    /// The first read is the baseline. An interface that appears later is new since the
    /// previous read (its counters started at zero then); one that vanished is forgotten, so
    /// if it comes back it starts over.
    pub fn on_read(&mut self, read: Vec<(String, InterfaceCounters)>, now_nanos: u64) -> ReadOutcome {
        let baseline = self.last_read_nanos.is_none();
        let since = self.last_read_nanos.unwrap_or(now_nanos).min(now_nanos);
        self.last_read_nanos = Some(now_nanos);
        let mut outcome = ReadOutcome::default();
        let mut seen = HashMap::with_capacity(read.len());
        for (name, now) in read {
            let moved = match self.last.remove(&name) {
                Some(before) => now.since(&before),
                None if seen.len() >= self.max_interfaces => {
                    outcome.untracked += 1;
                    continue;
                }
                None if baseline => InterfaceCounters::default(),
                None => now,
            };
            if moved != InterfaceCounters::default() {
                outcome.records.push(record(&name, &moved, since, now_nanos));
            }
            seen.insert(name, now);
        }
        self.last = seen;
        outcome
    }
}

fn record(name: &str, moved: &InterfaceCounters, since: u64, now: u64) -> pb::FlowRecord {
    pb::FlowRecord {
        start_unix_nanos: since,
        end_unix_nanos: now,
        bytes_from_src: moved.tx_bytes,
        packets_from_src: moved.tx_packets,
        bytes_from_dst: moved.rx_bytes,
        packets_from_dst: moved.rx_packets,
        tx_errors: moved.tx_errors,
        rx_errors: moved.rx_errors,
        tx_drops: moved.tx_drops,
        rx_drops: moved.rx_drops,
        interface: name.to_owned(),
        source: pb::SourceKind::Interface as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    fn dev(lines: &[(&str, [u64; 8])]) -> String {
        let mut text = HEADER.to_owned();
        for (name, [rb, rp, re, rd, tb, tp, te, td]) in lines {
            text += &format!("{name:>6}: {rb} {rp} {re} {rd} 0 0 0 0 {tb} {tp} {te} {td} 0 0 0 0\n");
        }
        text
    }

    #[test]
    fn parses_a_real_shaped_file() {
        let text = format!(
            "{HEADER}    lo: 4021 45 0 0 0 0 0 0 4021 45 0 0 0 0 0 0\n  eth0: 987654321 812345 3 17 0 0 0 12 123456789 712345 1 2 0 0 0 0\n"
        );
        let got = parse(&text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "lo");
        assert_eq!(
            got[1].1,
            InterfaceCounters {
                rx_bytes: 987_654_321,
                rx_packets: 812_345,
                rx_errors: 3,
                rx_drops: 17,
                tx_bytes: 123_456_789,
                tx_packets: 712_345,
                tx_errors: 1,
                tx_drops: 2,
            }
        );
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        let err = parse(&format!("{HEADER}  eth0 1 2 3\n")).unwrap_err();
        assert_eq!(err.line, 3);
        let err = parse(&format!("{HEADER}  eth0: 1 2 3\n")).unwrap_err();
        assert!(err.why.contains("3 numbers"), "{err}");
        let err = parse(&format!(
            "{HEADER}  eth0: 1 2 x 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn a_32_bit_wrap_and_a_reset_are_told_apart() {
        assert_eq!(counter_delta(100, 250), 150);
        assert_eq!(counter_delta(u32::MAX as u64 - 9, 20), 30, "wrapped");
        assert_eq!(counter_delta(1_000_000, 300), 300, "reset: counts from zero");
        assert_eq!(
            counter_delta(u64::from(u32::MAX) + 5_000, 70),
            70,
            "a 64-bit counter reset"
        );
    }

    #[test]
    fn deltas_over_a_wrap_with_an_interface_vanishing_and_another_appearing() {
        let mut t = InterfaceTable::new(16);
        let near_wrap = u32::MAX as u64 - 999;
        let first = t.on_read(
            parse(&dev(&[
                ("lo", [100, 1, 0, 0, 100, 1, 0, 0]),
                ("eth0", [near_wrap, 10, 0, 0, 5_000, 20, 0, 0]),
                ("wg0", [7, 7, 0, 0, 7, 7, 0, 0]),
            ]))
            .unwrap(),
            1_000,
        );
        assert!(first.records.is_empty(), "the first read is the baseline");
        let second = t.on_read(
            parse(&dev(&[
                ("lo", [100, 1, 0, 0, 100, 1, 0, 0]),
                ("eth0", [2_000, 15, 1, 2, 6_500, 25, 3, 4]),
                ("veth9", [300, 3, 0, 0, 400, 4, 0, 0]),
            ]))
            .unwrap(),
            2_000,
        );
        let r = &second.records;
        assert_eq!(r.len(), 2, "lo did not move; wg0 vanished; {r:?}");
        let eth0 = r.iter().find(|r| r.interface == "eth0").unwrap();
        assert_eq!(eth0.bytes_from_dst, 3_000, "received across the 32-bit wrap");
        assert_eq!(eth0.packets_from_dst, 5);
        assert_eq!((eth0.bytes_from_src, eth0.packets_from_src), (1_500, 5));
        assert_eq!(
            (eth0.rx_errors, eth0.rx_drops, eth0.tx_errors, eth0.tx_drops),
            (1, 2, 3, 4)
        );
        assert_eq!((eth0.start_unix_nanos, eth0.end_unix_nanos), (1_000, 2_000));
        assert_eq!(eth0.source, pb::SourceKind::Interface as i32);
        let veth = r.iter().find(|r| r.interface == "veth9").unwrap();
        assert_eq!(
            (veth.bytes_from_dst, veth.bytes_from_src),
            (300, 400),
            "new since the last read"
        );
        assert_eq!(t.len(), 3);
        // wg0 comes back, re-created: its counters started over.
        let third = t.on_read(
            parse(&dev(&[("wg0", [50, 1, 0, 0, 60, 1, 0, 0])])).unwrap(),
            3_000,
        );
        assert_eq!(third.records.len(), 1);
        assert_eq!(third.records[0].bytes_from_dst, 50);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_table_is_capped() {
        let mut t = InterfaceTable::new(2);
        let read = || {
            parse(&dev(&[
                ("a", [1, 1, 0, 0, 1, 1, 0, 0]),
                ("b", [1, 1, 0, 0, 1, 1, 0, 0]),
                ("c", [1, 1, 0, 0, 1, 1, 0, 0]),
            ]))
            .unwrap()
        };
        assert_eq!(t.on_read(read(), 1).untracked, 1);
        assert_eq!(t.len(), 2);
    }
}
