//! The collector's config file: `ringflow_collector::config::Config::parse` on the input as
//! UTF-8 (TOML parsing, serde defaults, every validation rule). Inputs that are not UTF-8 are
//! skipped: the collector reads its file with `read_to_string`, which refuses them first.
//!
//! Checks: parsing never panics, errors format; a config that parses validates again, and what
//! the collector derives from it at start (the org directory, admission budgets, thread counts,
//! the fleet view) can be computed; the largest `Welcome` it could send with that view fits in a
//! collector control frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringflow_collector::config::Config;
use ringflow_collector::control::admission::Budgets;
use ringflow_collector::control::auth::OrgDirectory;
use ringflow_proto::frame::{self, MAX_COLLECTOR_CONTROL_FRAME_BYTES};
use ringflow_proto::pb;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse(text) {
        Ok(config) => config,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    if let Err(error) = config.validate() {
        panic!("a parsed config fails validation: {error}");
    }
    if let Err(error) = OrgDirectory::from_config(&config) {
        panic!("a valid config has no org directory: {error}");
    }
    let _ = Budgets::from_config(&config.admission, &config.limits);
    assert!(config.runtime.data_threads() > 0);
    assert!(config.runtime.control_threads() > 0);
    let collector_id = config.collector_id();
    let welcome = pb::Welcome {
        // Session ids are 16 hex digits; the limits are at their widest encoding.
        session_id: "0".repeat(16),
        fleet: config.fleet.view(&collector_id),
        columns: true,
        columns_zstd_level: i32::MIN,
        collector_id,
        limits: Some(pb::Limits {
            max_frame_bytes: u32::MAX,
            max_records_per_batch: u32::MAX,
            max_unacked_batches: u32::MAX,
            batch_hint_records: u32::MAX,
            batch_hint_max_age_ms: u32::MAX,
            heartbeat_interval_ms: u32::MAX,
        }),
    };
    let control = pb::ControlFrame {
        msg: Some(pb::control_frame::Msg::Welcome(welcome)),
    };
    if let Err(error) = frame::encode_to_bytes(&control, MAX_COLLECTOR_CONTROL_FRAME_BYTES) {
        panic!("the Welcome of a valid config does not fit a control frame: {error}");
    }
});
