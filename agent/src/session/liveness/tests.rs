use super::*;

const RTT: Duration = Duration::from_micros(200);

fn config() -> LivenessConfig {
    LivenessConfig {
        silence_timeout: Duration::from_millis(1_000),
        ack_timeout_min: Duration::from_millis(5_000),
        ack_timeout_max: Duration::from_millis(30_000),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `received` datagrams in, `sent` out.
fn t(received: u64, sent: u64) -> Traffic {
    Traffic { received, sent }
}

/// Runs the checks the session would run until `until`, with `received(at)` packets received
/// by each instant and every write leaving at once; returns the verdicts other than `Fine`, with
/// when they came.
fn drive(
    l: &mut Liveness,
    start: Instant,
    until: Duration,
    oldest_sent: Option<Instant>,
    received: impl Fn(Duration) -> u64,
) -> Vec<(Duration, Verdict)> {
    let mut out = Vec::new();
    let mut now = start;
    // The first write (made by the caller) has left.
    let mut sent = 1;
    while let Some(at) = l.next_check(oldest_sent, RTT) {
        now = now.max(at);
        if now > start + until {
            break;
        }
        let v = l.check(now, t(received(now - start), sent), oldest_sent, RTT);
        if v == Verdict::Probe {
            l.on_write(now, t(received(now - start), sent));
            sent += 1;
        }
        if v != Verdict::Fine {
            out.push((now - start, v));
        }
        if matches!(v, Verdict::Silent(_)) {
            break;
        }
    }
    out
}

#[test]
fn a_collector_that_answers_nothing_after_a_write_is_silent_after_the_bound_and_its_confirmation() {
    let t0 = Instant::now();
    let mut l = Liveness::new(config());
    assert!(l.on_write(t0, t(10, 0)));
    let verdicts = drive(&mut l, t0, ms(5_000), Some(t0), |_| 10);
    assert_eq!(
        verdicts,
        vec![
            (ms(1_000), Verdict::Probe),
            (ms(1_125), Verdict::Silent(ms(1_125)))
        ]
    );
}

#[test]
fn a_packet_after_the_write_keeps_the_collector_alive_however_long_its_ack_takes() {
    // The transport acknowledged the batch at once; the collector's data plane is slow: no ack
    // for 4 s. Probes are answered (the control plane is fine): one more packet each second.
    let t0 = Instant::now();
    let mut l = Liveness::new(config());
    assert!(l.on_write(t0, t(10, 0)));
    let verdicts = drive(&mut l, t0, ms(4_000), Some(t0), |at| {
        11 + at.as_millis() as u64 / 1_000
    });
    assert!(verdicts.iter().all(|(_, v)| *v == Verdict::Probe), "{verdicts:?}");
    // Probes start once the batch is a quarter of the ack bound (5 s) late, then one a second.
    assert_eq!(verdicts.first().map(|v| v.0), Some(ms(1_250)));
    assert!(verdicts.len() <= 3, "{verdicts:?}");
}

#[test]
fn a_collector_that_stops_answering_probes_is_found_silent_while_its_batch_waits() {
    let t0 = Instant::now();
    let mut l = Liveness::new(config());
    assert!(l.on_write(t0, t(10, 0)));
    // The batch was acknowledged by the transport and probes answered, until the collector
    // died at 2 s.
    let verdicts = drive(&mut l, t0, ms(10_000), Some(t0), |at| {
        if at < ms(2_000) {
            11 + at.as_millis() as u64 / 1_000
        } else {
            12
        }
    });
    let last = verdicts.last().copied();
    assert!(matches!(last, Some((_, Verdict::Silent(_)))), "{verdicts:?}");
    // Found within a probe interval plus a silence bound and its confirmation.
    assert!(last.unwrap().0 <= ms(2_000 + 1_250 + 1_125), "{verdicts:?}");
}

#[test]
fn a_batch_unacked_past_the_ack_bound_is_a_stall_reported_once_per_bound() {
    let t0 = Instant::now();
    let mut l = Liveness::new(config());
    assert!(l.on_write(t0, t(10, 0)));
    let verdicts = drive(&mut l, t0, ms(10_500), Some(t0), |at| {
        11 + at.as_millis() as u64 / 100
    });
    let stalls: Vec<_> = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Stalled(_)))
        .collect();
    assert_eq!(
        stalls,
        vec![
            &(ms(5_000), Verdict::Stalled(ms(5_000))),
            &(ms(10_000), Verdict::Stalled(ms(10_000)))
        ]
    );
}

#[test]
fn the_ack_bound_follows_the_acks_seen_within_its_floor_and_ceiling() {
    let mut l = Liveness::new(config());
    assert_eq!(l.ack_bound(), ms(5_000), "no ack seen: the floor");
    for _ in 0..50 {
        l.on_ack(ms(3));
    }
    assert_eq!(l.ack_bound(), ms(5_000), "fast acks: still the floor");
    for _ in 0..50 {
        l.on_ack(ms(2_000));
    }
    let slow = l.ack_bound();
    assert!(slow >= ms(8_000) && slow <= ms(30_000), "{slow:?}");
    for _ in 0..50 {
        l.on_ack(ms(60_000));
    }
    assert_eq!(l.ack_bound(), ms(30_000), "the ceiling");
}

#[test]
fn the_silence_bound_grows_with_a_long_path() {
    let l = Liveness::new(config());
    assert_eq!(l.silence_bound(RTT), ms(1_000));
    // 300 ms of RTT: three probe timeouts of (2 x 300 + 25) ms.
    assert_eq!(l.silence_bound(ms(300)), ms(1_875));
}

#[test]
fn nothing_in_flight_and_nothing_written_needs_no_check() {
    let mut l = Liveness::new(config());
    assert_eq!(l.next_check(None, RTT), None);
    let t0 = Instant::now();
    assert!(l.on_write(t0, t(0, 0)));
    assert_eq!(l.next_check(None, RTT), Some(t0 + ms(1_000)));
    assert_eq!(l.check(t0 + ms(1_000), t(1, 1), None, RTT), Verdict::Fine);
    assert_eq!(l.next_check(None, RTT), None, "answered, nothing in flight");
}

#[test]
fn a_write_made_while_an_earlier_one_was_watched_is_watched_from_its_own_instant() {
    // A batch at 0 is answered at 5 ms; the collector dies at 500 ms; the next batch goes out
    // at 900 ms, while the first write's watch still runs (it ends at its check, at 1 s).
    let t0 = Instant::now();
    let mut l = Liveness::new(config());
    assert!(l.on_write(t0, t(10, 0)));
    assert!(!l.on_write(t0 + ms(900), t(11, 0)), "a watch runs already");
    // At 1 s: the first write was answered, the second not: watched from 900 ms.
    assert_eq!(
        l.check(t0 + ms(1_000), t(11, 1), Some(t0 + ms(900)), RTT),
        Verdict::Fine
    );
    assert_eq!(l.next_check(Some(t0 + ms(900)), RTT), Some(t0 + ms(1_900)));
    assert_eq!(
        l.check(t0 + ms(1_900), t(11, 1), Some(t0 + ms(900)), RTT),
        Verdict::Probe,
        "silent since 900 ms: confirmed by a probe"
    );
    l.on_write(t0 + ms(1_900), t(11, 1));
    assert_eq!(
        l.check(t0 + ms(2_025), t(11, 2), Some(t0 + ms(900)), RTT),
        Verdict::Silent(ms(1_125))
    );
    // Had something come after the second write too, nothing would be watched.
    let mut l = Liveness::new(config());
    l.on_write(t0, t(10, 0));
    l.on_write(t0 + ms(900), t(11, 0));
    assert_eq!(l.check(t0 + ms(1_000), t(12, 1), None, RTT), Verdict::Fine);
    assert_eq!(l.next_check(None, RTT), None);
}

#[test]
fn a_new_oldest_batch_is_reported_stalled_after_one_bound_again() {
    let t0 = Instant::now();
    let mut l = Liveness::new(config());
    // The first batch stalls (reported at 5 s), then its ack comes and a new batch waits.
    assert_eq!(
        l.check(t0 + ms(5_000), t(1, 1), Some(t0), RTT),
        Verdict::Stalled(ms(5_000))
    );
    let second = t0 + ms(20_000);
    assert_eq!(
        l.next_check(Some(second), RTT),
        Some(second + ms(1_250)),
        "a probe first"
    );
    assert_eq!(
        l.check(second + ms(5_000), t(2, 1), Some(second), RTT),
        Verdict::Stalled(ms(5_000)),
        "one bound, not two"
    );
}

#[test]
fn silence_is_not_confirmed_before_the_probe_has_left() {
    // This meter's own sending is late (its process starved): the probe is still unsent at the
    // confirmation; silence counts only once it has left and still nothing came back.
    let t0 = Instant::now();
    let mut l = Liveness::new(config());
    l.on_write(t0, t(10, 0));
    assert_eq!(l.check(t0 + ms(1_000), t(10, 1), Some(t0), RTT), Verdict::Probe);
    l.on_write(t0 + ms(1_000), t(10, 1));
    assert_eq!(
        l.check(t0 + ms(1_125), t(10, 1), Some(t0), RTT),
        Verdict::Fine,
        "probe unsent"
    );
    assert_eq!(l.next_check(Some(t0), RTT), Some(t0 + ms(1_250)));
    // It left, and the collector answered it (the batch's ack with it): alive.
    assert_eq!(l.check(t0 + ms(1_250), t(11, 2), None, RTT), Verdict::Fine);
    assert_eq!(l.next_check(None, RTT), None);
}
