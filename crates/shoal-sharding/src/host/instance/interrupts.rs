//! Interrupts for requests an instance has not seen yet, bounded.

use std::collections::{HashSet, VecDeque};

use shoal_protocol::Snowflake;

/// The ids of requests interrupted before they reached the instance (an interrupt may overtake
/// its request). At most [`Pending::CAPACITY`]: the oldest are forgotten first, so interrupts
/// for requests that never come cannot grow the runner's memory.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    ids: HashSet<Snowflake>,
    order: VecDeque<Snowflake>,
}

impl Pending {
    /// How many interrupted ids are remembered.
    pub(crate) const CAPACITY: usize = 256;

    /// Remembers that `id` was interrupted.
    pub(crate) fn insert(&mut self, id: Snowflake) {
        if !self.ids.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.ids.len() > Self::CAPACITY {
            match self.order.pop_front() {
                Some(old) => {
                    self.ids.remove(&old);
                }
                None => break,
            }
        }
        // Ids taken by `take` stay in `order` until they reach its front; keep it bounded too.
        if self.order.len() > 2 * Self::CAPACITY {
            let ids = &self.ids;
            self.order.retain(|id| ids.contains(id));
        }
    }

    /// Whether `id` was interrupted (and forgets it).
    pub(crate) fn take(&mut self, id: &Snowflake) -> bool {
        self.ids.remove(id)
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.ids.len(), self.order.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_interrupts_stays_bounded() {
        let mut pending = Pending::default();
        for raw in 0..100_000u64 {
            pending.insert(Snowflake::from_raw(raw));
            if raw % 3 == 0 {
                pending.take(&Snowflake::from_raw(raw));
            }
        }
        let (ids, order) = pending.len();
        assert!(ids <= Pending::CAPACITY, "{ids} ids");
        assert!(order <= 2 * Pending::CAPACITY + 1, "{order} in order");
        // The newest are remembered, the oldest forgotten.
        assert!(pending.take(&Snowflake::from_raw(99_998)));
        assert!(!pending.take(&Snowflake::from_raw(1)));
    }
}
