//! Capturing log output in a test, to check what was (and was not) logged.
//!
//! The capture is installed as the thread's default subscriber, so use it with a current-thread
//! runtime (plain `#[tokio::test]`): every task then logs on the test's thread.

use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        // Also show it, so a failing test's output explains itself.
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Captures everything logged on this thread (debug and up) until the guard is dropped.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let buf = Arc::clone(&self.0);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || CaptureWriter(Arc::clone(&buf)))
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}
