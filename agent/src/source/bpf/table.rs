//! The BPF tier's flows between the kernel's map and the records: what each flow moved since it
//! was last reported, when a flow has ended, which socket of a flow inside the host reports it.
//! Sans-IO: given map entries, end events, owners and a clock reading.
//!
//! Owns: the counters already reported per flow key, the owners known per socket cookie, the
//! sockets released, and the rules: a flow is reported as per-sweep deltas while it lives and
//! its rest when it ends (the programs' end event, or here: a UDP flow of a released socket at
//! once, a TCP flow of a released socket quiet for `quiet_ns`, any flow idle for `idle_ns`);
//! the end of a flow deletes its map entry (the caller does it). Must never: report bytes twice,
//! or do I/O.
//!
//! Which end reports: TCP: the end that sent the SYN (seen by the programs) is the client; for
//! connections older than the meter the end with the higher port is taken as the client. UDP:
//! the socket that sent the flow's first packet is the client. A flow with both ends on this
//! host (its peer a loopback address or this socket's own address) is reported by the client's
//! socket only.

use std::collections::HashMap;
use std::sync::Arc;

use ringflow_proto::pb;

use super::wire::{
    EndEvent, EndKind, FLOW_CLOSE_TRACKED, FLOW_ENDED, FLOW_INITIATOR, FLOW_ROLE_KNOWN, FlowKey, FlowValue,
    IPPROTO_TCP, IPPROTO_UDP, addr,
};
use crate::source::addr_bytes;
use crate::source::owner::Owner;
use ringflow_proto::community_id;

/// A sweep reads the map at `mono_ns` (CLOCK_MONOTONIC, the programs' clock) and `wall_ns`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub mono_ns: u64,
    pub wall_ns: u64,
}

impl Clock {
    /// The wall time of monotonic instant `mono`.
    fn wall(&self, mono: u64) -> u64 {
        (i128::from(mono) + i128::from(self.wall_ns) - i128::from(self.mono_ns))
            .clamp(0, i128::from(u64::MAX)) as u64
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    payload_out: u64,
    payload_in: u64,
    packets_out: u64,
    packets_in: u64,
    ip_bytes_out: u64,
    ip_bytes_in: u64,
}

impl Counters {
    fn of(v: &FlowValue) -> Self {
        Self {
            payload_out: v.payload_out,
            payload_in: v.payload_in,
            packets_out: v.packets_out,
            packets_in: v.packets_in,
            ip_bytes_out: v.ip_bytes_out,
            ip_bytes_in: v.ip_bytes_in,
        }
    }

    fn since(&self, before: &Self) -> Self {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Self {
            payload_out: d(self.payload_out, before.payload_out),
            payload_in: d(self.payload_in, before.payload_in),
            packets_out: d(self.packets_out, before.packets_out),
            packets_in: d(self.packets_in, before.packets_in),
            ip_bytes_out: d(self.ip_bytes_out, before.ip_bytes_out),
            ip_bytes_in: d(self.ip_bytes_in, before.ip_bytes_in),
        }
    }

    fn moved(&self) -> bool {
        self.packets_out > 0 || self.packets_in > 0
    }
}

/// A flow as last reported.
struct Reported {
    counters: Counters,
    /// Monotonic time up to which it was reported (its first packet's, before any report).
    until_ns: u64,
    /// Its map entry's first packet: an entry made again under the same key (after the flow
    /// ended) is a new flow, counted from zero.
    first_ns: u64,
    /// Sweeps in a row that did not list it.
    missed: u8,
}

impl Reported {
    fn new(value: &FlowValue) -> Self {
        Self {
            counters: Counters::default(),
            until_ns: value.first_ns,
            first_ns: value.first_ns,
            missed: 0,
        }
    }
}

/// A flow is remembered for this many complete sweeps after its entry left the map: a sweep
/// that ended it deletes the entry, and the programs may have ended it meanwhile, telling its
/// final counters, which count from what was reported.
const MISSED_SWEEPS_TO_FORGET: u8 = 3;

/// A released socket is remembered at least this long after its last flow was followed.
const RELEASED_KEPT_NS: u64 = 10_000_000_000;

/// What a sweep produced.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    pub records: Vec<pb::FlowRecord>,
    /// Flows that ended: the caller deletes them from the map.
    pub ended: Vec<FlowKey>,
}

pub struct FlowTable {
    include_loopback: bool,
    idle_ns: u64,
    quiet_ns: u64,
    reported: HashMap<FlowKey, Reported>,
    /// Owners by socket cookie (`None`: asked for, not known).
    owners: HashMap<u64, Option<Arc<Owner>>>,
    /// Sockets released by their process, with when (monotonic).
    released: HashMap<u64, u64>,
    max_sockets: usize,
}

impl FlowTable {
    pub fn new(include_loopback: bool, idle_ns: u64, quiet_ns: u64, max_sockets: usize) -> Self {
        Self {
            include_loopback,
            idle_ns,
            quiet_ns,
            reported: HashMap::new(),
            owners: HashMap::new(),
            released: HashMap::new(),
            max_sockets: max_sockets.max(1),
        }
    }

    /// Flows being followed now.
    pub fn len(&self) -> usize {
        self.reported.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reported.is_empty()
    }

    /// Whether the owner of socket `cookie` was already asked for (found or not).
    pub fn asked_owner(&self, cookie: u64) -> bool {
        self.owners.contains_key(&cookie)
    }

    /// Whether the owner of socket `cookie` is known.
    pub fn has_owner(&self, cookie: u64) -> bool {
        self.owners.get(&cookie).is_some_and(Option::is_some)
    }

    /// Sets the owner of socket `cookie` (`None`: not known) unless one is set.
    pub fn set_owner(&mut self, cookie: u64, owner: Option<Arc<Owner>>) {
        if self.owners.len() >= self.max_sockets.saturating_mul(2) {
            // Sockets whose flows are all gone keep no owner.
            let live: std::collections::HashSet<u64> = self.reported.keys().map(|k| k.cookie).collect();
            self.owners.retain(|c, _| live.contains(c));
        }
        let slot = self.owners.entry(cookie).or_insert(None);
        if slot.is_none() {
            *slot = owner;
        }
    }

    /// Takes the map's entries as read at `clock` (`complete`: the walk read the whole map): a
    /// record for every flow that moved since it was last reported, and the flows that ended.
    pub fn on_sweep(
        &mut self,
        entries: &[(FlowKey, FlowValue)],
        clock: Clock,
        complete: bool,
    ) -> SweepOutcome {
        let mut out = SweepOutcome::default();
        if complete {
            for r in self.reported.values_mut() {
                r.missed = r.missed.saturating_add(1);
            }
        }
        for (key, value) in entries {
            let ended = self.has_ended(key, value, clock.mono_ns);
            if !self.reported.contains_key(key) && !self.has_owner(key.cookie) && !ended {
                // Its socket may have been released (its owner deleted) since the map was read:
                // its end, on its way, names the owner and reports everything. Else the next
                // sweep reports it without one.
                self.reported.insert(*key, Reported::new(value));
                continue;
            }
            if let Some(r) = self.report(key, value, clock) {
                out.records.push(r);
            }
            if ended {
                // Remembered until missed (see MISSED_SWEEPS_TO_FORGET), not forgotten now.
                out.ended.push(*key);
            }
        }
        self.reported.retain(|_, r| r.missed < MISSED_SWEEPS_TO_FORGET);
        // Owners are kept for sockets with flows to follow; a released socket is remembered
        // a while after its last flow (one still unread may follow in the next sweep).
        let live: std::collections::HashSet<u64> = self.reported.keys().map(|k| k.cookie).collect();
        let (now, keep_ns) = (clock.mono_ns, RELEASED_KEPT_NS.max(self.quiet_ns));
        self.released
            .retain(|c, at| live.contains(c) || now.saturating_sub(*at) < keep_ns);
        self.owners.retain(|c, _| live.contains(c));
        out
    }

    /// Takes an end the programs told: the flow they ended, with its final counters (its rest is
    /// reported now), and for a released socket, its other flows end at the next sweep.
    pub fn on_end(&mut self, event: &EndEvent, clock: Clock) -> Option<pb::FlowRecord> {
        let record = event.flow.as_ref().and_then(|(key, value)| {
            let r = self.report(key, value, clock);
            self.reported.remove(key);
            r
        });
        match event.kind {
            // Only a socket with flows left to end is remembered.
            EndKind::Released if event.more_flows => {
                if self.released.len() < self.max_sockets.saturating_mul(2) {
                    self.released.insert(event.cookie, event.at_ns);
                }
            }
            EndKind::Released => {}
            EndKind::Closed => {
                self.owners.remove(&event.cookie);
            }
        }
        record
    }

    fn has_ended(&self, key: &FlowKey, value: &FlowValue, now: u64) -> bool {
        if value.flags & FLOW_ENDED != 0 {
            return true;
        }
        let quiet_for = now.saturating_sub(value.last_ns);
        // A TCP connection whose end the programs follow ends by it, however long it idles.
        if quiet_for >= self.idle_ns && value.flags & FLOW_CLOSE_TRACKED == 0 {
            return true;
        }
        match self.released.get(&key.cookie) {
            // A released UDP socket sends nothing more.
            Some(_) if key.proto == IPPROTO_UDP => true,
            Some(_) => quiet_for >= self.quiet_ns,
            None => false,
        }
    }

    /// What `value` moved since `key` was last reported, as a record (when this socket reports
    /// it and something moved); remembers it as reported either way.
    fn report(&mut self, key: &FlowKey, value: &FlowValue, clock: Clock) -> Option<pb::FlowRecord> {
        let now = Counters::of(value);
        let r = self.reported.entry(*key).or_insert_with(|| Reported::new(value));
        if r.first_ns != value.first_ns {
            *r = Reported::new(value);
        }
        r.missed = 0;
        let moved = now.since(&r.counters);
        if !moved.moved() {
            return None;
        }
        r.counters = now;
        let until = value.last_ns.max(r.until_ns);
        let since = std::mem::replace(&mut r.until_ns, until);
        let owner = self.owners.get(&key.cookie).cloned().flatten();
        let role = Role::of(key.proto, value);
        if !role.reports || (!self.include_loopback && addr(&value.remote).is_loopback()) {
            return None;
        }
        let mut record = pb::FlowRecord {
            start_unix_nanos: clock.wall(since.min(value.last_ns)),
            end_unix_nanos: clock.wall(value.last_ns),
            src_addr: addr_bytes(addr(&value.local)),
            dst_addr: addr_bytes(addr(&value.remote)),
            src_port: value.local_port.into(),
            dst_port: value.remote_port.into(),
            ip_protocol: key.proto.into(),
            bytes_from_src: moved.payload_out,
            packets_from_src: moved.packets_out,
            bytes_from_dst: moved.payload_in,
            packets_from_dst: moved.packets_in,
            ip_bytes_from_src: moved.ip_bytes_out,
            ip_bytes_from_dst: moved.ip_bytes_in,
            source: pb::SourceKind::SocketBpf as i32,
            server: if role.initiator {
                pb::ServerSide::Dst as i32
            } else {
                pb::ServerSide::Src as i32
            },
            ..Default::default()
        };
        if let Some(owner) = owner {
            owner.apply(&mut record);
        }
        community_id::stamp(&mut record);
        Some(record)
    }
}

/// Which end a socket is of its flow, and whether it reports it.
struct Role {
    /// This socket opened the flow (it is the client).
    initiator: bool,
    reports: bool,
}

impl Role {
    fn of(proto: u8, v: &FlowValue) -> Self {
        let initiator = if proto == IPPROTO_TCP && v.flags & FLOW_ROLE_KNOWN == 0 {
            // Established before the meter: the ephemeral (higher) port is the client's.
            v.local_port > v.remote_port
        } else {
            v.flags & FLOW_INITIATOR != 0
        };
        let (local, remote) = (addr(&v.local), addr(&v.remote));
        let inside = remote.is_loopback() || remote == local;
        Self {
            initiator,
            reports: !inside || initiator,
        }
    }
}

#[cfg(test)]
mod tests;
