//! [`LogThrottle`]: turns a storm of identical log lines into one line per interval with a count.
//!
//! Owns: the throttle's bounded key map. Must never: read the clock (time is passed in) or grow
//! past its `max_keys`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Rate limit for repeated log lines: the first occurrence of a key is logged, then at most one
/// line per `interval`, carrying how many were suppressed in between. Sans-IO: time is passed in.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    /// Bounded: at most `max_keys` keys are tracked; past that, new keys share one slot.
    max_keys: usize,
    keys: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogThrottle {
    pub fn new(interval: Duration, max_keys: usize) -> Self {
        Self {
            interval,
            max_keys,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` if a line for `key` should be logged now (`suppressed` lines were
    /// dropped since the last one), `None` if it should be dropped.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let key = if keys.len() >= self.max_keys && !keys.contains_key(key) {
            "(other)"
        } else {
            key
        };
        match keys.get_mut(key) {
            Some((last, suppressed)) if now.duration_since(*last) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                keys.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}
