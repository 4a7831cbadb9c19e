//! The monitoring kept in `monitoring/`: the Prometheus rules pass `promtool check rules` and
//! their unit tests, every alert has a case where it fires and one where it stays silent, and a
//! real Prometheus scraping two collectors and a meter answers every query of both Grafana
//! dashboards and fires the collector-down alert for a killed collector within its `for:`.
//!
//! Needs Debian's `prometheus` package (`tests/ensure-prometheus.sh`); without it every test here
//! fails saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ringflow_tests::process::{CollectorProcess, free_tcp_port_on, free_udp_addr, run_bounded};
use ringflow_tests::prometheus::{self, Prometheus, ScrapeJob};
use ringflow_tests::{TestBed, test_reconnect};
use serde_json::Value;
use tokio::time::Instant;

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-fixture");
/// What the dashboards' `$__rate_interval` becomes: a window long enough that an event seen
/// once (a meter's handshake) stays in a rate for as long as the test looks for it.
const RATE_INTERVAL: &str = "1m";
/// How long every dashboard query has to return data once the meter runs.
const DATA_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rules_path() -> PathBuf {
    repo().join("monitoring/prometheus/ringflow.rules.yml")
}

fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every alerting rule of the rules file, by name.
fn alert_rules() -> anyhow::Result<BTreeMap<String, Value>> {
    let rules = read_yaml(&rules_path())?;
    let mut alerts = BTreeMap::new();
    for group in rules["groups"].as_array().context("no groups")? {
        for rule in group["rules"].as_array().context("a group without rules")? {
            if let Some(name) = rule["alert"].as_str() {
                anyhow::ensure!(
                    alerts.insert(name.to_owned(), rule.clone()).is_none(),
                    "alert {name} defined twice"
                );
            }
        }
    }
    Ok(alerts)
}

/// Runs `promtool ARGS` (bounded to 60 s); an error with its whole output unless it succeeds.
async fn promtool(args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new(prometheus::promtool()?);
    cmd.args(args).current_dir(dir);
    let out = run_bounded(cmd, Duration::from_secs(60)).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        out.status
    );
    Ok(text)
}

#[tokio::test]
async fn promtool_accepts_the_rules_and_their_unit_tests_pass() -> anyhow::Result<()> {
    let dir = repo().join("monitoring/prometheus");
    let checked = promtool(&["check", "rules", "ringflow.rules.yml"], &dir).await?;
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "ringflow.rules.test.yml"], &dir).await?;
    assert!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

#[test]
fn every_alert_has_a_firing_and_a_silent_case_and_a_runbook() -> anyhow::Result<()> {
    let alerts = alert_rules()?;
    assert!(alerts.len() >= 16, "{:?}", alerts.keys());
    for (name, rule) in &alerts {
        for key in ["summary", "description", "runbook"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "alert {name} has no {key}");
        }
        assert!(
            !rule["annotations"]["runbook"]
                .as_str()
                .unwrap_or_default()
                .contains('\n'),
            "alert {name}: the runbook is one line"
        );
        assert!(
            rule["labels"]["severity"].is_string(),
            "alert {name} has no severity"
        );
    }
    let tests = read_yaml(&repo().join("monitoring/prometheus/ringflow.rules.test.yml"))?;
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_array().context("no tests")? {
        for check in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = check["alertname"].as_str().context("a check without alertname")?;
            assert!(
                alerts.contains_key(name),
                "the tests check {name}, which is not an alert"
            );
            match check["exp_alerts"].as_array() {
                Some(expected) if !expected.is_empty() => {
                    for alert in expected {
                        assert!(alert["exp_labels"].is_object(), "{name}: labels not checked");
                        assert!(
                            alert["exp_annotations"].is_object(),
                            "{name}: annotations not checked"
                        );
                    }
                    firing.insert(name.to_owned())
                }
                _ => silent.insert(name.to_owned()),
            };
        }
    }
    for name in alerts.keys() {
        assert!(firing.contains(name), "no test case where {name} fires");
        assert!(silent.contains(name), "no test case where {name} stays silent");
    }
    Ok(())
}

/// The `for:` of `alert` in the rules file (`30s`, `1m`, `1h`).
fn for_duration(alert: &str) -> anyhow::Result<Duration> {
    let rules = alert_rules()?;
    let rule = rules.get(alert).with_context(|| format!("no alert {alert}"))?;
    let text = rule["for"]
        .as_str()
        .with_context(|| format!("{alert} has no for:"))?;
    let (number, unit) = text.split_at(text.len() - 1);
    let n: u64 = number.parse().with_context(|| format!("for: {text}"))?;
    Ok(Duration::from_secs(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => anyhow::bail!("unsupported for: {text}"),
    }))
}

/// Every query of a dashboard, its template variables replaced: panel targets, and the metric
/// of each `label_values(METRIC, LABEL)` variable.
fn dashboard_queries(file: &str) -> anyhow::Result<Vec<String>> {
    let path = repo().join("monitoring/grafana").join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let dashboard: Value = serde_json::from_str(&text)?;
    let mut queries = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .context("no templating")?
    {
        if variable["type"] == "query" {
            let query = variable["query"]["query"]
                .as_str()
                .context("a variable without query")?;
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(metric, _)| metric.to_owned())
                .with_context(|| format!("not label_values(METRIC, LABEL): {query}"))?;
            queries.push(inner);
        }
    }
    for panel in dashboard["panels"].as_array().context("no panels")? {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        for target in panel["targets"].as_array().context("a panel without targets")? {
            queries.push(
                target["expr"]
                    .as_str()
                    .context("a target without expr")?
                    .to_owned(),
            );
        }
    }
    Ok(queries
        .into_iter()
        .map(|q| {
            q.replace("$__rate_interval", RATE_INTERVAL)
                .replace("$collector", ".*")
                .replace("$meter", ".*")
        })
        .inspect(|q| assert!(!q.contains('$'), "a variable left in {q}"))
        .collect())
}

/// Whether a query's samples hold a number (a quantile of no events is NaN: not data).
fn has_number(samples: &[Value]) -> bool {
    samples
        .iter()
        .filter_map(|s| s["value"][1].as_str())
        .any(|v| v.parse::<f64>().is_ok_and(|v| !v.is_nan()))
}

/// A meter config for the live test: both collectors, the synthetic source and the sockets
/// source's sock_diag tier (the tier that measures completeness, whether or not the test runs
/// as root), its admin endpoint on `admin`.
fn meter_config(
    bed: &TestBed,
    collectors: &[SocketAddr],
    admin: SocketAddr,
) -> anyhow::Result<ringflow_meter::Config> {
    let extra = format!(
        "{}\n[batch]\nmax_age_ms = 100\n\n[sources.synthetic]\nenabled = true\nrecords_per_second = 200\nflows = 50\n\n[sources.sockets]\nenabled = true\ninterval_ms = 500\n\n[sources.sockets.bpf]\nmode = \"off\"\n",
        test_reconnect("")
    );
    let text = bed.meter_toml("m1", collectors, &extra).replace(
        "admin.listen = \"127.0.0.1:0\"",
        &format!("admin.listen = \"{admin}\""),
    );
    Ok(ringflow_meter::Config::parse(&text)?)
}

/// Polls until every query has returned a number at least once; fails naming those that never did.
async fn wait_for_every_query(prom: &Prometheus, queries: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + DATA_TIMEOUT;
    let mut waiting: BTreeSet<&String> = queries.iter().collect();
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut answered = Vec::new();
        for &q in &waiting {
            if has_number(&prom.query(q).await?) {
                answered.push(q);
            }
        }
        for q in answered {
            waiting.remove(q);
        }
        tokio::time::sleep(prometheus::INTERVAL / 2).await;
    }
    anyhow::ensure!(
        waiting.is_empty(),
        "no data within {DATA_TIMEOUT:?} for {} dashboard queries:\n{}",
        waiting.len(),
        waiting.iter().map(|q| q.as_str()).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

/// The `RingflowCollectorDown` alerts Prometheus has now: (instance, state).
async fn collector_down_alerts(prom: &Prometheus) -> anyhow::Result<Vec<(String, String)>> {
    Ok(prom
        .alerts()
        .await?
        .iter()
        .filter(|a| a["labels"]["alertname"] == "RingflowCollectorDown")
        .map(|a| {
            let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (field(&a["labels"]["instance"]), field(&a["state"]))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_query_and_sees_a_killed_collector_down()
-> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let localhost = [std::net::Ipv4Addr::LOCALHOST];
    let admins: Vec<SocketAddr> = (0..3)
        .map(|_| free_tcp_port_on(&localhost).map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
        .collect::<anyhow::Result<_>>()?;
    let jobs = [
        ScrapeJob {
            name: "ringflow-collector",
            targets: admins[..2].to_vec(),
        },
        ScrapeJob {
            name: "ringflow-meter",
            targets: vec![admins[2]],
        },
    ];
    let prom = Prometheus::start(&bed.path().join("prometheus"), &jobs, &rules_path()).await?;
    let command = ringflow_tests::process::CollectorCommand {
        binary: COLLECTOR_BIN.into(),
        leading_args: Vec::new(),
        log_dir: Some(bed.path().to_owned()),
    };
    let mut collectors = Vec::new();
    for (name, admin) in ["c1", "c2"].into_iter().zip(&admins) {
        collectors
            .push(CollectorProcess::start_at(&command, &bed, name, (free_udp_addr()?, *admin), "").await?);
    }
    // The meter starts once Prometheus has scraped both collectors, so the rates see its
    // handshake and Hello move series that already exist.
    ringflow_tests::poll_until(Duration::from_secs(30), "both collectors scraped", async || {
        let up = prom.query("up{job=\"ringflow-collector\"} == 1").await;
        up.is_ok_and(|s| s.len() == 2)
    })
    .await?;
    let addrs: Vec<SocketAddr> = collectors.iter().map(|c| c.addr).collect();
    let meter = ringflow_tests::start_meter(meter_config(&bed, &addrs, admins[2])?).await?;

    let mut queries = dashboard_queries("fleet.json")?;
    queries.extend(dashboard_queries("meters.json")?);
    wait_for_every_query(&prom, &queries).await?;

    // Kill c1 and time the alert. Margin: one scrape to see the target gone, one evaluation
    // to start the alert pending and one to find its `for:` over, each at most INTERVAL late,
    // twice over, plus 5 s for a busy machine.
    let hold = for_duration("RingflowCollectorDown")?;
    let margin = prometheus::INTERVAL * 6 + Duration::from_secs(5);
    let killed = admins[0].to_string();
    assert!(
        collector_down_alerts(&prom).await?.is_empty(),
        "collector down before any kill"
    );
    collectors[0].kill();
    let killed_at = Instant::now();
    let fired_after = loop {
        let alerts = collector_down_alerts(&prom).await?;
        for (instance, _) in &alerts {
            assert_eq!(
                instance, &killed,
                "collector down for a collector still running: {alerts:?}"
            );
        }
        if alerts.iter().any(|(_, state)| state == "firing") {
            break killed_at.elapsed();
        }
        anyhow::ensure!(
            killed_at.elapsed() < hold + margin,
            "RingflowCollectorDown not firing {:?} after the kill (for: {hold:?}, margin {margin:?}): {alerts:?}",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        fired_after >= hold,
        "fired after {fired_after:?}, before its for: {hold:?}"
    );
    eprintln!("RingflowCollectorDown fired {fired_after:?} after the kill (for: {hold:?})");
    meter.stop().await?;
    Ok(())
}
