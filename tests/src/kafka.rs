//! A Kafka cluster for tests and `herd`: librdkafka's mock cluster (three brokers on loopback
//! TCP ports, in this process; no Kafka download is possible here), on a thread of its own so
//! that it can be shared, commanded (brokers down and up, partition leaders, injected request
//! errors) from any task, and stopped when dropped.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use ringflow_collector::data::sink::kafka::KafkaSinkConfig;
use ringflow_collector::data::sink::kafka::consume::{TopicBatch, read_topic};

enum Command {
    BrokerDown(i32),
    BrokerUp(i32),
    ProduceErrors(Vec<RDKafkaRespErr>),
    Stop,
}

type Reply = mpsc::Sender<anyhow::Result<()>>;

/// The mock cluster, running on its own thread.
pub struct KafkaCluster {
    bootstrap: String,
    pub topic: String,
    commands: mpsc::Sender<(Command, Reply)>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaCluster {
    /// `brokers` brokers (ids 1..=brokers) and `topic` with `partitions` partitions replicated
    /// on every broker, each partition led by broker 1 (so that taking broker 1 down leaves no
    /// leader reachable).
    pub fn start(brokers: i32, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<String>>();
        let (commands, inbox) = mpsc::channel::<(Command, Reply)>();
        let name = topic.to_owned();
        let thread = std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                let started = (|| -> anyhow::Result<_> {
                    let mock = MockCluster::new(brokers).context("starting the mock Kafka cluster")?;
                    mock.create_topic(&name, partitions, brokers)
                        .context("creating the topic")?;
                    for p in 0..partitions {
                        mock.partition_leader(&name, p, Some(1))
                            .context("setting a partition's leader")?;
                    }
                    Ok(mock)
                })();
                let mock = match started {
                    Ok(mock) => {
                        let _ = ready_tx.send(Ok(mock.bootstrap_servers()));
                        mock
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                for (command, reply) in inbox {
                    let done = match command {
                        Command::BrokerDown(id) => mock.broker_down(id).map_err(Into::into),
                        Command::BrokerUp(id) => mock.broker_up(id).map_err(Into::into),
                        Command::ProduceErrors(errors) => {
                            mock.request_errors(RDKafkaApiKey::Produce, &errors);
                            Ok(())
                        }
                        Command::Stop => break,
                    };
                    let _ = reply.send(done);
                }
            })?;
        let bootstrap = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the mock Kafka cluster did not start")??;
        Ok(Self {
            bootstrap,
            topic: topic.to_owned(),
            commands,
            thread: Some(thread),
        })
    }

    fn command(&self, command: Command) -> anyhow::Result<()> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .send((command, reply))
            .map_err(|_| anyhow::anyhow!("the mock Kafka cluster has stopped"))?;
        answer.recv_timeout(Duration::from_secs(10))?
    }

    /// The brokers' "host:port" list.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Broker `id` stops answering (its connections are closed and refused).
    pub fn broker_down(&self, id: i32) -> anyhow::Result<()> {
        self.command(Command::BrokerDown(id))
    }

    pub fn broker_up(&self, id: i32) -> anyhow::Result<()> {
        self.command(Command::BrokerUp(id))
    }

    /// The next produce requests (one per error) fail with these errors.
    pub fn produce_errors(&self, errors: Vec<RDKafkaRespErr>) -> anyhow::Result<()> {
        self.command(Command::ProduceErrors(errors))
    }

    /// The sink config for this cluster and topic.
    pub fn sink_config(&self) -> KafkaSinkConfig {
        KafkaSinkConfig {
            brokers: self.bootstrap.split(',').map(str::to_owned).collect(),
            topic: self.topic.clone(),
            connect_timeout_ms: 5_000,
            ..KafkaSinkConfig::default()
        }
    }

    /// The collector `[sink]` tables for this cluster and topic, plus `more` keys of
    /// `[sink.kafka]`.
    pub fn sink_toml(&self, more: &str) -> String {
        let brokers: Vec<String> = self.bootstrap.split(',').map(|b| format!("\"{b}\"")).collect();
        format!(
            "[sink]\nkind = \"kafka\"\n[sink.kafka]\nbrokers = [{}]\ntopic = \"{}\"\n{more}\n",
            brokers.join(", "),
            self.topic
        )
    }

    /// Every record of the topic, in order per partition.
    pub async fn read_all(&self) -> anyhow::Result<Vec<TopicBatch>> {
        let config = self.sink_config();
        tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            read_topic(&config, None, false, |m| {
                all.push(m);
                std::ops::ControlFlow::Continue(())
            })?;
            anyhow::Ok(all)
        })
        .await?
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        let (reply, _) = mpsc::channel();
        let _ = self.commands.send((Command::Stop, reply));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
