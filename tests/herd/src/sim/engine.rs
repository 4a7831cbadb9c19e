//! The discrete-event core of `herd sim`: meters and collectors in virtual time.
//!
//! Owns: the event queue, the virtual meters and collectors, and what happens between them (the
//! models below). The decisions are not modelled but made by the production code: each meter
//! is a [`Selector`] with the full-jitter backoff ([`Seeded`]), each collector an [`Admission`]
//! (accept-rate bucket, hard budgets, stateless Retry), [`Budgets::on_hello`] (soft budgets and
//! the bounded-load cap) and a [`FleetLoadView`] fed by polling its peers.
//!
//! The models (the parameters in [`Model`]):
//! - **Network:** every packet takes half the round-trip time. A connection attempt reaches the
//!   collector after ½ RTT; a refusal comes back after another ½; a Retry costs a full RTT; the
//!   `Hello` arrives 1 RTT after the handshake's last server flight, and `Welcome`/`Reject` ½
//!   RTT later.
//! - **Handshake service:** each collector completes `capacity` handshakes per second, one at a
//!   time in arrival order (a queue with a fixed service time of 1/capacity); its accept-rate
//!   bucket and handshake budget apply in front of the queue, as in the live accept loop.
//! - **A collector that is down** (killed, restarting) answers nothing: an attempt fails after
//!   the meter's connect timeout; its sessions end when the meter's idle timeout runs out (a
//!   session carries acks or keep-alives all the time, so the last packet was just before).
//! - **Rebalance probe:** before leaving for its first choice a meter checks it completes a QUIC
//!   handshake, as the live connect loop does: a full handshake in the collector's queue.
//! - **DNS:** a meter's view is the DNS answer ∪ the `Welcome` view of the collector that welcomed
//!   it; after a DNS change each meter sees it at a uniform random moment within the TTL.
//! - **Polling:** each collector learns its peers' session counts every poll interval (at its own
//!   phase), with no delay.
//! - Not modelled: records, acks and the sink's data path (a sink outage only makes Hellos
//!   `Reject(sink_unavailable)`), CPU shared between collectors, packet loss.
//!
//! Must never: read a clock (virtual time starts at an arbitrary `Instant`), or use randomness
//! that is not derived from the seed: the same flags give the same run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore};
use ringflow_collector::control::accept_rate;
use ringflow_collector::control::admission::{Admission, Admit, Budgets, Load};
use ringflow_collector::control::fleet_load::{FleetLoadView, PeerLoad};
use ringflow_meter::ring::Ring;
use ringflow_meter::selector::backoff::{JitterParams, Seeded};
use ringflow_meter::selector::{Ended, Failure, Selector, SelectorConfig};
use tokio::time::Instant;

use super::super::scenario::{Action, Plan};
use super::super::timeline::{Event, Sample, Timeline};

/// How long a three-node JetStream cluster takes to elect a stream's new leader after its node
/// is killed: 4.1-7.4 s measured on this machine (`tests/tests/nats_cluster.rs`, nats-server
/// 2.9), the middle of that here.
const NODE_LOSS_ELECTION: Duration = Duration::from_secs(6);

/// What the simulated world is made of.
#[derive(Debug, Clone)]
pub struct Model {
    /// Handshakes (QUIC + TLS + Hello) one collector completes per second.
    pub capacity: f64,
    /// Network round-trip time between meters and collectors.
    pub rtt: Duration,
    /// The collectors' admission budgets (bounded load included, or not).
    pub budgets: Budgets,
    /// How often a collector polls its peers' load.
    pub poll_interval: Duration,
    /// The meters' selection rules and backoff.
    pub selection: SelectorConfig,
    pub jitter: JitterParams,
    /// Random delays drawn (false: every random delay takes its full length).
    pub jitter_on: bool,
    /// The meters' connect timeout (an attempt at a collector that is down fails after it).
    pub connect_timeout: Duration,
    /// How often a meter writes a batch: a meter finds a dead collector silent only after a
    /// write, at a uniform moment of this.
    pub write_every: Duration,
    /// From a write to a dead collector to the session's end: the silence bound and its
    /// confirmation ([`ringflow_meter::session::liveness`]).
    pub silence_detect: Duration,
    /// The collectors' drain window, and how long a restart takes.
    pub drain_window: Duration,
    pub restart_time: Duration,
    /// TTL of the fleet's DNS records.
    pub dns_ttl: Duration,
    /// The retry hint sent with `Reject(draining)` and `Reject(sink_unavailable)`.
    pub unavailable_retry: Duration,
}

/// The run to simulate.
#[derive(Debug, Clone)]
pub struct World {
    /// Meter ids, in start order.
    pub meter_ids: Vec<String>,
    /// Meters started at 0; the others start at the plan's `Herd`, one after the other over
    /// `start_spread` (0: all at once).
    pub first_wave: usize,
    pub start_spread: Duration,
    /// When each further tenth of the herd first dialled (ten rising instants after the herd's
    /// start); when given, the herd's meters dial at once (no splay) at moments spread evenly
    /// within each tenth, and `start_spread` is not used.
    pub first_dials: Vec<Duration>,
    /// Collector addresses; the first `collectors` run from the start, the rest are spares
    /// (add-collector).
    pub addresses: Vec<String>,
    pub collectors: usize,
    /// DNS answers every meter with the first collector only.
    pub single_record_dns: bool,
    pub plan: Plan,
    pub duration: Duration,
    pub seed: u64,
}

/// What a simulated run saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub timeline: Timeline,
    /// From the herd's start until every meter had been welcomed.
    pub time_to_all_connected: Option<Duration>,
    /// The collector each meter is connected to at the end.
    pub connected_at_end: Vec<Option<usize>>,
    /// Collectors up at the end.
    pub up_at_end: Vec<bool>,
    pub refusals: BTreeMap<String, u64>,
    pub attempts: u64,
    /// Sessions max/mean over the collectors up, per sample: `(t_s, max/mean)`.
    pub balance: Vec<(f64, f64)>,
}

/// Sampling interval, as in `herd run`.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// SplitMix64: eight bytes of state, so a million meters can each hold two streams. With
/// `jitter` off every draw is the largest value, so every random delay takes its full length.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
    jitter: bool,
}

impl SimRng {
    pub fn new(seed: u64, jitter: bool) -> Self {
        Self { state: seed, jitter }
    }

    /// A seed for stream `stream` of item `index`, derived from the run's seed.
    fn derive(seed: u64, index: u64, stream: u64) -> u64 {
        let mut r = SimRng::new(seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407) ^ stream, true);
        r.next_u64()
    }
}

impl RngCore for SimRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        if !self.jitter {
            return u64::MAX;
        }
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

type MeterSelector = Selector<Seeded<SimRng>, SimRng>;

/// Index of a collector.
type C = u16;

#[derive(Debug, Clone, Copy)]
enum Ev {
    /// Meter `m` starts (a herd spread over time).
    Start {
        m: u32,
    },
    /// Meter `m` starts and dials at once (a herd given as a live run's first dials).
    Dial {
        m: u32,
    },
    /// The meter's scheduled dial, or move check while in a session (stale unless `wake_gen`
    /// matches the meter's).
    Wake {
        m: u32,
        wake_gen: u32,
    },
    /// A connection attempt (or a probe) reaches collector `c` (incarnation `epoch`).
    Arrive {
        m: u32,
        c: C,
        epoch: u32,
        validated: bool,
        probe: bool,
    },
    /// The meter's `Hello` reaches the collector after its handshake.
    Hello {
        m: u32,
        c: C,
        epoch: u32,
    },
    /// A probe's connection closes at the collector (its handshake slot frees).
    ProbeClosed {
        c: C,
        epoch: u32,
    },
    /// The meter learns whether its probe completed a handshake.
    ProbeAnswer {
        m: u32,
        c: C,
        reachable: bool,
    },
    /// The meter learns how its attempt ended.
    Outcome {
        m: u32,
        c: C,
        epoch: u32,
        how: How,
    },
    /// The meter finds `c` silent after a write (it died).
    Gone {
        m: u32,
        c: C,
    },
    /// The meter gets `Drain` from `c`.
    Drained {
        m: u32,
        c: C,
    },
    /// The meter's DNS view refreshes.
    Dns {
        m: u32,
    },
    /// Collector `c` polls its peers.
    Poll {
        c: C,
    },
    /// Collector `c` samples its control plane's lag (adaptive accept rate only).
    Lag {
        c: C,
    },
    /// Collector `c` starts draining (rolling restart), stops, or comes back.
    Drain {
        c: C,
    },
    Down {
        c: C,
    },
    Up {
        c: C,
    },
    /// The JetStream cluster elected the stream's new leader (node-loss): the sink answers again.
    Elected,
    /// The plan's action number `i`.
    Action {
        i: u16,
    },
    Sample,
}

#[derive(Debug, Clone, Copy)]
enum How {
    Welcome,
    /// `Reject`; `with_view`: it carries the collector's fleet view (overloaded, sink
    /// unavailable), as the live collector sends it.
    Rejected {
        retry_after_ms: u32,
        with_view: bool,
    },
    /// Refused before the handshake, or no answer.
    Unreachable,
}

struct SimMeter {
    selector: Option<MeterSelector>,
    wake_gen: u32,
    /// When the pending Wake is due (None: none pending).
    wake_at: Option<u64>,
    session: Option<C>,
    dialing: Option<C>,
    probing: Option<C>,
    /// The DNS answer this meter last saw (index into `World::dns_versions`).
    dns_version: u8,
    /// The `Welcome` view it holds (index into `Engine::member_sets`; 0: none yet).
    welcome_view: u8,
    /// Welcomed at least once.
    welcomed: bool,
}

struct SimCollector {
    addr: Arc<str>,
    up: bool,
    draining: bool,
    sink_down: bool,
    /// Incarnation: a restart or a kill makes everything in flight to the old one stale.
    epoch: u32,
    admission: Admission,
    sessions: u64,
    handshakes: usize,
    /// When the handshake queue is free (ns since the start).
    busy_until: u64,
    /// Handshakes completed over the run, and as of the last sample.
    handshakes_done: u64,
    handshakes_sampled: u64,
    view: FleetLoadView,
    /// Which members set its `Welcome` view is (index into `Engine::member_sets`).
    members: u8,
}

struct Engine<'w> {
    world: &'w World,
    model: &'w Model,
    base: Instant,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Key)>>,
    events: Vec<Ev>,
    free_events: Vec<u32>,
    seq: u64,
    meters: Vec<SimMeter>,
    collectors: Vec<SimCollector>,
    by_address: HashMap<Arc<str>, C>,
    /// DNS answers over the run (the first, and one more per fleet change).
    dns_versions: Vec<Vec<C>>,
    /// Member sets collectors send in `Welcome`.
    member_sets: Vec<Vec<C>>,
    rings: HashMap<(u8, u8), Arc<Ring>>,
    rng: SimRng,
    started: usize,
    herd_at: Option<u64>,
    connected: usize,
    /// Meters welcomed at least once.
    welcomed: usize,
    all_connected_at: Option<u64>,
    attempts: u64,
    refusals: BTreeMap<&'static str, u64>,
    timeline: Timeline,
    /// When the last sample was taken, and the counters then.
    last_sample: (u64, u64, BTreeMap<&'static str, u64>),
    balance: Vec<(f64, f64)>,
}

/// Heap entries carry an index into `Engine::events` (the heap stays small and `Ord`).
type Key = u32;

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Runs the world under the model until the end of the plan's duration.
pub fn run(world: &World, model: &Model) -> Outcome {
    let mut e = Engine::new(world, model);
    e.start();
    let end = ns(world.duration);
    while let Some(Reverse((at, _, key))) = e.queue.pop() {
        if at > end {
            break;
        }
        e.now = at;
        let ev = e.events[key as usize];
        e.free_events.push(key);
        e.handle(ev);
    }
    e.now = end;
    e.finish()
}

impl<'w> Engine<'w> {
    fn new(world: &'w World, model: &'w Model) -> Self {
        let base = Instant::now();
        let all: Vec<C> = (0..world.addresses.len() as C).collect();
        let initial: Vec<C> = all[..world.collectors].to_vec();
        let first_dns = if world.single_record_dns {
            vec![0]
        } else {
            initial.clone()
        };
        let collectors = world
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| SimCollector {
                addr: Arc::from(a.as_str()),
                up: false,
                draining: false,
                sink_down: false,
                epoch: 0,
                admission: Admission::new(model.budgets, base),
                sessions: 0,
                handshakes: 0,
                busy_until: 0,
                handshakes_done: 0,
                handshakes_sampled: 0,
                view: FleetLoadView::new(model.poll_interval * 3),
                members: if i < world.collectors { 1 } else { 2 },
            })
            .collect::<Vec<_>>();
        let by_address = collectors
            .iter()
            .enumerate()
            .map(|(i, c)| (Arc::clone(&c.addr), i as C))
            .collect();
        Engine {
            world,
            model,
            base,
            now: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free_events: Vec::new(),
            seq: 0,
            meters: (0..world.meter_ids.len())
                .map(|_| SimMeter {
                    selector: None,
                    wake_gen: 0,
                    wake_at: None,
                    session: None,
                    dialing: None,
                    probing: None,
                    dns_version: 0,
                    welcome_view: 0,
                    welcomed: false,
                })
                .collect(),
            collectors,
            by_address,
            dns_versions: vec![first_dns],
            member_sets: vec![Vec::new(), initial, all],
            rings: HashMap::new(),
            rng: SimRng::new(SimRng::derive(world.seed, u64::MAX, 0), model.jitter_on),
            started: 0,
            herd_at: None,
            connected: 0,
            welcomed: 0,
            all_connected_at: None,
            attempts: 0,
            refusals: BTreeMap::new(),
            timeline: Timeline {
                collectors: (1..=world.addresses.len()).map(|i| format!("c{i}")).collect(),
                addresses: world.addresses.clone(),
                ..Timeline::default()
            },
            last_sample: (0, 0, BTreeMap::new()),
            balance: Vec::new(),
        }
    }

    fn instant(&self, at: u64) -> Instant {
        self.base + Duration::from_nanos(at)
    }

    fn at_of(&self, instant: Instant) -> u64 {
        ns(instant.saturating_duration_since(self.base))
    }

    fn push(&mut self, at: u64, ev: Ev) {
        let key = match self.free_events.pop() {
            Some(k) => {
                self.events[k as usize] = ev;
                k
            }
            None => {
                self.events.push(ev);
                (self.events.len() - 1) as Key
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq, key)));
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        self.push(self.now + ns(d), ev);
    }

    fn half_rtt(&self) -> Duration {
        self.model.rtt / 2
    }

    fn uniform(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.rng.random::<f64>())
    }

    fn start(&mut self) {
        // Every collector polls its peers once as it starts (before meters arrive), then every
        // interval at a phase of its own.
        for c in 0..self.world.collectors {
            self.collectors[c].up = true;
            self.poll_round(c as C);
            let phase = self.uniform(self.model.poll_interval);
            self.after(phase, Ev::Poll { c: c as C });
            self.start_lag_samples(c as C);
        }
        for (i, (at, _)) in self.world.plan.actions.iter().enumerate() {
            self.push(ns(*at), Ev::Action { i: i as u16 });
        }
        self.push(ns(SAMPLE_EVERY), Ev::Sample);
        self.start_meters(0..self.world.first_wave.min(self.world.meter_ids.len()));
    }

    fn start_meters(&mut self, range: std::ops::Range<usize>) {
        for m in range {
            self.start_meter(m, true);
        }
    }

    /// Starts meter `m`; its first attempt waits its splay, or (`splay` false) goes at once.
    fn start_meter(&mut self, m: usize, splay: bool) {
        let now = self.instant(self.now);
        let ring = self.ring_of(0, 0);
        let seed = self.world.seed;
        let jitter = self.model.jitter_on;
        let selection = SelectorConfig {
            splay: if splay {
                self.model.selection.splay
            } else {
                Duration::ZERO
            },
            ..self.model.selection
        };
        let selector = Selector::new(
            &self.world.meter_ids[m],
            ring,
            selection,
            Seeded::with_rng(
                self.model.jitter,
                SimRng::new(SimRng::derive(seed, m as u64, 1), jitter),
            ),
            SimRng::new(SimRng::derive(seed, m as u64, 2), jitter),
            now,
        );
        self.meters[m].selector = Some(selector);
        self.started += 1;
        self.schedule(m as u32);
    }

    /// The ring of a meter that saw DNS answer `dns` and `Welcome` view `welcome`.
    fn ring_of(&mut self, dns: u8, welcome: u8) -> Arc<Ring> {
        if let Some(r) = self.rings.get(&(dns, welcome)) {
            return Arc::clone(r);
        }
        let mut members: Vec<C> = self.dns_versions[dns as usize].clone();
        members.extend(&self.member_sets[welcome as usize]);
        members.sort_unstable();
        members.dedup();
        let addrs: Vec<String> = members
            .iter()
            .map(|&c| self.collectors[c as usize].addr.to_string())
            .collect();
        let ring = Ring::shared(&addrs);
        self.rings.insert((dns, welcome), Arc::clone(&ring));
        ring
    }

    fn selector(&mut self, m: u32) -> Option<&mut MeterSelector> {
        self.meters[m as usize].selector.as_mut()
    }

    /// Puts the meter's next wake-up (dial, or move check) on the queue if it changed.
    fn schedule(&mut self, m: u32) {
        let meter = &self.meters[m as usize];
        let Some(selector) = meter.selector.as_ref() else {
            return;
        };
        let want = if meter.session.is_some() {
            if meter.probing.is_some() {
                None
            } else {
                selector.move_at()
            }
        } else if meter.dialing.is_some() {
            None
        } else {
            selector.next_attempt().map(|a| a.at)
        };
        let want = want.map(|at| self.at_of(at).max(self.now));
        if want == meter.wake_at {
            return;
        }
        let meter = &mut self.meters[m as usize];
        meter.wake_gen = meter.wake_gen.wrapping_add(1);
        meter.wake_at = want;
        let wake_gen = meter.wake_gen;
        if let Some(at) = want {
            self.push(at, Ev::Wake { m, wake_gen });
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start { m } => self.start_meters(m as usize..m as usize + 1),
            Ev::Dial { m } => self.start_meter(m as usize, false),
            Ev::Wake { m, wake_gen } => self.wake(m, wake_gen),
            Ev::Arrive {
                m,
                c,
                epoch,
                validated,
                probe,
            } => self.arrive(m, c, epoch, validated, probe),
            Ev::Hello { m, c, epoch } => self.hello(m, c, epoch),
            Ev::ProbeClosed { c, epoch } => {
                let col = &mut self.collectors[c as usize];
                if col.epoch == epoch {
                    col.handshakes = col.handshakes.saturating_sub(1);
                    col.handshakes_done += 1;
                }
            }
            Ev::ProbeAnswer { m, c, reachable } => self.probe_answer(m, c, reachable),
            Ev::Outcome { m, c, epoch, how } => self.outcome(m, c, epoch, how),
            Ev::Gone { m, c } => self.session_over(m, c, Ended::Gone),
            Ev::Drained { m, c } => {
                let within = self.model.drain_window;
                self.session_over(m, c, Ended::Drained { within });
            }
            Ev::Dns { m } => self.dns_refresh(m),
            Ev::Poll { c } => {
                self.poll_round(c);
                self.after(self.model.poll_interval, Ev::Poll { c });
            }
            Ev::Lag { c } => self.lag_sample(c),
            Ev::Drain { c } => self.drain(c),
            Ev::Down { c } => self.down(c),
            Ev::Up { c } => self.up(c),
            Ev::Elected => self.set_sink_down(false, "stream leader elected"),
            Ev::Action { i } => self.action(i as usize),
            Ev::Sample => self.sample(),
        }
    }

    fn wake(&mut self, m: u32, wake_gen: u32) {
        let now = self.instant(self.now);
        let meter = &mut self.meters[m as usize];
        if meter.wake_gen != wake_gen {
            return;
        }
        meter.wake_at = None;
        let in_session = meter.session.is_some();
        let Some(selector) = meter.selector.as_mut() else {
            return;
        };
        if in_session {
            // The move check: make sure the first choice answers before leaving for it.
            selector.on_checking_home();
            let Some(home) = selector.first() else {
                return;
            };
            let c = self.by_address[&home];
            self.meters[m as usize].probing = Some(c);
            self.dial(m, c, true);
            return;
        }
        let Some(attempt) = selector.next_attempt().cloned() else {
            return;
        };
        if attempt.at > now {
            self.schedule(m);
            return;
        }
        let c = self.by_address[&attempt.target];
        self.meters[m as usize].dialing = Some(c);
        self.dial(m, c, false);
    }

    fn dial(&mut self, m: u32, c: C, probe: bool) {
        self.attempts += 1;
        let col = &self.collectors[c as usize];
        if col.up {
            let epoch = col.epoch;
            self.after(
                self.half_rtt(),
                Ev::Arrive {
                    m,
                    c,
                    epoch,
                    validated: false,
                    probe,
                },
            );
        } else {
            self.no_answer(m, c, probe, self.model.connect_timeout);
        }
    }

    /// The attempt gets no answer: the meter gives up after `after`.
    fn no_answer(&mut self, m: u32, c: C, probe: bool, after: Duration) {
        let ev = if probe {
            Ev::ProbeAnswer {
                m,
                c,
                reachable: false,
            }
        } else {
            Ev::Outcome {
                m,
                c,
                epoch: u32::MAX,
                how: How::Unreachable,
            }
        };
        self.after(after, ev);
    }

    fn arrive(&mut self, m: u32, c: C, epoch: u32, validated: bool, probe: bool) {
        let timeout = self.model.connect_timeout.saturating_sub(self.half_rtt());
        let now = self.instant(self.now);
        let half = self.half_rtt();
        let col = &mut self.collectors[c as usize];
        if !col.up || col.epoch != epoch {
            self.no_answer(m, c, probe, timeout);
            return;
        }
        let load = Load {
            connections: col.sessions as usize + col.handshakes,
            handshakes: col.handshakes,
            sessions: col.sessions as usize,
            buffered_bytes: 0,
            draining: col.draining,
            fleet: None,
        };
        match col.admission.on_incoming(&load, validated, now) {
            Admit::Refuse(reason) => {
                *self.refusals.entry(reason.as_str()).or_default() += 1;
                // CONNECTION_REFUSED comes back at once; the meter counts it as unreachable.
                self.no_answer(m, c, probe, half);
            }
            Admit::Retry => self.after(
                self.model.rtt,
                Ev::Arrive {
                    m,
                    c,
                    epoch,
                    validated: true,
                    probe,
                },
            ),
            Admit::Accept => {
                col.handshakes += 1;
                let service = ns(Duration::from_secs_f64(1.0 / self.model.capacity.max(1e-9)));
                let done = col.busy_until.max(self.now) + service;
                col.busy_until = done;
                let rtt = ns(self.model.rtt);
                let half = ns(half);
                if probe {
                    self.push(
                        done + half,
                        Ev::ProbeAnswer {
                            m,
                            c,
                            reachable: true,
                        },
                    );
                    self.push(done + rtt, Ev::ProbeClosed { c, epoch });
                } else {
                    self.push(done + rtt, Ev::Hello { m, c, epoch });
                }
            }
        }
    }

    fn hello(&mut self, m: u32, c: C, epoch: u32) {
        let half = self.half_rtt();
        let roll = self.rng.random::<f64>();
        let unavailable_ms = self.model.unavailable_retry.as_millis() as u32;
        let col = &mut self.collectors[c as usize];
        if !col.up || col.epoch != epoch {
            let timeout = self.model.connect_timeout / 2;
            self.no_answer(m, c, false, timeout);
            return;
        }
        col.handshakes = col.handshakes.saturating_sub(1);
        col.handshakes_done += 1;
        let verdict = if col.draining {
            Err(("draining", unavailable_ms))
        } else if col.sink_down {
            Err(("sink_unavailable", unavailable_ms))
        } else {
            let fleet = col.view.on_hello(col.sessions);
            let load = Load {
                sessions: col.sessions as usize,
                fleet,
                ..Load::default()
            };
            self.model
                .budgets
                .on_hello(&load, roll)
                .map_err(|over| (reject_label(over.budget), over.retry_after_ms))
        };
        let how = match verdict {
            Ok(()) => {
                col.sessions += 1;
                How::Welcome
            }
            Err((label, retry_after_ms)) => {
                *self.refusals.entry(label).or_default() += 1;
                How::Rejected {
                    retry_after_ms,
                    with_view: label != "draining",
                }
            }
        };
        self.after(half, Ev::Outcome { m, c, epoch, how });
    }

    fn outcome(&mut self, m: u32, c: C, epoch: u32, how: How) {
        let now = self.instant(self.now);
        let addr = Arc::clone(&self.collectors[c as usize].addr);
        let alive = {
            let col = &self.collectors[c as usize];
            col.up && col.epoch == epoch
        };
        self.meters[m as usize].dialing = None;
        match how {
            How::Welcome if alive => {
                let meter = &mut self.meters[m as usize];
                meter.session = Some(c);
                if !std::mem::replace(&mut meter.welcomed, true) {
                    self.welcomed += 1;
                }
                self.connected += 1;
                if let Some(s) = self.selector(m) {
                    s.on_welcome(&addr, now);
                }
                self.take_view(m, c);
                if self.herd_at.is_some()
                    && self.all_connected_at.is_none()
                    && self.welcomed == self.meters.len()
                {
                    self.all_connected_at = Some(self.now);
                }
            }
            // Welcomed by a collector that died meanwhile: as good as no answer.
            How::Welcome | How::Unreachable => {
                if let Some(s) = self.selector(m) {
                    s.on_failure(&addr, Failure::NoAnswer, now);
                }
            }
            How::Rejected {
                retry_after_ms,
                with_view,
            } => {
                if with_view {
                    self.take_view(m, c);
                }
                let retry_after = (retry_after_ms > 0).then(|| Duration::from_millis(retry_after_ms.into()));
                if let Some(s) = self.selector(m) {
                    s.on_failure(&addr, Failure::Refused { retry_after }, now);
                }
            }
        }
        self.schedule(m);
    }

    /// The meter takes collector `c`'s fleet view (sent with `Welcome`, and with a `Reject` that
    /// sends it elsewhere).
    fn take_view(&mut self, m: u32, c: C) {
        let now = self.instant(self.now);
        let members = self.collectors[c as usize].members;
        let meter = &mut self.meters[m as usize];
        if meter.welcome_view == members {
            return;
        }
        meter.welcome_view = members;
        self.refresh_ring(m, now);
    }

    /// The meter's fleet view changed (DNS answer or `Welcome`/`Reject` view): its selector gets
    /// the ring over both, if that is a different ring.
    fn refresh_ring(&mut self, m: u32, now: Instant) {
        let meter = &self.meters[m as usize];
        let ring = self.ring_of(meter.dns_version, meter.welcome_view);
        if let Some(s) = self.selector(m)
            && !Arc::ptr_eq(s.ring(), &ring)
        {
            s.on_fleet(ring, now);
        }
    }

    fn probe_answer(&mut self, m: u32, c: C, reachable: bool) {
        let now = self.instant(self.now);
        let meter = &mut self.meters[m as usize];
        if meter.probing != Some(c) {
            return;
        }
        meter.probing = None;
        let Some(current) = meter.session else {
            self.schedule(m);
            return;
        };
        if reachable {
            // Leave the session for the first choice.
            self.session_over(m, current, Ended::Moved);
            return;
        }
        let home = Arc::clone(&self.collectors[c as usize].addr);
        if let Some(s) = self.selector(m) {
            s.on_home_unreachable(&home, now);
        }
        self.schedule(m);
    }

    /// The meter's session with `c` ended. The collector's count drops with it, unless the
    /// session was lost with the collector (a killed collector's count went to 0 at once).
    fn session_over(&mut self, m: u32, c: C, ended: Ended) {
        let now = self.instant(self.now);
        let meter = &mut self.meters[m as usize];
        if meter.session != Some(c) {
            return;
        }
        meter.session = None;
        meter.probing = None;
        self.connected -= 1;
        if !matches!(ended, Ended::Gone) {
            let col = &mut self.collectors[c as usize];
            col.sessions = col.sessions.saturating_sub(1);
        }
        if let Some(s) = self.selector(m) {
            s.on_ended(ended, now);
        }
        self.schedule(m);
    }

    fn dns_refresh(&mut self, m: u32) {
        let now = self.instant(self.now);
        let latest = (self.dns_versions.len() - 1) as u8;
        let meter = &mut self.meters[m as usize];
        if meter.dns_version == latest || meter.selector.is_none() {
            return;
        }
        meter.dns_version = latest;
        self.refresh_ring(m, now);
        self.schedule(m);
    }

    /// Collector `c` learns its peers' session counts (if it is up).
    fn poll_round(&mut self, c: C) {
        let now = self.instant(self.now);
        // Its peers: what the fleet's DNS name gives now, and its configured members.
        let mut peers = self.dns_versions.last().cloned().unwrap_or_default();
        peers.extend(&self.member_sets[self.collectors[c as usize].members as usize]);
        peers.sort_unstable();
        peers.dedup();
        let answers: Vec<(Arc<str>, Option<PeerLoad>)> = peers
            .iter()
            .filter(|&&p| p != c)
            .map(|&p| {
                let peer = &self.collectors[p as usize];
                let load = PeerLoad {
                    sessions: peer.sessions,
                    hellos: peer.view.hellos(),
                };
                (Arc::clone(&peer.addr), peer.up.then_some(load))
            })
            .collect();
        let col = &mut self.collectors[c as usize];
        if col.up {
            col.view.on_round(col.sessions, &answers, now);
        }
    }

    /// Collector `c` stops; in-flight work to it is lost. Each of its meters writes within its
    /// batch cadence (at a uniform moment of it) and finds the collector silent after that.
    fn kill(&mut self, c: C) {
        let col = &mut self.collectors[c as usize];
        col.up = false;
        col.epoch += 1;
        col.sessions = 0;
        col.handshakes = 0;
        for m in 0..self.meters.len() {
            if self.meters[m].session == Some(c) {
                let write = self.uniform(self.model.write_every);
                self.after(write + self.model.silence_detect, Ev::Gone { m: m as u32, c });
            }
        }
    }

    fn down(&mut self, c: C) {
        let col = &mut self.collectors[c as usize];
        col.up = false;
        col.epoch += 1;
        col.handshakes = 0;
    }

    fn up(&mut self, c: C) {
        let now = self.instant(self.now);
        let col = &mut self.collectors[c as usize];
        col.up = true;
        col.draining = false;
        col.epoch += 1;
        col.sessions = 0;
        col.handshakes = 0;
        col.admission = Admission::new(self.model.budgets, now);
        col.view = FleetLoadView::new(self.model.poll_interval * 3);
    }

    fn action(&mut self, i: usize) {
        let (_, action) = self.world.plan.actions[i];
        match action {
            Action::Herd => {
                self.herd_at = Some(self.now);
                self.event("herd starts".to_owned());
                let herd = self.world.first_wave..self.meters.len();
                if !self.world.first_dials.is_empty() {
                    let n = herd.len().max(1) as f64;
                    for (k, m) in herd.enumerate() {
                        let at = first_dial_at(&self.world.first_dials, (k + 1) as f64 / n);
                        self.after(at, Ev::Dial { m: m as u32 });
                    }
                } else if self.world.start_spread.is_zero() {
                    self.start_meters(herd);
                } else {
                    let step = self.world.start_spread / herd.len().max(1) as u32;
                    for (k, m) in herd.enumerate() {
                        self.after(step * k as u32, Ev::Start { m: m as u32 });
                    }
                }
                if self.welcomed == self.meters.len() {
                    self.all_connected_at = Some(self.now);
                }
            }
            Action::KillCollector(c) => {
                self.kill(c as C);
                self.event(format!("c{} killed", c + 1));
            }
            Action::RollingRestart(span) => {
                let each = span / self.world.collectors.max(1) as u32;
                for c in 0..self.world.collectors {
                    self.after(each * c as u32, Ev::Drain { c: c as C });
                }
            }
            Action::AddCollector => {
                let c = self.world.collectors as C;
                self.up(c);
                self.poll_round(c);
                let phase = self.uniform(self.model.poll_interval);
                self.after(phase, Ev::Poll { c });
                self.start_lag_samples(c);
                let mut next = self.dns_versions[0].clone();
                if !self.world.single_record_dns {
                    next.push(c);
                }
                self.publish_dns(next);
                self.event(format!("c{} added", c + 1));
            }
            Action::SinkDown => self.set_sink_down(true, "sink down"),
            Action::SinkUp => self.set_sink_down(false, "sink up"),
            // The stream answers nothing until the other nodes elect its new leader; the
            // node's return changes nothing the meters see.
            Action::NodeDown => {
                self.set_sink_down(true, "stream leader's node killed");
                self.after(NODE_LOSS_ELECTION, Ev::Elected);
            }
            Action::NodeUp => self.event("node back".to_owned()),
            // A soak's events (`herd soak` is live only; these keep the model whole).
            Action::RestartCollector(c) => self.drain(c as C),
            Action::StartCollector(c) => {
                self.up(c as C);
                self.event(format!("c{} started again", c + 1));
            }
            Action::DnsDrop(c) | Action::DnsRestore(c) => {
                let c = c as C;
                let mut next = self.dns_versions.last().cloned().unwrap_or_default();
                next.retain(|x| *x != c);
                if matches!(action, Action::DnsRestore(_)) {
                    next.push(c);
                }
                self.publish_dns(next);
                self.event(format!("DNS changed for c{}", c + 1));
            }
        }
    }

    /// With an adaptive accept rate, collector `c` samples its lag from now on.
    fn start_lag_samples(&mut self, c: C) {
        if self.model.budgets.adaptive_lag.is_some() {
            self.after(accept_rate::SAMPLE_EVERY, Ev::Lag { c });
        }
    }

    /// The lag the adaptive accept rate sees: the handshake work queued ahead (one at a time,
    /// `1/capacity` each), which a live collector's established sessions wait behind.
    fn lag_sample(&mut self, c: C) {
        let now = self.instant(self.now);
        let col = &mut self.collectors[c as usize];
        if col.up {
            let lag = Duration::from_nanos(col.busy_until.saturating_sub(self.now));
            col.admission.on_lag(lag, now);
        }
        self.after(accept_rate::SAMPLE_EVERY, Ev::Lag { c });
    }

    /// DNS answers `next` from now on; every started meter sees it at its next refresh, a
    /// uniform moment within the TTL.
    fn publish_dns(&mut self, next: Vec<C>) {
        self.dns_versions.push(next);
        for m in 0..self.started {
            let when = self.uniform(self.model.dns_ttl);
            self.after(when, Ev::Dns { m: m as u32 });
        }
    }

    /// Every collector's sink down (acks held) or back.
    fn set_sink_down(&mut self, down: bool, what: &str) {
        for col in &mut self.collectors {
            col.sink_down = down;
        }
        self.event(what.to_owned());
    }

    /// Collector `c` drains: new attempts are refused, its meters get `Drain`, it stops once they
    /// left, and comes back after the restart time.
    fn drain(&mut self, c: C) {
        self.collectors[c as usize].draining = true;
        let half = self.half_rtt();
        for m in 0..self.meters.len() {
            if self.meters[m].session == Some(c) {
                self.after(half, Ev::Drained { m: m as u32, c });
            }
        }
        self.after(half * 2, Ev::Down { c });
        self.after(half * 2 + self.model.restart_time, Ev::Up { c });
        self.event(format!("c{} drains", c + 1));
    }

    fn event(&mut self, what: String) {
        self.timeline.events.push(Event {
            t_s: Duration::from_nanos(self.now).as_secs_f64(),
            what,
        });
    }

    fn sample(&mut self) {
        let (last_at, last_attempts, last_refusals) = &self.last_sample;
        let interval = Duration::from_nanos(self.now - last_at).as_secs_f64();
        let refusals_per_s = self
            .refusals
            .iter()
            .filter_map(|(reason, n)| {
                let new = n - last_refusals.get(reason).copied().unwrap_or(0);
                (new > 0).then(|| ((*reason).to_owned(), new as f64 / interval))
            })
            .collect();
        let t_s = Duration::from_nanos(self.now).as_secs_f64();
        let (up, total, max) = self
            .collectors
            .iter()
            .filter(|c| c.up)
            .fold((0u64, 0u64, 0u64), |(n, t, m), c| {
                (n + 1, t + c.sessions, m.max(c.sessions))
            });
        if total > 0 {
            self.balance.push((t_s, max as f64 * up as f64 / total as f64));
        }
        self.timeline.samples.push(Sample {
            t_s,
            sessions: self
                .collectors
                .iter()
                .map(|c| if c.up { c.sessions } else { 0 })
                .collect(),
            attempts_per_s: (self.attempts - last_attempts) as f64 / interval,
            refusals_per_s,
            collector_rss_bytes: vec![0; self.collectors.len()],
            collector_ready: self.collectors.iter().map(|c| c.up && !c.sink_down).collect(),
            handshakes_per_s: self
                .collectors
                .iter()
                .map(|c| (c.handshakes_done - c.handshakes_sampled) as f64 / interval)
                .collect(),
            accept_rate: self
                .collectors
                .iter()
                .map(|c| if c.up { c.admission.accept_rate() } else { 0.0 })
                .collect(),
            control_lag_ms: self
                .collectors
                .iter()
                .map(|c| c.busy_until.saturating_sub(self.now) as f64 / 1e6)
                .collect(),
            ..Sample::default()
        });
        for c in &mut self.collectors {
            c.handshakes_sampled = c.handshakes_done;
        }
        self.last_sample = (self.now, self.attempts, self.refusals.clone());
        self.after(SAMPLE_EVERY, Ev::Sample);
    }

    fn finish(self) -> Outcome {
        Outcome {
            time_to_all_connected: match (self.herd_at, self.all_connected_at) {
                (Some(h), Some(a)) => Some(Duration::from_nanos(a.saturating_sub(h))),
                _ => None,
            },
            connected_at_end: self.meters.iter().map(|m| m.session.map(usize::from)).collect(),
            up_at_end: self.collectors.iter().map(|c| c.up).collect(),
            refusals: self.refusals.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            attempts: self.attempts,
            balance: self.balance,
            timeline: self.timeline,
        }
    }
}

/// The label the live collector counts a `Reject(overloaded)` under (see its `session.rs`).
fn reject_label(budget: &str) -> &'static str {
    match budget {
        "sessions" => "overloaded_sessions",
        "bounded_load" => "overloaded_bounded_load",
        _ => "overloaded_buffered_bytes",
    }
}

/// When the meter at `fraction` (0 < fraction <= 1) of the herd first dials: linear within each
/// tenth of `tenths` (the instant each further tenth had dialled; the first tenth from 0).
fn first_dial_at(tenths: &[Duration], fraction: f64) -> Duration {
    let at = (fraction.clamp(0.0, 1.0) * tenths.len() as f64).max(0.0);
    let i = (at.ceil() as usize).clamp(1, tenths.len());
    let from = if i == 1 { Duration::ZERO } else { tenths[i - 2] };
    let within = (at - (i - 1) as f64).clamp(0.0, 1.0);
    from + (tenths[i - 1].saturating_sub(from)).mul_f64(within)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_dials_are_spread_evenly_within_each_tenth() {
        let tenths: Vec<Duration> = (1..=10).map(|i| Duration::from_millis(i * 100)).collect();
        assert_eq!(first_dial_at(&tenths, 0.05), Duration::from_millis(50));
        assert_eq!(first_dial_at(&tenths, 0.1), Duration::from_millis(100));
        assert_eq!(first_dial_at(&tenths, 1.0), Duration::from_millis(1_000));
        // A tenth that dialled in the same sample as the one before: all at that instant.
        let mut flat = tenths.clone();
        flat[4] = flat[3];
        assert_eq!(first_dial_at(&flat, 0.45), Duration::from_millis(400));
        assert_eq!(first_dial_at(&flat, 0.55), Duration::from_millis(500));
    }
}
