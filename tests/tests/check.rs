//! `meter check` against a real DNS server: it resolves the fleet, prints the meter's ring order
//! and the collector it would pick and why; with DNS down it says it would use the last-known-good
//! fleet; with neither, it fails with a clear message.

use std::process::Command;

use ringflow_agent::fleet::LastKnownGood;
use ringflow_agent::ring::Ring;
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
