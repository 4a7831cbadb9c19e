//! The live fleet of a `herd run`: collectors as child processes on 127.0.0.2, 127.0.0.3, ...
//! (one QUIC port, one admin port), the in-process DNS server naming them, and NATS (one server,
//! or a three-node JetStream cluster) or a Kafka (mock) cluster when it is the sink. The collectors poll each other's load (`GET /load` on that admin port, every
//! [`LOAD_POLL_MS`]), so the herd runs with bounded load as a real fleet does.
//!
//! Owns: the collector processes (start, kill, drain and restart, add), what each one is for the
//! sampler (admin address, pid, crashed or down on purpose), and reading back what the fleet
//! stored. Must never: decide when anything happens (the scenario plan does).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use ringflow_proto::pb;

use ringflow_tests::TestBed;
use ringflow_tests::dns::{DnsServer, Records};
use ringflow_tests::kafka::KafkaCluster;
use ringflow_tests::nats::{NatsServer, read_all_with};
use ringflow_tests::nats_cluster::NatsCluster;
use ringflow_tests::process::{CollectorCommand, CollectorProcess, free_tcp_port_on, free_udp_port_on};

/// The NATS stream a herd fleet writes to.
const STREAM: &str = "HERD";
/// The Kafka topic a herd fleet writes to, and its partitions.
const KAFKA_TOPIC: &str = "herd.flows";
const KAFKA_PARTITIONS: i32 = 6;

/// How often each collector polls the others' load (`fleet.load_poll_ms`): twice the default,
/// since a herd run compresses minutes of arrivals into seconds.
pub const LOAD_POLL_MS: u64 = 500;

/// Which sink the collectors write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    File,
    Nats,
    /// Three `nats-server` nodes routed into one JetStream cluster, the stream on all three.
    #[serde(rename = "nats-cluster")]
    NatsCluster,
    /// librdkafka's mock cluster: three brokers in the herd process, on loopback ports.
    Kafka,
}

/// One collector's place in the fleet.
pub struct Slot {
    pub name: String,
    pub addr: SocketAddr,
    /// None while down (not started yet, killed, or restarting).
    process: Option<CollectorProcess>,
    /// Exits nobody asked for.
    pub crashes: u32,
}

/// A collector as the sampler sees it.
#[derive(Debug, Clone, Copy)]
pub struct SlotView {
    pub admin_addr: Option<SocketAddr>,
    pub pid: Option<u32>,
}

pub struct Fleet {
    bed: TestBed,
    command: CollectorCommand,
    port: u16,
    /// Every collector's admin port (on its own address), where the others poll its load.
    admin_port: u16,
    /// Slots of collectors started at the beginning, then those added.
    slots: Mutex<Vec<Slot>>,
    /// Addresses of the first `initial` slots are the fleet at start.
    initial: usize,
    dns: DnsServer,
    /// The DNS server's own thread: it stands for the fleet's DNS infrastructure, so it must not
    /// queue behind the meters' work.
    dns_runtime: Option<tokio::runtime::Runtime>,
    nats: tokio::sync::Mutex<Option<NatsServer>>,
    nats_cluster: tokio::sync::Mutex<Option<NatsCluster>>,
    /// The cluster node killed by [`node_down`](Self::node_down), until it is back.
    node_killed: Mutex<Option<usize>>,
    kafka: Option<KafkaCluster>,
    sink_toml: String,
    /// Tables every collector's config gets besides its fleet and sink (admission).
    extra: String,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(rt) = self.dns_runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// `127.0.0.2`, `127.0.0.3`, ...: slot `i`'s address.
fn slot_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + i as u8)
}

/// What fleet to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Collectors at the start.
    pub collectors: usize,
    /// Slots kept free for collectors added later.
    pub spare: usize,
    pub sink: SinkKind,
    /// DNS answers each query with one record.
    pub single_answer: bool,
    /// TTL of the DNS answers.
    pub ttl: Duration,
    /// Tables added to every collector's config (admission).
    pub extra: String,
}

impl Fleet {
    /// Starts the fleet `spec` describes: its collectors, DNS, and NATS if it is the sink.
    pub async fn start(bed: TestBed, command: CollectorCommand, spec: FleetSpec) -> anyhow::Result<Fleet> {
        let FleetSpec {
            collectors,
            spare,
            sink,
            single_answer,
            ttl,
            extra,
        } = spec;
        anyhow::ensure!(
            (1..=200).contains(&(collectors + spare)),
            "herd runs 1 to 200 collectors on 127.0.0.2-127.0.0.201; asked for {}",
            collectors + spare
        );
        let ips: Vec<Ipv4Addr> = (0..collectors + spare).map(slot_ip).collect();
        let port = free_udp_port_on(&ips)?;
        let admin_port = free_tcp_port_on(&ips)?;
        let (mut nats, mut nats_cluster, mut kafka, mut sink_toml) = (None, None, None, String::new());
        match sink {
            SinkKind::File => {}
            SinkKind::Nats => {
                let server = NatsServer::start(&bed.path().join("nats-store")).await?;
                sink_toml = server.sink_toml(STREAM);
                nats = Some(server);
            }
            SinkKind::NatsCluster => {
                let cluster = NatsCluster::start(&bed.path().join("nats-cluster"), 3).await?;
                sink_toml = cluster.sink_toml(STREAM, 3);
                nats_cluster = Some(cluster);
            }
            SinkKind::Kafka => {
                let cluster = KafkaCluster::start(3, KAFKA_TOPIC, KAFKA_PARTITIONS)?;
                sink_toml = cluster.sink_toml("");
                kafka = Some(cluster);
            }
        }
        let slots = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Slot {
                name: format!("c{}", i + 1),
                addr: SocketAddr::from((*ip, port)),
                process: None,
                crashes: 0,
            })
            .collect();
        let dns_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("herd-dns")
            .enable_all()
            .build()?;
        let dns = dns_runtime
            .spawn(DnsServer::start(Records {
                a: ips[..collectors].to_vec(),
                srv: Vec::new(),
                ttl: ttl.as_secs().max(1) as u32,
                single_answer,
            }))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|started| started);
        let dns = match dns {
            Ok(dns) => dns,
            Err(error) => {
                // Dropped here, from async code, it would have to block: let it go instead.
                dns_runtime.shutdown_background();
                return Err(error);
            }
        };
        let fleet = Fleet {
            bed,
            command,
            port,
            admin_port,
            slots: Mutex::new(slots),
            initial: collectors,
            dns,
            dns_runtime: Some(dns_runtime),
            nats: tokio::sync::Mutex::new(nats),
            nats_cluster: tokio::sync::Mutex::new(nats_cluster),
            node_killed: Mutex::new(None),
            kafka,
            sink_toml,
            extra,
        };
        let starts: Vec<_> = (0..collectors).map(|i| fleet.start_slot(i, collectors)).collect();
        for started in futures_util::future::join_all(starts).await {
            started?;
        }
        Ok(fleet)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn bed(&self) -> &TestBed {
        &self.bed
    }

    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.addr()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Labels of every slot (started or not).
    pub fn names(&self) -> Vec<String> {
        self.lock().iter().map(|s| s.name.clone()).collect()
    }

    /// Address of every slot.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.lock().iter().map(|s| s.addr).collect()
    }

    /// Starts the collector of slot `i` (its data directory kept from any earlier run), in a
    /// fleet of the first `members` slots.
    async fn start_slot(&self, i: usize, members: usize) -> anyhow::Result<()> {
        let (name, addr, all) = {
            let slots = self.lock();
            let all: Vec<SocketAddr> = slots[..members].iter().map(|s| s.addr).collect();
            (slots[i].name.clone(), slots[i].addr, all)
        };
        let members: Vec<String> = all.iter().map(|m| format!("\"{m}\"")).collect();
        let extra = format!(
            "[fleet]\nadvertise = \"{addr}\"\nmembers = [{}]\nload_admin_port = {}\nload_poll_ms = {LOAD_POLL_MS}\n{}{}",
            members.join(", "),
            self.admin_port,
            self.sink_toml,
            self.extra
        );
        let admin = SocketAddr::from((addr.ip(), self.admin_port));
        let process =
            CollectorProcess::start_at(&self.command, &self.bed, &name, (addr, admin), &extra).await?;
        self.lock()[i].process = Some(process);
        Ok(())
    }

    /// What the sampler needs of each slot; also notices collectors that exited by themselves.
    pub fn views(&self) -> Vec<SlotView> {
        let mut slots = self.lock();
        slots
            .iter_mut()
            .map(|slot| {
                if let Some(p) = slot.process.as_mut()
                    && !p.process.is_running()
                {
                    slot.crashes += 1;
                    slot.process = None;
                }
                SlotView {
                    admin_addr: slot.process.as_ref().map(|p| p.admin_addr),
                    pid: slot.process.as_ref().map(|p| p.process.pid()),
                }
            })
            .collect()
    }

    /// Collector exits nobody asked for, so far.
    pub fn crashes(&self) -> u32 {
        self.lock().iter().map(|s| s.crashes).sum()
    }

    /// SIGKILL to slot `i`.
    pub fn kill(&self, i: usize) {
        if let Some(mut p) = self.lock()[i].process.take() {
            p.kill();
        }
    }

    /// Drains slot `i` (SIGTERM), waits for it to exit (killing it after `grace`), and starts it
    /// again on the same address and data directory. An exit other than a clean one counts as a
    /// crash.
    pub async fn restart(&self, i: usize, grace: Duration) -> anyhow::Result<()> {
        let process = self.lock()[i].process.take();
        if let Some(p) = process {
            p.process.sigterm()?;
            match p.process.wait(grace).await {
                Ok(status) if status.success() => {}
                // Unclean, or killed after the grace period: not the drain it should have been.
                _ => self.lock()[i].crashes += 1,
            }
        }
        self.start_slot(i, self.initial).await
    }

    /// Starts the next spare slot and adds it to DNS; returns its index.
    pub async fn add(&self) -> anyhow::Result<usize> {
        let i = self
            .lock()
            .iter()
            .position(|s| s.process.is_none() && s.crashes == 0);
        let i = i
            .filter(|&i| i >= self.initial)
            .ok_or_else(|| anyhow::anyhow!("no spare collector slot to add"))?;
        self.start_slot(i, i + 1).await?;
        let ip = slot_ip(i);
        self.dns.update(|r| r.a.push(ip));
        Ok(i)
    }

    /// DNS stops naming collector `i` (it keeps running: meters find out as their TTLs run out).
    pub fn dns_drop(&self, i: usize) {
        let ip = slot_ip(i);
        self.dns.update(|r| r.a.retain(|a| *a != ip));
    }

    /// DNS names collector `i` again.
    pub fn dns_restore(&self, i: usize) {
        let ip = slot_ip(i);
        self.dns.update(|r| {
            if !r.a.contains(&ip) {
                r.a.push(ip);
            }
        });
    }

    /// Kills NATS (SIGKILL).
    pub async fn sink_down(&self) {
        if let Some(nats) = self.nats.lock().await.as_mut() {
            nats.kill();
        }
    }

    /// Starts NATS again on its port and store.
    pub async fn sink_up(&self) -> anyhow::Result<()> {
        if let Some(nats) = self.nats.lock().await.as_mut() {
            nats.restart().await?;
        }
        Ok(())
    }

    /// Kills (SIGKILL) the cluster node that leads the stream; the returned [`NodeLoss`] waits
    /// for the cluster to announce the stream's new leader.
    pub async fn node_down(&self) -> anyhow::Result<NodeLoss> {
        let mut guard = self.nats_cluster.lock().await;
        let cluster = guard
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("node-loss needs the nats-cluster sink"))?;
        let node = cluster
            .stream_leader(STREAM)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream {STREAM} has no leader to kill"))?;
        let mut elections = cluster.leader_elections(STREAM, node).await?;
        cluster.kill(node);
        let killed = tokio::time::Instant::now();
        *self.node_killed.lock().unwrap_or_else(|p| p.into_inner()) = Some(node);
        let elected = tokio::spawn(async move {
            use futures_util::StreamExt;
            elections.next().await.map(|_| tokio::time::Instant::now())
        });
        Ok(NodeLoss {
            node,
            killed,
            elected,
        })
    }

    /// Starts the node [`node_down`](Self::node_down) killed again, on its ports and store.
    pub async fn node_up(&self) -> anyhow::Result<Option<usize>> {
        let node = self.node_killed.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (Some(node), Some(cluster)) = (node, self.nats_cluster.lock().await.as_mut()) {
            cluster.restart(node).await?;
        }
        Ok(node)
    }

    /// Drains and stops every collector (SIGTERM, waiting up to `grace` each, all at once).
    pub async fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        let running: Vec<(usize, CollectorProcess)> = self
            .lock()
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.process.take().map(|p| (i, p)))
            .collect();
        let stops = running.into_iter().map(|(i, p)| async move {
            p.process.sigterm()?;
            let status = p.process.wait(grace).await?;
            anyhow::Ok((i, status))
        });
        for stopped in futures_util::future::join_all(stops).await {
            let (i, status) = stopped?;
            if !status.success() {
                self.lock()[i].crashes += 1;
            }
        }
        Ok(())
    }

    /// Every batch the fleet stored (after [`stop`](Self::stop)): the segment files of every
    /// collector, the NATS stream, or the Kafka topic.
    pub async fn stored(&self) -> anyhow::Result<Vec<pb::StoredBatch>> {
        if let Some(kafka) = &self.kafka {
            return kafka
                .read_all()
                .await?
                .into_iter()
                .map(|r| {
                    r.batch
                        .map_err(|e| anyhow::anyhow!("undecodable record in the topic: {e}"))
                })
                .collect();
        }
        if let Some(nats) = self.nats.lock().await.as_ref() {
            let messages = nats.read_all(STREAM).await?;
            return messages
                .into_iter()
                .map(|m| {
                    m.batch
                        .map_err(|e| anyhow::anyhow!("undecodable message in the stream: {e}"))
                })
                .collect();
        }
        if let Some(cluster) = self.nats_cluster.lock().await.as_ref() {
            return read_all_with(&cluster.sink_config(STREAM))
                .await?
                .into_iter()
                .map(|m| {
                    m.batch
                        .map_err(|e| anyhow::anyhow!("undecodable message in the stream: {e}"))
                })
                .collect();
        }
        let mut all = Vec::new();
        for name in self.names() {
            let dir = self.bed.data_dir(&name);
            if dir.exists() {
                all.extend(ringflow_collector::data::sink::file::store::read_all(&dir, None)?);
            }
        }
        Ok(all)
    }
}

/// A cluster node killed by [`Fleet::node_down`]: which, when, and the cluster's announcement of
/// the stream's new leader, awaited in the background.
pub struct NodeLoss {
    /// The node's index (`node-N` in its server name).
    pub node: usize,
    pub killed: tokio::time::Instant,
    elected: tokio::task::JoinHandle<Option<tokio::time::Instant>>,
}

impl NodeLoss {
    /// When the cluster announced the stream's new leader (`None`: no announcement within
    /// `within`, or the subscription ended).
    pub async fn elected(self, within: Duration) -> Option<tokio::time::Instant> {
        let mut elected = self.elected;
        match tokio::time::timeout(within, &mut elected).await {
            Ok(Ok(at)) => at,
            _ => {
                elected.abort();
                None
            }
        }
    }
}
