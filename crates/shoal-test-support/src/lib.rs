//! # shoal-test-support
//!
//! Helpers the Shoal crates' tests share (a dev-dependency only; not published). Waiting for a
//! condition is polling with a deadline on tokio's clock, so tests under paused time
//! (`#[tokio::test(start_paused = true)]`) wait in virtual time:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//!
//! let ready = AtomicBool::new(true);
//! shoal_test_support::eventually(Duration::from_secs(1), "ready", || {
//!     ready.load(Ordering::Relaxed)
//! })
//! .await;
//! # });
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(10);

/// Polls `condition` until it holds; fails the test (panics) naming `what` when `timeout` passes
/// first.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, what: &str, mut condition: F) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] with an async `condition`.
pub async fn eventually_async<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}
