//! The meter's config file: `ringflow_meter::config::Config::parse` on the input as UTF-8 (TOML
//! parsing, serde defaults, every validation rule). Inputs that are not UTF-8 are skipped: the
//! meter reads its file with `read_to_string`, which refuses them before parsing.
//!
//! Checks: parsing never panics, errors format; a config that parses validates again, and the
//! values the meter derives from it at start (backoff ceilings for every round, spool limits,
//! timings, certificate names, the NetFlow decoder) can be computed without a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringflow_meter::config::Config;
use ringflow_meter::selector::SelectorConfig;
use ringflow_meter::selector::backoff::JitterParams;
use ringflow_meter::source::netflow::decode::Decoder;
use ringflow_meter::spool::SpoolLimits;
use ringflow_meter::spool::handle::SpoolRun;

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
    let jitter = JitterParams::from(&config.reconnect);
    for round in [0, 1, 2, 10, 31, 64, 999, 1_000, 1_001, u32::MAX] {
        let ceiling = jitter.ceiling(round);
        assert!(
            ceiling <= jitter.max.max(jitter.initial),
            "round {round}: {ceiling:?}"
        );
    }
    let _ = SelectorConfig::from(&config.reconnect);
    let _ = config.reconnect.connect_timeout();
    let _ = config.fleet.resolve_timeout();
    let _ = SpoolLimits::from(&config.spool);
    let _ = SpoolRun::from(&config.spool);
    for address in &config.collectors {
        assert!(!config.server_name_for(address).is_empty());
    }
    if config.sources.netflow.enabled
        && let Err(error) = Decoder::new(&config.sources.netflow)
    {
        panic!("a valid [sources.netflow] cannot build its decoder: {error}");
    }
});
