//! systemd's service notifications (`sd_notify(3)`), for units with `Type=notify` and
//! `WatchdogSec=`: `READY=1` when the service is ready, `STOPPING=1` when it starts to stop,
//! `WATCHDOG=1` every half watchdog interval while it is alive, and `STATUS=` lines.
//!
//! The protocol is small enough to speak here: the service manager names a Unix datagram socket
//! in `NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`), and each
//! datagram carries newline-separated `KEY=VALUE` lines. `WATCHDOG_USEC` is the watchdog
//! interval; `WATCHDOG_PID`, when set, names the process it is meant for.
//!
//! The sans-IO part (reading the environment from a lookup, encoding messages, the once-only
//! rule of [`Lifecycle`]) is plain functions and structs; [`Notifier`] sends. Without
//! `NOTIFY_SOCKET` a [`Notifier`] does nothing.
//!
//! Owns: the notify socket and what is sent on it. Must never: block its caller (the socket is
//! non-blocking: a full queue is a failed send), fail the process (a failed send is logged once,
//! then only counted as lost), or send `READY=1` twice or after `STOPPING=1`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The variable naming the service manager's notify socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog interval in microseconds.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The process the watchdog interval is meant for (unset: this one).
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketTarget {
    /// A socket file (`NOTIFY_SOCKET=/run/systemd/notify`).
    Path(PathBuf),
    /// A name in Linux's abstract namespace (`NOTIFY_SOCKET=@name`), without the `@`.
    Abstract(Vec<u8>),
}

/// What the environment asks for: where to notify, and how often to tell the watchdog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyEnv {
    /// None: not run by a service manager that listens; nothing is sent.
    pub socket: Option<SocketTarget>,
    /// The watchdog interval (`WATCHDOG_USEC`), when it is meant for this process.
    pub watchdog: Option<Duration>,
}

/// A variable that is set but cannot be used (the rest of the environment still is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract socket name (@name)")]
    Socket(String),
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    WatchdogUsec(String),
    #[error("WATCHDOG_PID={0:?} is not a process id")]
    WatchdogPid(String),
}

impl NotifyEnv {
    /// Reads the three variables through `lookup` for the process `pid`. A watchdog interval
    /// meant for another process (`WATCHDOG_PID` set to another pid) is not ours: none.
    pub fn parse(lookup: impl Fn(&str) -> Option<OsString>, pid: u32) -> (NotifyEnv, Vec<EnvError>) {
        let mut errors = Vec::new();
        let socket = lookup(NOTIFY_SOCKET).and_then(|raw| {
            let bytes = raw.as_bytes();
            match bytes.first() {
                None => None,
                Some(b'/') => Some(SocketTarget::Path(PathBuf::from(raw))),
                Some(b'@') if bytes.len() > 1 => Some(SocketTarget::Abstract(bytes[1..].to_vec())),
                Some(_) => {
                    errors.push(EnvError::Socket(raw.to_string_lossy().into_owned()));
                    None
                }
            }
        });
        let ours = match lookup(WATCHDOG_PID) {
            None => true,
            Some(raw) => match raw.to_str().and_then(|s| s.parse::<u32>().ok()) {
                Some(p) => p == pid,
                None => {
                    errors.push(EnvError::WatchdogPid(raw.to_string_lossy().into_owned()));
                    false
                }
            },
        };
        let watchdog =
            lookup(WATCHDOG_USEC).and_then(|raw| match raw.to_str().and_then(|s| s.parse::<u64>().ok()) {
                Some(usec) if usec > 0 => Some(Duration::from_micros(usec)),
                _ => {
                    errors.push(EnvError::WatchdogUsec(raw.to_string_lossy().into_owned()));
                    None
                }
            });
        let watchdog = watchdog.filter(|_| ours);
        (NotifyEnv { socket, watchdog }, errors)
    }
}

/// How often to tell the watchdog that we are alive: every half interval, as systemd advises, so
/// one late ping does not get the service killed.
pub fn ping_period(watchdog: Duration) -> Duration {
    watchdog / 2
}

/// One notification line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// `READY=1`: start-up is finished.
    Ready,
    /// `STOPPING=1`: the service has begun to stop.
    Stopping,
    /// `WATCHDOG=1`: the service is alive.
    Watchdog,
    /// `STATUS=...`: a free-form line `systemctl status` shows (newlines become spaces).
    Status(&'a str),
}

/// One datagram: each message on a line of its own.
pub fn encode(messages: &[Message<'_>]) -> Vec<u8> {
    let mut out = String::new();
    for m in messages {
        match m {
            Message::Ready => out.push_str("READY=1"),
            Message::Stopping => out.push_str("STOPPING=1"),
            Message::Watchdog => out.push_str("WATCHDOG=1"),
            Message::Status(text) => {
                out.push_str("STATUS=");
                out.extend(text.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
            }
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// The once-only rules: `READY=1` at most once and never after `STOPPING=1` (systemd only
/// acts on the first; a collector that loses and regains readiness says nothing more), and
/// `STOPPING=1` at most once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    ready: bool,
    stopping: bool,
}

impl Lifecycle {
    /// True when `READY=1` is to be sent now.
    pub fn ready(&mut self) -> bool {
        let send = !self.ready && !self.stopping;
        self.ready = true;
        send
    }

    /// True when `STOPPING=1` is to be sent now.
    pub fn stopping(&mut self) -> bool {
        !std::mem::replace(&mut self.stopping, true)
    }
}

/// Sends notifications to the service manager, or does nothing when there is none. Cheap to
/// clone; every clone shares the socket and the once-only rules.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// Unbound and non-blocking: each datagram is addressed to `target`.
    socket: UnixDatagram,
    target: std::os::unix::net::SocketAddr,
    /// For the log line of a failed send.
    named: String,
    watchdog: Option<Duration>,
    lifecycle: Mutex<Lifecycle>,
    /// Set at the first failed send, which is the only one logged.
    failed: AtomicBool,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("socket", &self.inner.as_ref().map(|i| &i.named))
            .field("watchdog", &self.watchdog())
            .finish()
    }
}

impl Notifier {
    /// Sends nothing.
    pub fn disabled() -> Self {
        Notifier::default()
    }

    /// From this process's environment; problems with it are logged, and leave the notifier
    /// disabled (or without a watchdog), never stop the process.
    pub fn from_env() -> Self {
        let (env, errors) = NotifyEnv::parse(|k| std::env::var_os(k), std::process::id());
        for error in errors {
            tracing::warn!(%error, "systemd notification settings ignored");
        }
        match Notifier::new(&env) {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(%error, "cannot open a socket to notify systemd; not notifying");
                Notifier::disabled()
            }
        }
    }

    /// For the socket and watchdog `env` names (disabled when it names no socket).
    pub fn new(env: &NotifyEnv) -> std::io::Result<Self> {
        let Some(target) = &env.socket else {
            return Ok(Notifier::disabled());
        };
        let (addr, named) = match target {
            SocketTarget::Path(path) => (
                std::os::unix::net::SocketAddr::from_pathname(path)?,
                path.display().to_string(),
            ),
            SocketTarget::Abstract(name) => (
                abstract_addr(name)?,
                format!("@{}", String::from_utf8_lossy(name)),
            ),
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        tracing::debug!(socket = %named, watchdog = ?env.watchdog, "notifying systemd");
        Ok(Notifier {
            inner: Some(Arc::new(Inner {
                socket,
                target: addr,
                named,
                watchdog: env.watchdog,
                lifecycle: Mutex::new(Lifecycle::default()),
                failed: AtomicBool::new(false),
            })),
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The watchdog interval, when there is a watchdog and a socket to tell it through.
    pub fn watchdog(&self) -> Option<Duration> {
        self.inner.as_ref().and_then(|i| i.watchdog)
    }

    /// `READY=1` (with a status line when given), the first time only and never after
    /// [`stopping`](Self::stopping). True when it was sent now.
    pub fn ready(&self, status: Option<&str>) -> bool {
        self.once(Lifecycle::ready, Message::Ready, status)
    }

    /// `STOPPING=1` (with a status line when given), the first time only.
    pub fn stopping(&self, status: Option<&str>) -> bool {
        self.once(Lifecycle::stopping, Message::Stopping, status)
    }

    /// `WATCHDOG=1`, with a status line when given.
    pub fn alive(&self, status: Option<&str>) {
        let mut messages = vec![Message::Watchdog];
        messages.extend(status.map(Message::Status));
        self.send(&messages);
    }

    /// Pings the watchdog every half interval, with the line `status` gives each time, from a
    /// task on the current runtime: if that runtime stops running its tasks, the pings stop and
    /// the service manager restarts the process. None without a watchdog.
    pub fn spawn_watchdog(
        &self,
        status: impl Fn() -> Option<String> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let period = ping_period(self.watchdog()?);
        let notifier = self.clone();
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                notifier.alive(status().as_deref());
            }
        }))
    }

    fn once(&self, rule: fn(&mut Lifecycle) -> bool, message: Message<'_>, status: Option<&str>) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        if !rule(&mut inner.lifecycle.lock().unwrap_or_else(|e| e.into_inner())) {
            return false;
        }
        let mut messages = vec![message];
        messages.extend(status.map(Message::Status));
        self.send(&messages);
        true
    }

    fn send(&self, messages: &[Message<'_>]) {
        let Some(inner) = &self.inner else {
            return;
        };
        if let Err(error) = inner.socket.send_to_addr(&encode(messages), &inner.target)
            && !inner.failed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                %error,
                socket = %inner.named,
                "cannot notify systemd (logged once; the service keeps running)"
            );
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket names are Linux only",
    ))
}

#[cfg(test)]
mod tests;
