//! `netflow` source: a UDP listener for NetFlow v5, v9 and IPFIX exporters (routers, switches,
//! softflowd, pmacct); each datagram is decoded ([`decode`]) into flow records.
//!
//! Owns: the socket (bound before the meter reports started, with a large kernel receive
//! buffer), per-datagram counting. Must never: wait for the pipeline (records are offered,
//! dropped and counted when it is behind) or stop on bad input (a bad datagram is counted by
//! reason and the next one is read).

mod clock;
pub mod decode;
mod fields;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::{RecordsTx, offer_all};
use crate::config::NetflowConfig;
use crate::observe::Progress;
use crate::telemetry::events::{Event, NetflowDropped, NetflowExportTimed, NetflowReceiveFailed};
use crate::telemetry::{MeterMetrics, SourceLabel};
use decode::Decoder;

pub const NAME: &str = crate::telemetry::source::NETFLOW;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// How often records waiting for their exporter's init time are checked for age.
const EXPIRE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "cannot listen for NetFlow on {addr}: {source} (is another collector using the port? set sources.netflow.listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Decoder(#[from] decode::DecoderConfigError),
}

/// The bound listener, ready to run.
pub struct NetflowListener {
    socket: UdpSocket,
    decoder: Decoder,
}

impl NetflowListener {
    /// Binds `config.listen` (must be called inside the runtime).
    pub fn bind(config: &NetflowConfig) -> Result<Self, ListenError> {
        let addr = config.listen;
        let bind_error = |source| ListenError::Bind { addr, source };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(bind_error)?;
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = socket.set_recv_buffer_size(config.receive_buffer_bytes);
        socket.set_nonblocking(true).map_err(bind_error)?;
        socket.bind(&addr.into()).map_err(bind_error)?;
        let socket = UdpSocket::from_std(socket.into()).map_err(bind_error)?;
        Ok(Self {
            socket,
            decoder: Decoder::new(config)?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub async fn run(
        mut self,
        out: RecordsTx,
        metrics: Arc<MeterMetrics>,
        progress: Progress,
        stop: CancellationToken,
    ) {
        // Looked up once: the loop runs per datagram.
        let label = SourceLabel { source: NAME };
        let packets = metrics.sources.source_packets.get_or_create(&label).clone();
        let exporters_forgotten = metrics.sources.source_flows_dropped.get_or_create(&label).clone();
        let exporters = metrics.sources.source_flows_tracked.get_or_create(&label).clone();
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (n, from) = tokio::select! {
                _ = stop.cancelled() => return,
                _ = expire.tick(), if self.decoder.waiting() > 0 => {
                    let records = self.decoder.expire(crate::unix_nanos_now());
                    self.count_export_timed(&metrics);
                    if offer_all(&out, records).is_err() {
                        return;
                    }
                    progress.notify();
                    continue;
                }
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok(r) => r,
                    Err(error) => {
                        // ICMP errors and the like: the socket is still good.
                        NetflowReceiveFailed { error: &error }.emit(&metrics);
                        continue;
                    }
                },
            };
            packets.inc();
            let decoded = self.decoder.decode(from, &buffer[..n], crate::unix_nanos_now());
            if let Some(reason) = decoded.dropped {
                NetflowDropped {
                    reason: reason.label(),
                }
                .emit(&metrics);
            }
            self.count_export_timed(&metrics);
            let evicted = self.decoder.take_evicted_exporters();
            if evicted > 0 {
                exporters_forgotten.inc_by(evicted);
            }
            exporters.set(self.decoder.exporters() as i64);
            if offer_all(&out, decoded.records).is_err() {
                return;
            }
            progress.notify();
        }
    }

    fn count_export_timed(&mut self, metrics: &MeterMetrics) {
        let records = self.decoder.take_export_timed();
        if records > 0 {
            NetflowExportTimed { records }.emit(metrics);
        }
    }
}
