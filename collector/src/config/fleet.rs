//! `[fleet]`: what this collector tells meters about its fleet in `Welcome`, and where it finds
//! its peers to learn the fleet's load.
//!
//! Owns: the section's keys, defaults and checks, and the fleet view they make. Must never:
//! resolve or poll anything (`control::fleet_poll` does).

use std::net::SocketAddr;

use ringflow_ops::{ConfigError, check_range, valid_dns_name};
use ringflow_proto::pb;
use serde::Deserialize;

/// Most fleet members a config may list: what a meter puts on its ring at most.
pub const MAX_FLEET_MEMBERS: usize = 512;

/// What this collector tells meters about its fleet in `Welcome`, and where it finds its peers
/// to learn the fleet's load (bounded load, `admission.bounded_load_epsilon`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// The address meters dial to reach this collector, `host:port`.
    pub advertise: Option<String>,
    /// Every collector of the fleet, as meters dial them (`host:port`). Sent to each meter in
    /// `Welcome`, so a meter whose DNS told it about only one collector still learns them all and
    /// spreads itself over the whole fleet. Their hosts are also peers polled for their load.
    pub members: Vec<String>,
    /// The fleet's DNS name, the one meters use. Each load poll resolves it with the system
    /// resolver and polls every address it gives. Default: unset.
    pub name: Option<String>,
    /// Port of the peers' admin servers, where `GET /load` is asked. Default 0: the port of this
    /// collector's own `admin_listen` (a fleet configured alike).
    pub load_admin_port: u16,
    /// How often the peers are polled for their load; a peer silent for three intervals is
    /// forgotten. Default 1 s: a herd fills a collector by at most one interval's arrivals
    /// before the others' counts catch up, and a poll is one small HTTP request per peer.
    pub load_poll_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            advertise: None,
            members: Vec::new(),
            name: None,
            load_admin_port: 0,
            load_poll_ms: 1_000,
        }
    }
}

impl FleetConfig {
    /// The fleet view sent in `Welcome`: the members and this collector's own address.
    pub fn view(&self, collector_id: &str) -> Vec<pb::FleetMember> {
        let mut view: Vec<pb::FleetMember> = self
            .members
            .iter()
            .filter(|m| Some(*m) != self.advertise.as_ref())
            .map(|m| pb::FleetMember {
                collector_id: String::new(),
                address: m.clone(),
                not_answering: false,
            })
            .collect();
        if let Some(own) = &self.advertise {
            view.push(pb::FleetMember {
                collector_id: collector_id.to_owned(),
                address: own.clone(),
                not_answering: false,
            });
        }
        view
    }

    /// Checks `[fleet]`; `collector_id` is this collector's, which the view sent in `Welcome`
    /// carries (so the view's size is checked as it will be sent).
    pub fn validate(&self, collector_id: &str) -> Result<(), ConfigError> {
        if self.members.len() > MAX_FLEET_MEMBERS {
            return Err(ConfigError::invalid(
                "fleet.members",
                format!("lists more than {MAX_FLEET_MEMBERS} collectors"),
            ));
        }
        self.check_addresses()?;
        if let Some(name) = &self.name
            && !valid_dns_name(name)
        {
            return Err(ConfigError::invalid(
                "fleet.name",
                format!("{name:?} is not a DNS name (labels of a-z, 0-9, '-', '_', dot-separated)"),
            ));
        }
        check_range("fleet.load_poll_ms", self.load_poll_ms, 100, 60_000)?;
        self.check_view_fits(collector_id)
    }

    /// `advertise` and every member are `host:port`.
    fn check_addresses(&self) -> Result<(), ConfigError> {
        let advertise = self.advertise.iter().map(|a| ("fleet.advertise".to_owned(), a));
        let members = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("fleet.members[{i}]"), m));
        for (key, address) in advertise.chain(members) {
            if !valid_host_port(address) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{address:?} is not \"host:port\" (IPv6: \"[::1]:4433\")"),
                ));
            }
        }
        Ok(())
    }

    /// The view leaves half of a control frame for the rest of `Welcome`.
    fn check_view_fits(&self, collector_id: &str) -> Result<(), ConfigError> {
        let view = prost::Message::encoded_len(&pb::Welcome {
            fleet: self.view(collector_id),
            ..Default::default()
        });
        if view > ringflow_proto::frame::MAX_COLLECTOR_CONTROL_FRAME_BYTES / 2 {
            return Err(ConfigError::invalid(
                "fleet.members",
                format!(
                    "the fleet view takes {view} bytes, too much for a Welcome: list fewer or shorter addresses"
                ),
            ));
        }
        Ok(())
    }
}

/// "host:port" or "[v6]:port" with a non-empty host and a numeric port.
fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok(),
        None => false,
    }
}
