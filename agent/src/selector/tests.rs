//! The selector's rules, one test each, driven in virtual time (no I/O, seeded randomness).

use super::backoff::{JitterParams, Seeded};
use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
const CONFIG: SelectorConfig = SelectorConfig {
    splay: Duration::from_secs(2),
    step_delay: Duration::from_millis(500),
    healthy_after: Duration::from_secs(30),
    rebalance_window: Duration::from_secs(60),
    max_hold: Duration::from_secs(120),
    dead_hold: Duration::from_secs(30),
};

const JITTER: JitterParams = JitterParams {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
    multiplier: 2.0,
};

fn ring(n: usize) -> Arc<Ring> {
    Arc::new(Ring::new((1..=n).map(|i| format!("10.0.0.{i}:4433"))))
}

fn selector(meter: &str, ring: Arc<Ring>, now: Instant) -> Selector<Seeded, StdRng> {
    Selector::new(
        meter,
        ring,
        CONFIG,
        Seeded::new(JITTER, 1),
        StdRng::seed_from_u64(2),
        now,
    )
}

#[test]
fn the_first_attempt_is_the_first_choice_after_the_splay() {
    let t0 = Instant::now();
    let r = ring(5);
    let mut latest = t0;
    for i in 0..200 {
        let meter = format!("m{i}");
        let s = Selector::new(
            &meter,
            r.clone(),
            CONFIG,
            Seeded::new(JITTER, i),
            StdRng::seed_from_u64(i),
            t0,
        );
        let a = s.next_attempt().unwrap();
        assert_eq!(Some(&a.target), r.first(&meter));
        assert!(a.at >= t0 && a.at < t0 + CONFIG.splay);
        latest = latest.max(a.at);
    }
    assert!(latest > t0 + CONFIG.splay / 2, "the splay spreads first attempts");
}

#[test]
fn failures_walk_the_ring_then_back_off_then_restart_at_the_first_choice() {
    let t0 = Instant::now();
    let r = ring(3);
    let mut s = selector("m1", r.clone(), t0);
    let order: Vec<_> = r.walk("m1").collect();
    let mut now = t0 + CONFIG.splay;
    for (i, expected) in order.iter().enumerate() {
        let a = s.next_attempt().unwrap().clone();
        assert_eq!(&a.target, expected, "attempt {i}");
        if i > 0 {
            assert!(a.at <= now + CONFIG.step_delay, "walk steps are quick");
        }
        now = a.at.max(now);
        s.on_failure(&a.target, Failure::Unreachable, now);
    }
    // Every collector failed: back to the first choice after a backoff.
    let a = s.next_attempt().unwrap().clone();
    assert_eq!(a.target, order[0]);
    assert!(a.at <= now + JITTER.ceiling(0));
}

#[test]
fn a_reject_walks_on_at_once_and_holds_the_rejecting_collector() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r, t0);
    let hint = Some(Duration::from_secs(2));
    s.on_failure(&order[0], Failure::Refused { retry_after: hint }, t0);
    let a = s.next_attempt().unwrap().clone();
    assert_eq!((a.target.clone(), a.at), (order[1].clone(), t0), "no step delay");
    // An unreachable collector is a burst failure: the next step is jittered.
    let steps: Vec<_> = (0..20u64)
        .map(|i| {
            let mut s = Selector::new(
                "m1",
                ring(3),
                CONFIG,
                Seeded::new(JITTER, i),
                StdRng::seed_from_u64(i),
                t0,
            );
            s.on_failure(&order[0], Failure::Unreachable, t0);
            s.next_attempt().unwrap().at
        })
        .collect();
    assert!(steps.iter().all(|at| *at <= t0 + CONFIG.step_delay));
    assert!(steps.iter().filter(|at| **at > t0).count() >= 18, "{steps:?}");
}

#[test]
fn retry_after_is_a_floor_for_that_collector() {
    let t0 = Instant::now();
    let mut s = selector("m1", ring(1), t0);
    let target = s.next_attempt().unwrap().target.clone();
    s.on_failure(
        &target,
        Failure::Refused {
            retry_after: Some(Duration::from_secs(30)),
        },
        t0,
    );
    let a = s.next_attempt().unwrap();
    assert_eq!(a.target, target);
    assert!(
        a.at >= t0 + Duration::from_secs(30),
        "backoff alone would be at most 1 s"
    );
}

#[test]
fn only_a_healthy_session_resets_the_backoff() {
    let t0 = Instant::now();
    let mut s = selector("m1", ring(1), t0);
    let target = s.next_attempt().unwrap().target.clone();
    let mut now = t0;
    // Sessions that die young: each one is a failed round, and the backoff grows.
    for round in 0..6u32 {
        s.on_welcome(&target, now);
        now += Duration::from_secs(1);
        s.on_ended(Ended::Lost, now);
        let a = s.next_attempt().unwrap();
        assert!(a.at <= now + JITTER.ceiling(round));
        now = a.at;
    }
    // A session that lasted: the backoff starts afresh. Losing it waits the first delay...
    s.on_welcome(&target, now);
    now += CONFIG.healthy_after;
    s.on_ended(Ended::Lost, now);
    let a = s.next_attempt().unwrap().clone();
    assert!(a.at <= now + JITTER.ceiling(0));
    // ...and the next failed round the second, not the seventh.
    s.on_failure(&target, Failure::Unreachable, a.at);
    assert!(
        s.next_attempt().unwrap().at <= a.at + JITTER.ceiling(1),
        "backoff was reset"
    );
}

#[test]
fn drain_moves_to_the_next_collector_within_the_window() {
    let t0 = Instant::now();
    let r = ring(3);
    let mut s = selector("m1", r.clone(), t0);
    let order: Vec<_> = r.walk("m1").collect();
    s.on_welcome(&order[0], t0);
    let window = Duration::from_secs(10);
    let now = t0 + Duration::from_secs(100);
    s.on_ended(Ended::Drained { within: window }, now);
    let a = s.next_attempt().unwrap();
    assert_eq!(a.target, order[1]);
    assert!(a.at >= now && a.at <= now + window);
}

#[test]
fn a_meter_away_from_home_moves_back_within_the_rebalance_window() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r.clone(), t0);
    s.on_failure(&order[0], Failure::Unreachable, t0);
    s.on_welcome(&order[1], t0);
    let at = s.move_at().expect("not on its first choice");
    assert!(at >= t0 && at <= t0 + CONFIG.rebalance_window);
    s.on_ended(Ended::Moved, at);
    assert_eq!(s.next_attempt().unwrap().target, order[0]);
    s.on_welcome(&order[0], at);
    assert_eq!(s.move_at(), None, "home");
}

#[test]
fn a_fleet_change_moves_meters_at_spread_moments_and_only_those_it_concerns() {
    let t0 = Instant::now();
    let before = ring(4);
    let after = ring(5);
    let (mut moving, mut moves) = (0, Vec::new());
    for i in 0..1_000 {
        let meter = format!("m{i}");
        let mut s = Selector::new(
            &meter,
            before.clone(),
            CONFIG,
            Seeded::new(JITTER, i),
            StdRng::seed_from_u64(i),
            t0,
        );
        let home = before.first(&meter).unwrap().clone();
        s.on_welcome(&home, t0);
        s.on_fleet(after.clone(), t0);
        match s.move_at() {
            Some(at) => {
                moving += 1;
                assert_ne!(after.first(&meter), Some(&home));
                moves.push(at.duration_since(t0).as_secs_f64());
            }
            None => assert_eq!(after.first(&meter), Some(&home)),
        }
    }
    // About 1 in 5 move, at moments spread over the window rather than all at once.
    assert!((150..=250).contains(&moving), "{moving}");
    let window = CONFIG.rebalance_window.as_secs_f64();
    let early = moves.iter().filter(|&&m| m < window / 2.0).count() as f64 / moves.len() as f64;
    assert!((0.35..=0.65).contains(&early), "{early}");
}

#[test]
fn an_empty_fleet_waits_for_collectors() {
    let t0 = Instant::now();
    let mut s = selector("m1", Arc::new(Ring::new(Vec::<String>::new())), t0);
    assert_eq!(s.next_attempt(), None);
    let r = ring(2);
    s.on_fleet(r.clone(), t0 + Duration::from_secs(5));
    assert_eq!(s.next_attempt().map(|a| a.target.clone()), r.first("m1").cloned());
}

#[test]
fn a_dead_first_choice_is_not_dialled_every_window() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r, t0);
    let mut now = t0;
    s.on_failure(&order[0], Failure::Unreachable, now);
    let mut returns = 0;
    // Ten simulated hours on the second choice, trying to go home, which is dead.
    while now < t0 + Duration::from_secs(36_000) {
        let a = s.next_attempt().unwrap().clone();
        now = now.max(a.at);
        if a.target == order[0] {
            returns += 1;
            s.on_failure(&order[0], Failure::Unreachable, now);
            continue;
        }
        s.on_welcome(&a.target, now);
        now = s.move_at().expect("away from home");
        s.on_ended(Ended::Moved, now);
    }
    // A fixed 60 s window would mean about 600 returns; doubling caps it near 10 h / 64 min.
    assert!(
        (5..=25).contains(&returns),
        "{returns} returns to a dead first choice in 10 h"
    );
}

#[test]
fn an_unreachable_home_keeps_the_session_and_doubles_the_wait() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r, t0);
    s.on_failure(&order[0], Failure::Unreachable, t0);
    let second = s.next_attempt().unwrap().clone();
    s.on_welcome(&second.target, second.at);
    let mut now = second.at;
    let mut waits = Vec::new();
    for _ in 0..4 {
        let at = s.move_at().expect("away from home");
        waits.push(at.duration_since(now));
        now = at;
        s.on_checking_home();
        assert_eq!(s.move_at(), None, "spent while checking");
        s.on_home_unreachable(&order[0], now);
        assert_eq!(s.connected_to(), Some(&second.target), "the session stays");
    }
    let window = CONFIG.rebalance_window;
    for (i, w) in waits.iter().enumerate() {
        assert!(*w <= window * 2u32.pow(i as u32), "wait {i}: {w:?}");
    }
    let last_window = window * 2u32.pow(4);
    assert!(s.move_at().unwrap() <= now + last_window);
    // Home answers again: the next move goes there, and arriving resets the count.
    s.on_ended(Ended::Moved, now);
    assert_eq!(s.next_attempt().unwrap().target, order[0]);
    s.on_welcome(&order[0], now);
    assert_eq!(s.move_at(), None);
}

#[test]
fn moving_home_waits_for_its_hold_and_retry_after_is_capped() {
    let t0 = Instant::now();
    let r = ring(2);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r, t0);
    // Home refuses with a (too) long retry_after: capped at max_hold.
    let day = Some(Duration::from_secs(86_400));
    s.on_failure(&order[0], Failure::Refused { retry_after: day }, t0);
    let a = s.next_attempt().unwrap().clone();
    assert_eq!(a.target, order[1]);
    s.on_welcome(&order[1], a.at);
    let move_at = s.move_at().unwrap();
    assert!(move_at >= t0 + CONFIG.max_hold, "not before home's hold ends");
    assert!(move_at <= a.at + CONFIG.max_hold + CONFIG.rebalance_window);
}

#[test]
fn a_new_round_starts_at_a_collector_not_on_hold() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r, t0);
    let hold = Some(Duration::from_secs(100));
    s.on_failure(&order[0], Failure::Refused { retry_after: hold }, t0);
    s.on_failure(&order[1], Failure::Unreachable, t0);
    s.on_failure(&order[2], Failure::Unreachable, t0);
    let a = s.next_attempt().unwrap();
    assert_eq!(
        a.target, order[1],
        "the first choice is on hold; the round starts at the next"
    );
    assert!(a.at <= t0 + JITTER.ceiling(0));
}

#[test]
fn an_end_without_a_known_session_is_not_redialled_at_once() {
    let t0 = Instant::now();
    let mut s = selector("m1", ring(2), t0);
    let first = s.next_attempt().unwrap().target.clone();
    // The driver never reported the Welcome.
    let later = t0 + Duration::from_secs(10);
    s.on_ended(Ended::Lost, later);
    let a = s.next_attempt().unwrap();
    assert!(a.at >= later);
    assert!(
        a.target != first || a.at > later,
        "not the same collector at once"
    );
}

/// Welcomed by the first choice at `at`, as the driver would tell it.
fn welcomed_home(s: &mut Selector<Seeded, StdRng>, at: Instant) -> Arc<str> {
    let home = s.first().unwrap();
    s.on_welcome(&home, at);
    home
}

#[test]
fn a_gone_collector_is_left_for_the_next_within_a_step_and_not_dialled_again_while_held() {
    let t0 = Instant::now();
    let r = ring(4);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r.clone(), t0);
    let home = welcomed_home(&mut s, t0 + Duration::from_secs(60));
    let died = t0 + Duration::from_secs(120);
    s.on_ended(Ended::Gone, died);
    let a = s.next_attempt().unwrap().clone();
    assert_eq!(a.target, order[1], "the next on the ring");
    assert!(
        a.at <= died + CONFIG.step_delay / 4,
        "no backoff: within a quarter step"
    );
    s.on_welcome(&a.target, a.at);
    // DNS still names the dead one and the fleet view changes: it is not the move target while
    // held, and once the hold ends the meter goes home within the rebalance window.
    s.on_fleet(r.clone(), a.at + Duration::from_secs(1));
    let move_at = s.move_at().unwrap();
    assert!(move_at >= died + CONFIG.dead_hold, "{:?}", move_at - died);
    assert_eq!(s.first(), Some(home));
}

#[test]
fn an_unanswered_dial_holds_that_collector_while_others_are_free_and_a_refused_one_does_not() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r.clone(), t0);
    let now = t0 + CONFIG.splay;
    s.on_failure(&order[0], Failure::NoAnswer, now);
    let a = s.next_attempt().unwrap().clone();
    assert_eq!(a.target, order[1]);
    s.on_welcome(&a.target, a.at);
    // That session is lost young: the next round does not start at the held first choice.
    s.on_ended(Ended::Lost, a.at + Duration::from_secs(1));
    let b = s.next_attempt().unwrap().clone();
    assert_eq!(b.target, order[2]);
    // A refusal is an answer: the collector is there (shedding load), and is not held.
    let mut s = selector("m1", r.clone(), t0);
    s.on_failure(&order[0], Failure::Unreachable, now);
    s.on_failure(&order[1], Failure::Unreachable, now);
    s.on_failure(&order[2], Failure::Unreachable, now);
    assert_eq!(s.next_attempt().unwrap().target, order[0]);
    s.on_failure(&order[0], Failure::Unreachable, now);
    assert_eq!(s.next_attempt().unwrap().target, order[1], "the walk as before");
}

#[test]
fn when_every_collector_is_held_as_gone_the_backoff_paces_and_holds_are_ignored() {
    let t0 = Instant::now();
    let r = ring(2);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r.clone(), t0);
    let mut now = t0 + CONFIG.splay;
    s.on_failure(&order[0], Failure::NoAnswer, now);
    now += CONFIG.step_delay;
    s.on_failure(&order[1], Failure::NoAnswer, now);
    // A whole fleet restarting: the meter does not wait 30 s for a hold to end.
    let a = s.next_attempt().unwrap().clone();
    assert_eq!(a.target, order[0]);
    assert!(a.at <= now + JITTER.ceiling(0), "{:?}", a.at - now);
}

#[test]
fn collectors_the_fleet_view_says_are_not_answering_are_skipped() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r.clone(), t0);
    s.on_not_answering(&[order[0].to_string()], t0);
    assert_eq!(
        s.next_attempt().unwrap().target,
        order[1],
        "the pending attempt moved"
    );
    // A name not on the ring is ignored.
    s.on_not_answering(&["10.9.9.9:1".to_owned()], t0);
    assert_eq!(s.next_attempt().unwrap().target, order[1]);
}

#[test]
fn a_stalled_collector_is_left_at_once_for_its_fallback_which_is_the_next_free_one() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r.clone(), t0);
    assert_eq!(s.fallback(t0), None, "not in a session");
    welcomed_home(&mut s, t0);
    let now = t0 + Duration::from_secs(5);
    assert_eq!(s.fallback(now), Some(order[1].clone()));
    // The fallback did not answer: the next stall tries the one after.
    s.on_failure_while_connected(&order[1], now);
    assert_eq!(s.fallback(now), Some(order[2].clone()));
    s.on_ended(Ended::Stalled, now);
    assert_eq!(
        s.next_attempt(),
        Some(&Attempt {
            target: order[2].clone(),
            at: now
        })
    );
}

#[test]
fn a_stall_falls_back_even_to_a_collector_that_failed_before_this_session_and_dials_the_one_checked() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r.clone(), t0);
    // The first choice failed (it answered: a refusal), then the second welcomed the meter.
    s.on_failure(&order[0], Failure::Unreachable, t0);
    s.on_welcome(&order[1], t0);
    let now = t0 + Duration::from_secs(3_600);
    assert_eq!(
        s.fallback(now),
        Some(order[0].clone()),
        "an earlier round's failure does not count"
    );
    // The driver checked the third (say the first was held meanwhile): that is where it goes.
    s.on_fallback_answered(&order[2]);
    s.on_ended(Ended::Stalled, now);
    assert_eq!(
        s.next_attempt(),
        Some(&Attempt {
            target: order[2].clone(),
            at: now
        })
    );
}

#[test]
fn a_first_choice_marked_not_answering_is_moved_to_only_after_its_hold_and_at_once_once_it_answered() {
    let t0 = Instant::now();
    let r = ring(3);
    let order: Vec<_> = r.walk("m1").collect();
    let mut s = selector("m1", r.clone(), t0);
    s.on_welcome(&order[1], t0);
    let planned = s.move_at().unwrap();
    // The Welcome's view said the first choice is not answering: no move before its hold ends.
    s.on_not_answering(&[order[0].to_string()], t0);
    let held = s.move_at().unwrap();
    assert!(
        held >= t0 + CONFIG.dead_hold && held >= planned,
        "{:?}",
        held - t0
    );
    // The check before leaving found it answering: the move goes there at once.
    let later = t0 + CONFIG.dead_hold + Duration::from_secs(1);
    s.on_checking_home();
    s.on_not_answering(&[order[0].to_string()], later - Duration::from_secs(1));
    s.on_ended(Ended::Moved, later);
    assert_eq!(
        s.next_attempt(),
        Some(&Attempt {
            target: order[0].clone(),
            at: later
        })
    );
}
