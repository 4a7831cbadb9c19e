//! The control plane: everything that decides who is served and keeps the fleet healthy, on
//! the control runtime. The QUIC listener's setup ([`listener`]); the accept loop and its
//! decision on each connection attempt before the handshake ([`accept`], by the policy in
//! [`admission`], from the counts in [`load`]); `Hello` and authentication ([`auth`], with its
//! per-address throttle [`auth_throttle`]); the control stream of each session and its drain
//! ([`session`]); the bounded-load view of the fleet and the peer poll that feeds it
//! ([`fleet_load`], [`fleet_poll`]); the admin HTTP server ([`admin`]) and the kernel's view of
//! the QUIC socket ([`udp_stats`]); what systemd is told ([`systemd`]: ready, stopping, alive).
//!
//! Must never: wait on the data plane. It hands each data stream to [`crate::data`] and reads the
//! data plane's state only through counters and the sink's health watch.

pub mod accept;
pub mod accept_rate;
pub mod admin;
pub mod admission;
pub mod auth;
pub mod auth_throttle;
pub mod fleet_load;
pub mod fleet_poll;
pub mod listener;
pub mod load;
pub mod session;
pub mod systemd;
pub mod udp_stats;
