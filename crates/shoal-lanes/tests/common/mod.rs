//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot_shim::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

mod parking_lot_shim {
    #[derive(Default)]
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Mutex(std::sync::Mutex::new(value))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            match self.0.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            }
        }
    }
}

pub const HMAC_SECRET: &[u8] = b"test-only-hmac-secret-0123456789abcdef";
pub const ED_PRIVATE: &[u8] = include_bytes!("../keys/ed25519-private.pem");
pub const ED_PUBLIC: &[u8] = include_bytes!("../keys/ed25519-public.pem");
pub const OTHER_ED_PUBLIC: &[u8] = include_bytes!("../keys/other-ed25519-public.pem");
pub const P256_PRIVATE: &[u8] = include_bytes!("../keys/p256-private.pem");
pub const P256_PUBLIC: &[u8] = include_bytes!("../keys/p256-public.pem");

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A table prefix unique to this test run and call.
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "lt_{tag}_{}_{}_{}",
        std::process::id(),
        nanos % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `condition` until it holds (fails the test after 20 s).
pub async fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    shoal_test_support::eventually(Duration::from_secs(20), what, condition).await;
}

/// Diagnostics captured from `shoal_lanes::diag`.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

impl Captured {
    pub fn all(&self) -> Vec<BTreeMap<String, String>> {
        self.0.lock().clone()
    }

    pub fn with_diag(&self, diag: &str) -> Vec<BTreeMap<String, String>> {
        self.all()
            .into_iter()
            .filter(|e| e.get("diag").map(String::as_str) == Some(diag))
            .collect()
    }
}

struct Capture(Captured);

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != shoal_lanes::diagnostics::TARGET {
            return;
        }
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        self.0.0.lock().push(fields.0);
    }
}

/// Captures diagnostics on this thread (use a current-thread runtime).
pub fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(Capture(captured.clone()));
    (captured, tracing::subscriber::set_default(subscriber))
}
