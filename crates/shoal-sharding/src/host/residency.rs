//! The runner-wide cap on resident entity instances.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts live instances across all entity types.
#[derive(Debug)]
pub(crate) struct Residency {
    count: AtomicUsize,
    max: usize,
}

impl Residency {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a slot; `false` when the cap is reached.
    pub(crate) fn try_reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.max).then_some(c + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    pub(crate) fn release(&self, n: usize) {
        self.count.fetch_sub(n, Ordering::AcqRel);
    }
}
