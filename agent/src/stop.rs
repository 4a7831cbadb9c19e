//! When the meter was told to stop, and so until when it may keep flushing.
//!
//! Owns: the one flush deadline every part of the meter agrees on: the moment shutdown was
//! requested plus `shutdown.grace_ms`. Measured from the request itself, so a session that fails
//! during the flush does not restart the grace period.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Shared (in the session context) by the connect loop, every session and the stop watch.
pub struct StopClock {
    /// The meter's shutdown token, cancelled by the owner of the meter (a signal, `Meter::stop`).
    token: CancellationToken,
    /// `shutdown.grace_ms`: how long after the request the meter may keep flushing.
    grace: Duration,
    /// When shutdown was requested: set once, by whichever task notices first (the stop watch
    /// waits on it from the start), read by all to compute the one deadline.
    requested_at: OnceLock<Instant>,
}

impl StopClock {
    pub fn new(token: CancellationToken, grace: Duration) -> Self {
        Self {
            token,
            grace,
            requested_at: OnceLock::new(),
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown is requested; records the moment (the meter watches for this from
    /// the start, so it is recorded as it happens).
    pub async fn requested(&self) {
        self.token.cancelled().await;
        self.requested_at.get_or_init(Instant::now);
    }

    /// The end of the flush, once shutdown has been requested.
    pub fn deadline(&self) -> Option<Instant> {
        self.is_stopping()
            .then(|| *self.requested_at.get_or_init(Instant::now) + self.grace)
    }

    /// Resolves when the flush deadline has passed.
    pub async fn expired(&self) {
        self.requested().await;
        if let Some(deadline) = self.deadline() {
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_request() {
        let token = CancellationToken::new();
        let clock = StopClock::new(token.clone(), Duration::from_secs(5));
        assert_eq!(clock.deadline(), None);
        let requested = Instant::now();
        token.cancel();
        clock.requested().await;
        tokio::time::advance(Duration::from_secs(3)).await;
        // Asked later, the deadline is still the request plus the grace.
        assert_eq!(clock.deadline(), Some(requested + Duration::from_secs(5)));
        clock.expired().await;
        assert_eq!(Instant::now(), requested + Duration::from_secs(5));
    }
}
