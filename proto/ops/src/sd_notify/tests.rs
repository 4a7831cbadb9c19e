use std::collections::HashMap;

use super::*;

fn env(vars: &[(&str, &str)], pid: u32) -> (NotifyEnv, Vec<EnvError>) {
    let map: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
    NotifyEnv::parse(|k| map.get(k).cloned(), pid)
}

#[test]
fn no_socket_means_nothing_to_do() {
    assert_eq!(env(&[], 7), (NotifyEnv::default(), vec![]));
    assert_eq!(env(&[("NOTIFY_SOCKET", "")], 7), (NotifyEnv::default(), vec![]));
    assert!(!Notifier::new(&NotifyEnv::default()).unwrap().is_enabled());
    // A disabled notifier sends nothing and says so.
    let n = Notifier::disabled();
    assert!(!n.ready(None) && !n.stopping(None));
    assert!(n.watchdog().is_none());
}

#[test]
fn the_socket_is_a_path_or_an_abstract_name() {
    let (e, errors) = env(&[("NOTIFY_SOCKET", "/run/systemd/notify")], 7);
    assert_eq!(e.socket, Some(SocketTarget::Path("/run/systemd/notify".into())));
    assert!(errors.is_empty());
    let (e, _) = env(&[("NOTIFY_SOCKET", "@/org/freedesktop/systemd1/notify")], 7);
    assert_eq!(
        e.socket,
        Some(SocketTarget::Abstract(
            b"/org/freedesktop/systemd1/notify".to_vec()
        ))
    );
    let (e, errors) = env(&[("NOTIFY_SOCKET", "relative/notify")], 7);
    assert_eq!(e.socket, None);
    assert_eq!(errors, vec![EnvError::Socket("relative/notify".into())]);
    let (e, errors) = env(&[("NOTIFY_SOCKET", "@")], 7);
    assert_eq!((e.socket, errors.len()), (None, 1));
}

#[test]
fn the_watchdog_interval_is_ours_unless_another_pid_is_named() {
    let sock = ("NOTIFY_SOCKET", "/run/n");
    let (e, errors) = env(&[sock, ("WATCHDOG_USEC", "30000000")], 7);
    assert_eq!(e.watchdog, Some(Duration::from_secs(30)));
    assert!(errors.is_empty());
    let (e, _) = env(&[sock, ("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "7")], 7);
    assert_eq!(e.watchdog, Some(Duration::from_secs(30)));
    // Meant for another process (a parent that started us): not ours, and not an error.
    let (e, errors) = env(&[sock, ("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "8")], 7);
    assert_eq!((e.watchdog, errors.len()), (None, 0));
    for bad in ["0", "-5", "30s", ""] {
        let (e, errors) = env(&[sock, ("WATCHDOG_USEC", bad)], 7);
        assert_eq!(e.watchdog, None, "{bad}");
        assert_eq!(errors, vec![EnvError::WatchdogUsec(bad.into())]);
    }
    let (e, errors) = env(&[sock, ("WATCHDOG_USEC", "1000"), ("WATCHDOG_PID", "me")], 7);
    assert_eq!(
        (e.watchdog, errors),
        (None, vec![EnvError::WatchdogPid("me".into())])
    );
    assert_eq!(ping_period(Duration::from_secs(30)), Duration::from_secs(15));
}

#[test]
fn messages_are_lines_and_a_status_stays_on_its_own() {
    assert_eq!(encode(&[Message::Ready]), b"READY=1\n");
    assert_eq!(
        encode(&[Message::Stopping, Message::Status("draining:\n3 sessions")]),
        b"STOPPING=1\nSTATUS=draining: 3 sessions\n"
    );
    assert_eq!(encode(&[Message::Watchdog]), b"WATCHDOG=1\n");
}

#[test]
fn ready_is_sent_once_and_never_after_stopping() {
    let mut l = Lifecycle::default();
    assert!(l.ready());
    assert!(!l.ready(), "readiness regained is not announced again");
    assert!(l.stopping());
    assert!(!l.stopping());
    let mut l = Lifecycle::default();
    assert!(l.stopping());
    assert!(
        !l.ready(),
        "a service stopping before it was ready never says READY"
    );
}

/// Receives what is waiting on `socket` (non-blocking: the sends are done when this runs).
fn drain(socket: &UnixDatagram) -> Vec<String> {
    socket.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = socket.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

#[test]
fn datagrams_reach_a_socket_file() {
    let dir = std::env::temp_dir().join(format!("ringflow-sd-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify");
    let _ = std::fs::remove_file(&path);
    let listener = UnixDatagram::bind(&path).unwrap();
    let notifier = Notifier::new(&NotifyEnv {
        socket: Some(SocketTarget::Path(path.clone())),
        watchdog: Some(Duration::from_secs(30)),
    })
    .unwrap();
    assert!(notifier.ready(Some("ready: 0 sessions")));
    assert!(!notifier.clone().ready(None), "clones share the once-only rule");
    notifier.alive(None);
    assert!(notifier.stopping(None));
    assert_eq!(
        drain(&listener),
        [
            "READY=1\nSTATUS=ready: 0 sessions\n",
            "WATCHDOG=1\n",
            "STOPPING=1\n"
        ]
    );
    drop(listener);
    // Nobody listens any more: sending fails, is logged once, and the caller never notices.
    notifier.alive(None);
    notifier.alive(None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(target_os = "linux")]
#[test]
fn datagrams_reach_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ringflow-sd-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixDatagram::bind_addr(&addr).unwrap();
    let (env, errors) = env(&[("NOTIFY_SOCKET", &format!("@{name}"))], 7);
    assert!(errors.is_empty());
    let notifier = Notifier::new(&env).unwrap();
    assert!(notifier.ready(None));
    assert_eq!(drain(&listener), ["READY=1\n"]);
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_pings_every_half_interval() {
    let name = format!("ringflow-sd-notify-wd-{}", std::process::id());
    let (listener, target) = {
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        (UnixDatagram::bind(&path).unwrap(), path)
    };
    let notifier = Notifier::new(&NotifyEnv {
        socket: Some(SocketTarget::Path(target.clone())),
        watchdog: Some(Duration::from_secs(30)),
    })
    .unwrap();
    let task = notifier.spawn_watchdog(|| Some("ok".into())).unwrap();
    // The first ping at once, then one every 15 s of (paused, virtual) time.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(drain(&listener), ["WATCHDOG=1\nSTATUS=ok\n"]);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(drain(&listener).len(), 1);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(drain(&listener).len(), 2);
    task.abort();
    assert!(Notifier::disabled().spawn_watchdog(|| None).is_none());
    let _ = std::fs::remove_dir_all(target.parent().unwrap());
}
