//! A three-node JetStream cluster on loopback for tests and `herd`: three `nats-server -js`
//! processes with routes between them, each with its own store directory, client port and
//! cluster port, killed when the fixture drops. One node can be killed (SIGKILL) and started
//! again on its ports and store; [`NatsCluster::stream_leader`] says which node leads a stream.
//!
//! Owns: the nodes' command lines (cluster name, server names, routes) and the questions a test
//! asks the cluster (is JetStream's meta group up, who leads a stream). Must never: pick a
//! fixed port.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use ringflow_collector::data::sink::nats::NatsSinkConfig;

use crate::nats::NatsServer;

/// The cluster's name, in every node's `--cluster_name`.
pub const CLUSTER_NAME: &str = "ringflow-test";

/// Three JetStream nodes routed to each other.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes (`node-0`, ...) under `dir` and waits until JetStream's meta group
    /// has a leader (a stream can be created).
    pub async fn start(dir: &Path, size: usize) -> anyhow::Result<Self> {
        let cluster_ports: Vec<u16> = (0..size)
            .map(|_| Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()))
            .collect::<std::io::Result<_>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (i, port) in cluster_ports.iter().enumerate() {
            let routes: Vec<String> = cluster_ports
                .iter()
                .filter(|p| *p != port)
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            let options = [
                "--server_name".to_string(),
                format!("node-{i}"),
                "--cluster_name".to_string(),
                CLUSTER_NAME.to_string(),
                "--cluster".to_string(),
                format!("nats://127.0.0.1:{port}"),
                "--routes".to_string(),
                routes.join(","),
            ];
            let mut node = NatsServer::not_started(&dir.join(format!("node-{i}")))?;
            node.set_options(&options);
            nodes.push(node);
        }
        for node in &mut nodes {
            node.restart().await?;
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_for_jetstream(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Every node's `nats://127.0.0.1:PORT`, running or not.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The `[sink]` tables that point a collector at every node and `stream`, replicated on
    /// `replicas` nodes.
    pub fn sink_toml(&self, stream: &str, replicas: u32) -> String {
        let servers: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "[sink]\nkind = \"nats\"\n[sink.nats]\nservers = [{}]\nstream = \"{stream}\"\nreplicas = {replicas}\n\
             connect_timeout_ms = 2000\npublish_timeout_ms = 2000\n",
            servers.join(", ")
        )
    }

    /// A sink config for reading `stream` back through every node.
    pub fn sink_config(&self, stream: &str) -> NatsSinkConfig {
        NatsSinkConfig {
            servers: self.urls(),
            stream: stream.to_owned(),
            ..NatsSinkConfig::default()
        }
    }

    /// The URL of a running node (the first but `avoid`), for questions to the cluster.
    fn running_url(&self, avoid: Option<usize>) -> anyhow::Result<String> {
        self.nodes
            .iter()
            .enumerate()
            .find(|(i, n)| n.pid().is_some() && Some(*i) != avoid)
            .map(|(_, n)| n.url())
            .context("no node of the cluster is running")
    }

    /// A client of a running node.
    async fn client(&self) -> anyhow::Result<async_nats::Client> {
        self.client_avoiding(None).await
    }

    /// A client of a running node other than `avoid`.
    async fn client_avoiding(&self, avoid: Option<usize>) -> anyhow::Result<async_nats::Client> {
        let url = self.running_url(avoid)?;
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url.as_str())
            .await
            .with_context(|| format!("connect to {url}"))
    }

    /// A JetStream context on a running node, whose requests give up after 500 ms (a stream
    /// with no leader does not answer; the default would wait 5 s and blur what is measured).
    async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(500))
            .build(self.client().await?))
    }

    /// Asks JetStream for the account's information (`$JS.API.INFO`): `Ok` once it answers
    /// without an error, which it does once its meta group has a leader. (A raw request: the
    /// client's typed answer wants fields the Debian nats-server does not send.)
    async fn jetstream_answers(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let reply = tokio::time::timeout(Duration::from_secs(2), client.request("$JS.API.INFO", "".into()))
            .await
            .context("$JS.API.INFO: no answer within 2 s")??;
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        match answer.get("error") {
            Some(error) => anyhow::bail!("$JS.API.INFO: {error}"),
            None => Ok(()),
        }
    }

    /// Waits until JetStream answers an account query (its meta group has a leader).
    pub async fn wait_for_jetstream(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let answer = self.jetstream_answers().await;
            match answer {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context(format!("JetStream's meta group had no leader within {within:?}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The index of the node that leads `stream`, if the cluster says one does.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<Option<usize>> {
        let js = self.jetstream().await?;
        let mut handle = js
            .get_stream(stream)
            .await
            .with_context(|| format!("stream {stream}"))?;
        let info = handle
            .info()
            .await
            .with_context(|| format!("info of stream {stream}"))?;
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
        Ok(leader.and_then(|name| name.strip_prefix("node-").and_then(|i| i.parse().ok())))
    }

    /// JetStream's announcements that `stream` has a new leader, through a node other than
    /// `avoid` (the one about to be killed): they arrive as the collectors' do.
    pub async fn leader_elections(
        &self,
        stream: &str,
        avoid: usize,
    ) -> anyhow::Result<async_nats::Subscriber> {
        let client = self.client_avoiding(Some(avoid)).await?;
        let subject = ringflow_collector::data::sink::nats::link::leader_elected_subject(stream);
        let subscriber = client.subscribe(subject).await?;
        client.flush().await?;
        Ok(subscriber)
    }

    /// SIGKILL to node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and store.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].restart().await
    }
}
