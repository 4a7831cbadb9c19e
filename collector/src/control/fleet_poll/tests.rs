//! The load poll: the peer set, the plan, the HTTP client against real and canned servers, and
//! whole rounds against real admin servers on loopback.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::control::admin::{AdminState, LoadReport, Readiness};
use crate::control::load::{LoadCounters, SessionCount};
use crate::control::udp_stats::UdpSocketProbe;
use crate::data::sink::{BufferedBytes, SinkHealth};

fn report(collector: &str, sessions: u64, draining: bool) -> LoadReport {
    LoadReport {
        collector: collector.into(),
        sessions,
        hellos: 0,
        draining,
    }
}

fn counters(metrics: &Arc<CollectorMetrics>) -> Arc<LoadCounters> {
    LoadCounters::new(Arc::clone(metrics), BufferedBytes::default())
}

/// `n` sessions held open in `load` while the guards live.
fn sessions(load: &Arc<LoadCounters>, n: usize) -> Vec<SessionCount> {
    (0..n).map(|_| load.session()).collect()
}

/// A server on loopback that answers one connection with `response`, then closes it. Its
/// address.
async fn canned(response: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        // Read the request head, then answer and close.
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
    });
    addr
}

async fn fetch_canned(response: &[u8]) -> Result<LoadReport, PollError> {
    fetch_load(canned(response.to_vec()).await, Duration::from_secs(5)).await
}

#[tokio::test]
async fn a_response_is_read_by_its_length_chunks_or_end() {
    let fixed = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 47\r\n\r\n{\"collector\":\"c2\",\"sessions\":123,\"draining\":false}";
    // 47 bytes cut the body short of its closing brace: the length is honoured.
    assert!(matches!(fetch_canned(fixed).await, Err(PollError::Json(_))));
    let fixed = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"collector\":\"c2\",\"sessions\":123,\"draining\":false}";
    assert_eq!(fetch_canned(fixed).await.unwrap(), report("c2", 123, false));
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n{\"sessions\":7,\"dr\r\n13;ext=1\r\naining\":true,\"x\":1}\r\n0\r\n\r\n";
    assert_eq!(fetch_canned(chunked).await.unwrap(), report("", 7, true));
    let to_end = b"HTTP/1.0 200 OK\r\n\r\n{\"sessions\":0}";
    assert_eq!(fetch_canned(to_end).await.unwrap(), report("", 0, false));
}

#[tokio::test]
async fn anything_but_a_200_with_a_load_report_is_an_error() {
    let status = fetch_canned(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
    assert!(matches!(status, Err(PollError::Status(404))), "{status:?}");
    let not_http: [&[u8]; 6] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
    ];
    for response in not_http {
        let err = fetch_canned(response).await.unwrap_err();
        assert!(
            matches!(err, PollError::Http(_)),
            "{:?}: {err}",
            String::from_utf8_lossy(response)
        );
    }
    let negative = fetch_canned(b"HTTP/1.1 200 OK\r\n\r\n{\"sessions\":-1}").await;
    assert!(matches!(negative, Err(PollError::Json(_))), "{negative:?}");
}

#[tokio::test]
async fn an_answer_is_read_up_to_its_bound_and_no_further() {
    let padding = " ".repeat(MAX_RESPONSE_BYTES);
    let body = format!("{{\"sessions\":1{padding}}}");
    let big_body = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let err = fetch_canned(big_body.as_bytes()).await.unwrap_err();
    assert!(matches!(err, PollError::TooLarge), "{err}");
    let to_end = format!("HTTP/1.0 200 OK\r\n\r\n{body}");
    let err = fetch_canned(to_end.as_bytes()).await.unwrap_err();
    assert!(matches!(err, PollError::TooLarge), "{err}");
    let big_head = format!("HTTP/1.1 200 OK\r\nX-Pad: {padding}\r\nContent-Length: 2\r\n\r\n{{}}");
    let err = fetch_canned(big_head.as_bytes()).await.unwrap_err();
    assert!(matches!(err, PollError::TooLarge), "{err}");
}

#[test]
fn the_peer_set_leaves_this_collector_out() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let myself = Myself {
        admin: "10.0.0.1:9464".parse().unwrap(),
        ips: vec![ip("10.0.0.9")],
        seen: ["10.0.0.7:9464".parse().unwrap()].into(),
    };
    let candidates = [
        "10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.9", "10.0.0.7", "10.0.0.2", "::1",
    ]
    .map(ip);
    let peers: Vec<String> = peer_set(candidates, 9464, &myself)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(peers, ["10.0.0.2:9464", "10.0.0.3:9464", "[::1]:9464"]);
    // Listening on every address, loopback addresses on its port are itself.
    let everywhere = Myself {
        admin: "0.0.0.0:9464".parse().unwrap(),
        ips: Vec::new(),
        seen: BTreeSet::new(),
    };
    let peers = peer_set([ip("127.0.0.1"), ip("10.0.0.2")], 9464, &everywhere);
    assert_eq!(peers, ["10.0.0.2:9464".parse::<SocketAddr>().unwrap()]);
    // Never more peers than a fleet may have members.
    let many = (0..600u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i)));
    assert_eq!(peer_set(many, 1, &everywhere).len(), MAX_FLEET_MEMBERS);
}

#[test]
fn the_plan_takes_peers_from_the_name_and_the_members() {
    let id: Arc<str> = Arc::from("c1");
    let admin: SocketAddr = "10.0.0.1:9464".parse().unwrap();
    let config = |fleet: &str, admission: &str| {
        Config::parse(&format!(
            "collector_id = \"c1\"\nadmin_listen = \"10.0.0.1:9464\"\n{}\n[fleet]\n{fleet}\n[admission]\n{admission}\n",
            crate::config::tests::MINIMAL
        ))
        .unwrap()
    };
    let members = "advertise = \"c1.example:4433\"\nmembers = [\"c1.example:4433\", \"10.0.0.2:4433\", \"[fd00::3]:4433\", \"10.0.0.2:4434\"]";
    let plan = PollPlan::from_config(&config(members, ""), admin, Arc::clone(&id)).unwrap();
    assert_eq!(plan.member_hosts, ["10.0.0.2", "fd00::3"]);
    assert_eq!(plan.own_host.as_deref(), Some("c1.example"));
    assert_eq!((plan.admin_port, plan.interval), (9464, Duration::from_secs(1)));
    assert_eq!(plan.forget_after(), Duration::from_secs(3));
    let named = config(
        "name = \"collectors.example\"\nload_admin_port = 9000\nload_poll_ms = 200",
        "",
    );
    let plan = PollPlan::from_config(&named, admin, Arc::clone(&id)).unwrap();
    assert_eq!(plan.name.as_deref(), Some("collectors.example"));
    assert_eq!(
        (plan.admin_port, plan.interval),
        (9000, Duration::from_millis(200))
    );
    // Nothing to poll: the cap is off, there are no peers, or their port is unknown.
    let off = config(members, "bounded_load_epsilon = 0");
    assert_eq!(
        PollPlan::from_config(&off, admin, Arc::clone(&id)),
        Err(NoPoll::BoundedLoadOff)
    );
    let alone = config("advertise = \"10.0.0.1:4433\"\nmembers = [\"10.0.0.1:4433\"]", "");
    assert_eq!(
        PollPlan::from_config(&alone, admin, Arc::clone(&id)),
        Err(NoPoll::NoPeers)
    );
    // admin_listen on port 0: bound on some port, which says nothing of the peers'.
    let mut dynamic = config(members, "");
    dynamic.admin_listen = "127.0.0.1:0".parse().unwrap();
    let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
    assert_eq!(
        PollPlan::from_config(&dynamic, bound, Arc::clone(&id)),
        Err(NoPoll::UnknownAdminPort)
    );
    dynamic.fleet.load_admin_port = 9464;
    let plan = PollPlan::from_config(&dynamic, bound, Arc::clone(&id)).unwrap();
    assert_eq!((plan.admin_port, plan.own_admin), (9464, bound));
}

#[tokio::test]
async fn host_names_are_resolved_each_round_and_keep_their_last_addresses_on_failure() {
    let plan = PollPlan {
        name: Some("localhost".into()),
        member_hosts: vec!["peer.invalid".into(), "10.0.0.2".into()],
        admin_port: 9464,
        interval: Duration::from_secs(1),
        own_admin: "127.0.0.9:9464".parse().unwrap(),
        own_host: Some("10.0.0.2".into()),
        collector_id: Arc::from("me"),
    };
    let metrics = Arc::new(CollectorMetrics::new());
    let (mut poller, _view) = Poller::new(plan, Arc::clone(&metrics), counters(&metrics));
    // peer.invalid once resolved to 10.0.0.3; now it cannot be resolved (RFC 6761).
    poller
        .resolved
        .insert("peer.invalid".into(), vec!["10.0.0.3".parse().unwrap()]);
    let peers: Vec<String> = poller
        .peers(Duration::from_millis(500))
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    // localhost from the system resolver; 10.0.0.2 is this collector's advertised host.
    assert_eq!(peers, ["10.0.0.3:9464", "127.0.0.1:9464"]);
}

/// A real admin server on loopback: the address of its `/load`, and the state behind it.
async fn admin_server(ip: [u8; 4], port: u16, id: &str) -> (SocketAddr, Arc<AdminState>, CancellationToken) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, port)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(CollectorMetrics::new());
    let state = Arc::new(AdminState {
        collector_id: Arc::from(id),
        fleet_load: None,
        metrics: Arc::clone(&metrics),
        load: counters(&metrics),
        readiness: Readiness {
            draining: CancellationToken::new(),
            sink: SinkHealth::starting(metrics, true),
        },
        udp: UdpSocketProbe::default(),
    });
    let stop = CancellationToken::new();
    tokio::spawn(crate::control::admin::serve(
        listener,
        Arc::clone(&state),
        stop.clone(),
    ));
    (addr, state, stop)
}

#[tokio::test]
async fn the_client_reads_a_real_admin_servers_load() {
    let (addr, state, stop) = admin_server([127, 0, 0, 1], 0, "c2").await;
    let _sessions = sessions(&state.load, 42);
    let load = fetch_load(addr, Duration::from_secs(5)).await.unwrap();
    assert_eq!(load, report("c2", 42, false));
    state.readiness.draining.cancel();
    assert!(fetch_load(addr, Duration::from_secs(5)).await.unwrap().draining);
    stop.cancel();
    // A silent server costs the timeout, no more.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    let err = fetch_load(silent.local_addr().unwrap(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, PollError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_round_counts_answering_peers_and_leaves_out_itself_and_drainers() {
    // Peers on 127.0.0.2-4 on one port, as a fleet is; 127.0.0.5 has nothing listening.
    let first = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = first.local_addr().unwrap().port();
    drop(first);
    let (_b, b, _stop_b) = admin_server([127, 0, 0, 2], port, "b").await;
    let (_c, c, _stop_c) = admin_server([127, 0, 0, 3], port, "c").await;
    let (_me, _me_state, _stop_me) = admin_server([127, 0, 0, 4], port, "me").await;
    let _b_sessions = sessions(&b.load, 10);
    let _c_sessions = sessions(&c.load, 20);
    let metrics = Arc::new(CollectorMetrics::new());
    let load = counters(&metrics);
    let _own_sessions = sessions(&load, 30);
    let plan = PollPlan {
        name: None,
        member_hosts: ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
            .map(String::from)
            .to_vec(),
        admin_port: port,
        interval: Duration::from_secs(2),
        // Its admin address is not one the members name: its id gives it away.
        own_admin: "127.0.0.9:1".parse().unwrap(),
        own_host: None,
        collector_id: Arc::from("me"),
    };
    let (mut poller, view) = Poller::new(plan, Arc::clone(&metrics), load);
    poller.round().await;
    let fleet = view.lock().unwrap().estimate(30).unwrap();
    assert_eq!((fleet.collectors, fleet.sessions), (3, 60));
    assert_eq!(metrics.fleet.fleet_peers.get(), 2);
    assert_eq!(metrics.fleet.fleet_poll_rounds.get(), 1);
    assert_eq!(metrics.fleet.fleet_poll_failures.get(), 1, "127.0.0.5 refused");
    assert_eq!(metrics.fleet.fleet_mean_sessions.get(), 20.0);
    assert!(
        view.lock().unwrap().silent_hosts().is_empty(),
        "one failed poll is not yet silence"
    );
    assert!(
        poller
            .myself
            .seen
            .contains(&SocketAddr::from(([127, 0, 0, 4], port)))
    );
    // c drains: out of the estimate at once.
    c.readiness.draining.cancel();
    poller.round().await;
    let fleet = view.lock().unwrap().estimate(30).unwrap();
    assert_eq!((fleet.collectors, fleet.sessions), (2, 40));
    assert_eq!(metrics.fleet.fleet_poll_failures.get(), 2);
    assert_eq!(metrics.fleet.fleet_peers.get(), 1);
    // Two rounds without an answer: 127.0.0.5 is told to meters as not answering; a drainer
    // answers, so it is not.
    assert_eq!(view.lock().unwrap().silent_hosts(), ["127.0.0.5"]);
    // Itself is not asked again.
    let peers = poller.peers(Duration::from_secs(1)).await;
    assert_eq!(peers.len(), 3, "{peers:?}");
    assert!(!peers.contains(&SocketAddr::from(([127, 0, 0, 4], port))));
}
