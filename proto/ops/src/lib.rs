//! Operational conventions both binaries present to operators, kept in one place so the meter
//! and the collector cannot drift apart: how a configuration file is read and what its errors
//! say, which values both accept (DNS names), the exit code for bad configuration, logging setup,
//! what signals mean, how a binary tells systemd it is ready, stopping and alive
//! ([`sd_notify`]), and what `--version` says ([`build_info`]).
//!
//! Must never: know any binary's configuration keys or hold state (beyond the notify socket).

pub mod build_info;
pub mod sd_notify;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration (a config file, the files it names, or flags).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Parses TOML text into `T` (unknown keys are refused by `T`'s `deny_unknown_fields`).
/// A value of the wrong type is reported with its dotted key (`limits.max_frame_bytes`), as well as
/// the line TOML found it on.
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| parse_error(e.to_string()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        match key.as_str() {
            "." | "" => parse_error(e.into_inner().to_string()),
            _ => parse_error(format!("key `{key}`: {}", e.into_inner())),
        }
    })
}

/// Reads and parses a TOML configuration file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what: "config file",
        path: path.to_owned(),
        source,
    })?;
    parse_toml(&text, path)
}

/// Makes each relative path absolute against `base` (the config file's directory).
pub fn resolve_paths<'a>(base: &Path, paths: impl IntoIterator<Item = &'a mut PathBuf>) {
    for p in paths {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}

/// `Ok` if `min <= value <= max`, else an error naming `key` and the range.
pub fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("must be between {min} and {max}, got {value}"),
        ))
    }
}

/// Log line formats: `text` for people, `json` (one object per line, fields as keys) for log
/// pipelines.
pub const LOG_FORMATS: [&str; 2] = ["text", "json"];

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`), as `format` (one of
/// [`LOG_FORMATS`]; anything else is text).
pub fn init_logging(default_filter: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Signal meanings: the first SIGTERM or SIGINT cancels `shutdown` (a graceful stop: `graceful`
/// says what that does, for the log); a second one exits the process at once with code 1.
pub async fn shutdown_on_signals(shutdown: CancellationToken, graceful: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop this process with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: {graceful} (send it again to exit immediately)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(1);
}

/// A plausible DNS name: dot-separated labels of letters, digits, '-' and '_', at most 253 bytes.
pub fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        port: u16,
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let err = parse_toml::<Sample>("port = 70000", Path::new("x.toml")).unwrap_err();
        assert!(
            err.to_string().starts_with("config file x.toml is not valid"),
            "{err}"
        );
        let err = parse_toml::<Sample>("port = 1\nprot = 2", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        let err = read_toml::<Sample>(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.toml"), "{err}");
        let err = check_range("a.b", 5, 10, 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `a.b`: must be between 10 and 20, got 5"
        );
    }

    #[test]
    fn relative_paths_follow_the_base() {
        let mut a = PathBuf::from("certs/x.pem");
        let mut b = PathBuf::from("/abs");
        resolve_paths(Path::new("/etc/ringflow"), [&mut a, &mut b]);
        assert_eq!(
            (a.as_path(), b.as_path()),
            (Path::new("/etc/ringflow/certs/x.pem"), Path::new("/abs"))
        );
    }
}
