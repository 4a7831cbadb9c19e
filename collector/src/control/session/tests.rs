//! The `Hello` verdict: every reason a meter is refused, in order, and what it is told.

use super::hello::loggable;
use super::*;
use crate::control::admission::Overloaded;
use crate::control::auth::hash_token;
use ringflow_proto::PROTOCOL_VERSION;

fn orgs() -> OrgDirectory {
    let mut d = OrgDirectory::default();
    d.insert(
        "acme",
        crate::control::auth::OrgCredentials {
            token_hashes: vec![hash_token("rft_good")],
            client_names: Vec::new(),
        },
    );
    d
}

fn judge(
    hello: &pb::Hello,
    draining: bool,
    sink_healthy: bool,
    overload: Result<(), Overloaded>,
) -> Result<(), Rejection> {
    let orgs = orgs();
    let credentials = Credentials {
        orgs: &orgs,
        cert_names: &[],
        throttled: Ok(()),
    };
    judge_hello(hello, &credentials, draining, sink_healthy, overload)
}

fn hello() -> pb::Hello {
    pb::Hello {
        columns: Default::default(),
        protocol_version: PROTOCOL_VERSION,
        meter_id: "host-1".into(),
        org_id: "acme".into(),
        org_token: "rft_good".into(),
        software_version: "test".into(),
        last_acked_seq: 0,
    }
}

#[test]
fn a_good_hello_is_welcomed() {
    assert_eq!(judge(&hello(), false, true, Ok(())), Ok(()));
}

#[test]
fn auth_failures_say_auth_and_not_which_part() {
    let mut wrong_token = hello();
    wrong_token.org_token = "rft_bad".into();
    let mut wrong_org = hello();
    wrong_org.org_id = "other".into();
    let a = judge(&wrong_token, false, true, Ok(())).unwrap_err();
    let b = judge(&wrong_org, false, true, Ok(())).unwrap_err();
    assert_eq!(a.reason, pb::RejectReason::Auth);
    assert_eq!(b.reason, pb::RejectReason::Auth);
    assert_eq!(a.message, b.message, "the meter cannot tell which part was wrong");
    assert!(!a.message.contains("rft_"), "no token in the message");
    assert_ne!(a.label, b.label, "the operator can");
}

#[test]
fn version_identity_draining_and_sink_are_checked() {
    let mut v2 = hello();
    v2.protocol_version = 2;
    assert_eq!(
        judge(&v2, false, true, Ok(())).unwrap_err().reason,
        pb::RejectReason::UnsupportedVersion
    );
    let mut bad_id = hello();
    bad_id.meter_id = "a b".into();
    assert_eq!(
        judge(&bad_id, false, true, Ok(())).unwrap_err().reason,
        pb::RejectReason::BadHello
    );
    let draining = judge(&hello(), true, true, Ok(())).unwrap_err();
    assert_eq!(draining.reason, pb::RejectReason::Draining);
    assert!(draining.retry_after_ms > 0);
    assert_eq!(
        judge(&hello(), false, false, Ok(())).unwrap_err().reason,
        pb::RejectReason::SinkUnavailable
    );
}

#[test]
fn over_a_soft_budget_an_authenticated_meter_is_told_when_to_retry() {
    let over = Err(Overloaded {
        budget: "sessions",
        retry_after_ms: 4_321,
    });
    let r = judge(&hello(), false, true, over).unwrap_err();
    assert_eq!(r.reason, pb::RejectReason::Overloaded);
    assert_eq!((r.label, r.retry_after_ms), ("overloaded_sessions", 4_321));
    // Auth comes first: an unauthenticated client learns nothing about the load.
    let mut wrong = hello();
    wrong.org_token = "rft_bad".into();
    let r = judge(&wrong, false, true, over).unwrap_err();
    assert_eq!(r.reason, pb::RejectReason::Auth);
}

#[test]
fn a_throttled_address_is_refused_before_its_credentials_are_checked() {
    let orgs = orgs();
    let credentials = Credentials {
        orgs: &orgs,
        cert_names: &[],
        throttled: Err(Duration::from_millis(8_500)),
    };
    // Even a valid token is refused: a limited address learns nothing from its attempts.
    let r = judge_hello(&hello(), &credentials, false, true, Ok(())).unwrap_err();
    assert_eq!(r.reason, pb::RejectReason::Auth);
    assert_eq!((r.label, r.retry_after_ms), (AUTH_RATE_LIMITED, 8_500));
    assert!(
        !r.is_auth_failure(),
        "being refused does not cost another attempt"
    );
    let mut wrong = hello();
    wrong.org_token = "rft_bad".into();
    assert!(judge(&wrong, false, true, Ok(())).unwrap_err().is_auth_failure());
}

#[test]
fn claimed_values_are_bounded_and_escaped_in_logs() {
    let s = loggable(&format!("evil\n{}", "x".repeat(500)));
    assert!(s.len() < 80 && !s.contains('\n'), "{s}");
}
