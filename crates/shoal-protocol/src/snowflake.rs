//! Snowflake ids: 64-bit, time-ordered, unique in a cluster.
//!
//! Layout (most significant bit first): 42 bits of milliseconds since [`EPOCH_MILLIS`]
//! (2025-01-01T00:00:00Z, enough for ~139 years), 10 bits of machine id, 12 bits of sequence.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::runner::MachineId;

/// Unix time in milliseconds of the Snowflake epoch: 2025-01-01T00:00:00Z.
pub const EPOCH_MILLIS: u64 = 1_735_689_600_000;

const MACHINE_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
const MACHINE_MASK: u64 = (1 << MACHINE_BITS) - 1;
const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;
const TIMESTAMP_SHIFT: u32 = MACHINE_BITS + SEQUENCE_BITS;

/// A Snowflake id. Its text form is the decimal number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Snowflake(u64);

impl Snowflake {
    /// Wraps a raw id.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw 64-bit value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Unix time in milliseconds at which the id was made.
    pub const fn unix_millis(self) -> u64 {
        (self.0 >> TIMESTAMP_SHIFT) + EPOCH_MILLIS
    }

    /// The machine id bits (the registering machine id modulo 1024).
    pub const fn machine(self) -> u16 {
        ((self.0 >> SEQUENCE_BITS) & MACHINE_MASK) as u16
    }

    /// The sequence number within the millisecond.
    pub const fn sequence(self) -> u16 {
        (self.0 & SEQUENCE_MASK) as u16
    }
}

impl fmt::Display for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Snowflake({})", self.0)
    }
}

impl FromStr for Snowflake {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

impl Serialize for Snowflake {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // As a string: JSON numbers lose precision past 2^53 in many languages.
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Snowflake {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Makes Snowflake ids for one machine. Thread-safe and lock-free.
///
/// Ids never go backwards (a clock that steps back is ignored until it catches up) and never
/// repeat within the generator; after 4096 ids in one millisecond it moves on to the next
/// millisecond.
///
/// ```
/// use shoal_protocol::{MachineId, SnowflakeGenerator};
///
/// let ids = SnowflakeGenerator::new(MachineId(7));
/// let a = ids.next_id();
/// let b = ids.next_id();
/// assert!(b > a);
/// assert_eq!(a.machine(), 7);
/// ```
#[derive(Debug)]
pub struct SnowflakeGenerator {
    machine: u64,
    /// `timestamp << SEQUENCE_BITS | sequence` of the last id handed out.
    last: AtomicU64,
    clock: fn() -> u64,
}

fn system_millis() -> u64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    unix.saturating_sub(EPOCH_MILLIS)
}

impl SnowflakeGenerator {
    /// A generator for `machine` (only its low 10 bits are used).
    pub fn new(machine: MachineId) -> Self {
        Self::with_clock(machine, system_millis)
    }

    /// A generator reading milliseconds since [`EPOCH_MILLIS`] from `clock` (for tests).
    pub fn with_clock(machine: MachineId, clock: fn() -> u64) -> Self {
        Self {
            machine: (machine.0 as u64) & MACHINE_MASK,
            last: AtomicU64::new(0),
            clock,
        }
    }

    /// The machine bits this generator stamps into ids.
    pub fn machine(&self) -> u16 {
        self.machine as u16
    }

    /// The next id.
    pub fn next_id(&self) -> Snowflake {
        let now = (self.clock)() << SEQUENCE_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = if now > last {
                now
            } else if last & SEQUENCE_MASK < SEQUENCE_MASK {
                last + 1
            } else {
                // Sequence spent (or the clock went back): borrow the next millisecond.
                (last | SEQUENCE_MASK) + 1
            };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let timestamp = next >> SEQUENCE_BITS;
                    let sequence = next & SEQUENCE_MASK;
                    return Snowflake(
                        (timestamp << TIMESTAMP_SHIFT) | (self.machine << SEQUENCE_BITS) | sequence,
                    );
                }
                Err(seen) => last = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn layout() {
        let ids = SnowflakeGenerator::with_clock(MachineId(1025), || 5);
        let a = ids.next_id();
        assert_eq!(a.machine(), 1);
        assert_eq!(a.sequence(), 0);
        assert_eq!(a.unix_millis(), EPOCH_MILLIS + 5);
        assert_eq!(ids.next_id().sequence(), 1);
    }

    #[test]
    fn moves_to_next_millisecond_when_sequence_is_spent() {
        let ids = SnowflakeGenerator::with_clock(MachineId(3), || 100);
        let all: Vec<Snowflake> = (0..5000).map(|_| ids.next_id()).collect();
        assert!(all.windows(2).all(|w| w[1] > w[0]));
        assert_eq!(all[4095].unix_millis(), EPOCH_MILLIS + 100);
        assert_eq!(all[4096].unix_millis(), EPOCH_MILLIS + 101);
        assert_eq!(all[4096].sequence(), 0);
        assert!(all.iter().all(|id| id.machine() == 3));
    }

    #[test]
    fn clock_going_back_does_not_move_ids_back() {
        use std::sync::atomic::AtomicU64;
        static NOW: AtomicU64 = AtomicU64::new(1_000);
        let ids = SnowflakeGenerator::with_clock(MachineId(0), || NOW.load(Ordering::SeqCst));
        let a = ids.next_id();
        NOW.store(10, Ordering::SeqCst);
        let b = ids.next_id();
        assert!(b > a);
        assert_eq!(b.unix_millis(), EPOCH_MILLIS + 1_000);
    }

    #[test]
    fn unique_across_threads() {
        let ids = Arc::new(SnowflakeGenerator::new(MachineId(9)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..20_000).map(|_| ids.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(seen.insert(id), "duplicate {id}");
            }
        }
        assert_eq!(seen.len(), 80_000);
    }

    #[test]
    fn text_and_serde() {
        let id = Snowflake::from_raw(u64::MAX);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"18446744073709551615\"");
        assert_eq!(serde_json::from_str::<Snowflake>(&json).unwrap(), id);
    }
}
