//! `meter check` against a real DNS server: it resolves the fleet, prints the meter's ring order
//! and the collector it would pick and why; with DNS down it says it would use the last-known-good
//! fleet; with neither, it fails with a clear message.

use std::process::Command;

use ringflow_meter::fleet::LastKnownGood;
use ringflow_meter::ring::Ring;
use ringflow_tests::TestBed;
use ringflow_tests::dns::{DnsServer, Records};

const METER_BIN: &str = env!("CARGO_BIN_EXE_meter-fixture");

fn check(config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(METER_BIN)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("meter-fixture runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_the_ring_choice_with_and_without_dns() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let dns = DnsServer::start(Records {
        a: vec![
            [127, 0, 0, 2].into(),
            [127, 0, 0, 3].into(),
            [127, 0, 0, 4].into(),
        ],
        srv: Vec::new(),
        ttl: 30,
        single_answer: false,
    })
    .await?;
    let config = bed.fleet_meter_config("m042", dns.addr(), 4433, "")?;
    let path = bed.path().join("check.toml");
    std::fs::write(
        &path,
        bed.meter_toml(
            "m042",
            &[],
            &format!(
                "[fleet]\nname = \"{}\"\nport = 4433\nnameservers = [\"{}\"]\nresolve_timeout_ms = 500\n",
                ringflow_tests::dns::FLEET_NAME,
                dns.addr()
            ),
        ),
    )?;
    let addrs: Vec<String> = (2..=4).map(|i| format!("127.0.0.{i}:4433")).collect();
    let ring = Ring::new(&addrs);
    let order: Vec<String> = ring.walk("m042").map(|c| c.to_string()).collect();

    let (code, out, err) = check(&path);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("3 collector(s) from DNS, TTL 30 s"), "{out}");
    let listed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().split_once(". ").map(|(_, c)| c))
        .filter(|c| c.starts_with("127."))
        .collect();
    assert_eq!(listed, order, "{out}");
    assert!(
        out.contains(&format!(
            "would connect to {} (certificate name collectors.ringflow.test)",
            order[0]
        )),
        "{out}"
    );

    // DNS down, but the meter ran before: it would use the saved fleet.
    dns.stop().await;
    let members: Vec<std::sync::Arc<str>> = ring.members().to_vec();
    std::fs::create_dir_all(&config.state_dir)?;
    LastKnownGood::save(&config.state_dir, &members)?;
    let (code, out, _) = check(&path);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("DNS fails") && out.contains("last-known-good"),
        "{out}"
    );
    assert!(out.contains(&format!("would connect to {}", order[0])), "{out}");

    // Neither: a clear failure.
    std::fs::remove_file(LastKnownGood::path(&config.state_dir))?;
    let (code, out, err) = check(&path);
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("no collector is known"), "{err}");
    Ok(())
}

/// `meter check` lists the enabled sources and tries what each needs here: the netlink socket
/// table, the counters file, the UDP port. One that cannot run fails the check, by name.
#[test]
fn check_lists_the_sources_and_whether_each_can_run_here() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let path = bed.path().join("sources.toml");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let write = |interfaces_path: &str, netflow: &str| {
        std::fs::write(
            &path,
            bed.meter_toml(
                "m1",
                &["127.0.0.1:4433".parse().expect("an address")],
                &format!(
                    "[sources.sockets]\nenabled = true\n[sources.sockets.bpf]\nmode = \"off\"\n\
                     [sources.interfaces]\nenabled = true\npath = \"{interfaces_path}\"\n\
                     [sources.netflow]\nenabled = true\nlisten = \"{netflow}\"\n"
                ),
            ),
        )
    };
    write("/proc/net/dev", "127.0.0.1:0")?;
    let (code, out, err) = check(&path);
    assert_eq!(code, Some(0), "{out}\n{err}");
    // The sockets source's completeness, measured over a short window of this host's traffic.
    assert!(
        out.lines().any(|l| l.starts_with("source sockets:")
            && l.contains("close notifications subscribed")
            && l.contains("completeness")),
        "{out}"
    );
    for line in [
        "source sockets: TCP connections every 1000 ms: ok,",
        "source interfaces: /proc/net/dev every 10000 ms: ok,",
        "source netflow: NetFlow v5/v9 and IPFIX on udp 127.0.0.1:0: ok, the port is free",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }

    let missing = bed.path().join("no-such-file");
    write(&missing.display().to_string(), &taken.local_addr()?.to_string())?;
    let (code, out, _) = check(&path);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("source interfaces:") && out.contains("CANNOT RUN: cannot read"),
        "{out}"
    );
    assert!(
        out.contains("source netflow:") && out.contains("CANNOT RUN: cannot listen for NetFlow on"),
        "{out}"
    );
    assert!(
        out.contains("source sockets: TCP connections every 1000 ms: ok"),
        "{out}"
    );
    Ok(())
}
