//! A real Prometheus server (Debian's `/usr/bin/prometheus`) for the monitoring tests: started on
//! a free loopback port with its own config and store in a directory the caller owns, scraping
//! the targets it is given every second with `monitoring/`'s rules loaded, and killed when its
//! handle is dropped. Its HTTP API is read with a plain HTTP/1.0 `GET` (no client library).
//!
//! Never: uses a fixed port, reuses a store, or leaves the server running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::process::{ChildProcess, free_tcp_port_on};

/// Where Debian's `prometheus` package puts the server.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
/// How often the server scrapes and evaluates its rules (`scrape_interval`,
/// `evaluation_interval`).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Says how to install what is missing: the tests never pass without Prometheus.
const INSTALL_HINT: &str =
    "run tests/ensure-prometheus.sh (Debian's prometheus package has both prometheus and promtool)";

/// The `promtool` binary: on `$PATH`, else Debian's path; an error naming the install script
/// when there is none.
pub fn promtool() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    let found = on_path.or_else(|| Some(PathBuf::from("/usr/bin/promtool")).filter(|p| p.is_file()));
    found.with_context(|| format!("promtool not found: {INSTALL_HINT}"))
}

/// A scrape job: its `job_name` and its targets.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    pub name: &'static str,
    pub targets: Vec<SocketAddr>,
}

/// A running Prometheus server.
pub struct Prometheus {
    /// The server; killed when this handle is dropped.
    _process: ChildProcess,
    /// Its HTTP API and UI.
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts a server in `dir` (config, store and log there) scraping `jobs` with `rules`
    /// loaded, and returns once it logs that it serves requests.
    pub async fn start(dir: &Path, jobs: &[ScrapeJob], rules: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} not found: {INSTALL_HINT}"
        );
        std::fs::create_dir_all(dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(jobs, rules))?;
        let port = free_tcp_port_on(&[std::net::Ipv4Addr::LOCALHOST])?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let args: Vec<std::ffi::OsString> = vec![
            format!("--config.file={}", config.display()).into(),
            format!("--storage.tsdb.path={}", dir.join("data").display()).into(),
            format!("--web.listen-address={addr}").into(),
            "--log.level=info".into(),
        ];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let log = dir.join("prometheus.log");
        let process = ChildProcess::start_logged(
            Path::new(PROMETHEUS),
            &args,
            "prometheus",
            "Server is ready to receive web requests",
            Some(&log),
        )
        .await
        .with_context(|| format!("starting prometheus (its log: {})", log.display()))?;
        Ok(Self {
            _process: process,
            addr,
        })
    }

    /// `GET /api/v1/query?query=EXPR`: the result's samples (an instant vector's elements).
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = self
            .api(&format!("/api/v1/query?query={}", url_encode(expr)))
            .await?;
        match body["data"]["result"].as_array() {
            Some(samples) => Ok(samples.clone()),
            None => anyhow::bail!("query {expr:?}: no result in {body}"),
        }
    }

    /// `GET /api/v1/alerts`: every pending and firing alert.
    pub async fn alerts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = self.api("/api/v1/alerts").await?;
        Ok(body["data"]["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// An API call; an error unless it answers 200 with `"status":"success"`.
    async fn api(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = get(self.addr, path).await?;
        let json: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("GET {path}: {status} {body}"))?;
        anyhow::ensure!(
            status == 200 && json["status"] == "success",
            "GET {path}: {status} {body}"
        );
        Ok(json)
    }
}

/// The server's config: the global intervals, the rules file, one job per [`ScrapeJob`].
fn config_yaml(jobs: &[ScrapeJob], rules: &Path) -> String {
    let secs = INTERVAL.as_secs();
    let mut text = format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n  evaluation_interval: {secs}s\nrule_files:\n  - {}\nscrape_configs:\n",
        rules.display()
    );
    for job in jobs {
        let targets: Vec<String> = job.targets.iter().map(|t| format!("'{t}'")).collect();
        text.push_str(&format!(
            "  - job_name: {}\n    static_configs:\n      - targets: [{}]\n",
            job.name,
            targets.join(", ")
        ));
    }
    text
}

/// An HTTP/1.0 `GET` (so the answer is never chunked), bounded to 10 s: status and body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET {path} on {addr}: no answer within 10 s"))??;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            url_encode(r#"rate(x{a=~".*"}[5s]) > 0"#),
            "rate%28x%7Ba%3D~%22.%2A%22%7D%5B5s%5D%29%20%3E%200"
        );
    }

    #[test]
    fn the_config_names_every_job_and_the_rules() {
        let jobs = [ScrapeJob {
            name: "ringflow-collector",
            targets: vec![SocketAddr::from(([127, 0, 0, 1], 9464))],
        }];
        let text = config_yaml(&jobs, Path::new("/r.yml"));
        assert!(text.contains("  - /r.yml\n"), "{text}");
        assert!(text.contains("job_name: ringflow-collector\n"), "{text}");
        assert!(text.contains("targets: ['127.0.0.1:9464']"), "{text}");
        assert!(text.contains("evaluation_interval: 1s"), "{text}");
    }
}
