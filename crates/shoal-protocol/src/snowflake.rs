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

/// Why a [`SnowflakeGenerator`] handed out no id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "no request id can be made: this process's machine id {machine} is reserved only up to \
     {reserved_until} ms after the Snowflake epoch, and storage has not extended it (is storage \
     reachable?)"
)]
pub struct IdsExhausted {
    /// The machine bits of the generator.
    pub machine: u16,
    /// The end of its reservation, in milliseconds since [`EPOCH_MILLIS`].
    pub reserved_until: u64,
}

/// Makes Snowflake ids for one machine. Thread-safe and lock-free.
///
/// Ids never go backwards (a clock that steps back is ignored until it catches up) and never
/// repeat within the generator; after 4096 ids in one millisecond it moves on to the next
/// millisecond.
///
/// Two generators never make the same id when their machine bits differ, or when their
/// timestamps fall in disjoint ranges. A runtime leases its machine id from storage with a
/// *reservation*: a range of milliseconds that nobody else will stamp with that machine id
/// ([`SnowflakeGenerator::reserved`]). The generator refuses to make an id past the end of its
/// reservation ([`IdsExhausted`]) until the reservation is extended
/// ([`SnowflakeGenerator::extend`]), and a later holder of the same machine id starts after it.
/// [`SnowflakeGenerator::new`] makes an unbounded generator, for a process that owns its machine
/// id for sure (tests, a single process).
///
/// ```
/// use shoal_protocol::{MachineId, SnowflakeGenerator};
///
/// let ids = SnowflakeGenerator::new(MachineId(7));
/// let a = ids.next_id()?;
/// let b = ids.next_id()?;
/// assert!(b > a);
/// assert_eq!(a.machine(), 7);
/// # Ok::<(), shoal_protocol::IdsExhausted>(())
/// ```
#[derive(Debug)]
pub struct SnowflakeGenerator {
    /// The last id handed out (or the floor a new reservation starts above). Its machine bits
    /// say which reservation it belongs to.
    last: AtomicU64,
    /// `reserved_until << MACHINE_BITS | machine`: ids of this machine may carry timestamps up to
    /// `reserved_until` (milliseconds since the Snowflake epoch).
    reservation: AtomicU64,
    clock: fn() -> u64,
}

fn system_millis() -> u64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    unix.saturating_sub(EPOCH_MILLIS)
}

/// The largest timestamp an id can carry.
const MAX_TIMESTAMP: u64 = (1 << (64 - TIMESTAMP_SHIFT)) - 1;

fn compose(timestamp: u64, machine: u64, sequence: u64) -> u64 {
    (timestamp << TIMESTAMP_SHIFT) | (machine << SEQUENCE_BITS) | sequence
}

fn reservation(machine: u64, until: u64) -> u64 {
    (until.min(MAX_TIMESTAMP) << MACHINE_BITS) | machine
}

impl SnowflakeGenerator {
    /// An unbounded generator for `machine` (only its low 10 bits are used).
    pub fn new(machine: MachineId) -> Self {
        Self::with_clock(machine, system_millis)
    }

    /// An unbounded generator reading milliseconds since [`EPOCH_MILLIS`] from `clock` (for
    /// tests).
    pub fn with_clock(machine: MachineId, clock: fn() -> u64) -> Self {
        Self::reserved_with_clock(machine, 0, MAX_TIMESTAMP, clock)
    }

    /// A generator for `machine` that stamps timestamps after `floor` and up to
    /// `reserved_until`, both in milliseconds since the Unix epoch (as storage keeps them).
    pub fn reserved(machine: MachineId, floor: u64, reserved_until: u64) -> Self {
        Self::reserved_with_clock(
            machine,
            floor.saturating_sub(EPOCH_MILLIS),
            reserved_until.saturating_sub(EPOCH_MILLIS),
            system_millis,
        )
    }

    /// [`SnowflakeGenerator::reserved`] with a clock and bounds in milliseconds since
    /// [`EPOCH_MILLIS`] (for tests).
    pub fn reserved_with_clock(
        machine: MachineId,
        floor: u64,
        reserved_until: u64,
        clock: fn() -> u64,
    ) -> Self {
        let machine = (machine.0 as u64) & MACHINE_MASK;
        Self {
            last: AtomicU64::new(compose(floor.min(MAX_TIMESTAMP), machine, SEQUENCE_MASK)),
            reservation: AtomicU64::new(reservation(machine, reserved_until)),
            clock,
        }
    }

    /// The machine bits this generator stamps into ids.
    pub fn machine(&self) -> u16 {
        (self.reservation.load(Ordering::Acquire) & MACHINE_MASK) as u16
    }

    /// The end of the reservation, in milliseconds since [`EPOCH_MILLIS`].
    pub fn reserved_until(&self) -> u64 {
        self.reservation.load(Ordering::Acquire) >> MACHINE_BITS
    }

    /// The timestamp of the last id handed out (or of the floor), in milliseconds since
    /// [`EPOCH_MILLIS`]: no id made so far carries a later one.
    pub fn last_timestamp(&self) -> u64 {
        self.last.load(Ordering::Acquire) >> TIMESTAMP_SHIFT
    }

    /// Extends the reservation of `machine` to `reserved_until` (milliseconds since the Unix
    /// epoch). Never shortens it, and does nothing if the generator has moved to another
    /// machine id meanwhile.
    pub fn extend(&self, machine: MachineId, reserved_until: u64) {
        let machine = (machine.0 as u64) & MACHINE_MASK;
        let until = reserved_until.saturating_sub(EPOCH_MILLIS);
        let _ = self
            .reservation
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                let same = current & MACHINE_MASK == machine;
                (same && current >> MACHINE_BITS < until.min(MAX_TIMESTAMP))
                    .then(|| reservation(machine, until))
            });
    }

    /// Moves to another machine id with its own reservation (timestamps after `floor`, up to
    /// `reserved_until`, milliseconds since the Unix epoch): after the old machine id's lease
    /// was lost. Ids made under the old reservation stay unique (their range is the old
    /// holder's), and no id mixes the two.
    pub fn switch(&self, machine: MachineId, floor: u64, reserved_until: u64) {
        let machine = (machine.0 as u64) & MACHINE_MASK;
        let floor = floor.saturating_sub(EPOCH_MILLIS).min(MAX_TIMESTAMP);
        // The floor first: a thread that sees the new machine bits in `last` with the old
        // reservation retries until the reservation follows.
        self.last
            .store(compose(floor, machine, SEQUENCE_MASK), Ordering::Release);
        self.reservation.store(
            reservation(machine, reserved_until.saturating_sub(EPOCH_MILLIS)),
            Ordering::Release,
        );
    }

    /// Stops making ids (at shutdown, before the machine id is released): every later call
    /// fails. Returns the timestamp (milliseconds since the Unix epoch) of the last id made.
    pub fn close(&self) -> u64 {
        let machine = self.reservation.load(Ordering::Acquire) & MACHINE_MASK;
        self.reservation
            .store(reservation(machine, 0), Ordering::Release);
        self.last_timestamp() + EPOCH_MILLIS
    }

    /// The next id, or [`IdsExhausted`] when the reservation ends before the next timestamp.
    pub fn next_id(&self) -> Result<Snowflake, IdsExhausted> {
        let mut last = self.last.load(Ordering::Acquire);
        let mut mismatches = 0u32;
        loop {
            let reserved = self.reservation.load(Ordering::Acquire);
            let machine = reserved & MACHINE_MASK;
            let until = reserved >> MACHINE_BITS;
            if (last >> SEQUENCE_BITS) & MACHINE_MASK != machine {
                // A switch to another machine id is under way (its two stores are consecutive).
                mismatches += 1;
                if mismatches > 1_000 {
                    return Err(IdsExhausted {
                        machine: machine as u16,
                        reserved_until: until,
                    });
                }
                std::hint::spin_loop();
                last = self.last.load(Ordering::Acquire);
                continue;
            }
            let now = (self.clock)().min(MAX_TIMESTAMP);
            let last_timestamp = last >> TIMESTAMP_SHIFT;
            let last_sequence = last & SEQUENCE_MASK;
            let (timestamp, sequence) = if now > last_timestamp {
                (now, 0)
            } else if last_sequence < SEQUENCE_MASK {
                (last_timestamp, last_sequence + 1)
            } else {
                // Sequence spent (or the clock went back): borrow the next millisecond.
                (last_timestamp + 1, 0)
            };
            if timestamp > until {
                return Err(IdsExhausted {
                    machine: machine as u16,
                    reserved_until: until,
                });
            }
            let next = compose(timestamp, machine, sequence);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(Snowflake(next)),
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
        let a = ids.next_id().unwrap();
        assert_eq!(a.machine(), 1);
        assert_eq!(a.sequence(), 0);
        assert_eq!(a.unix_millis(), EPOCH_MILLIS + 5);
        assert_eq!(ids.next_id().unwrap().sequence(), 1);
    }

    #[test]
    fn moves_to_next_millisecond_when_sequence_is_spent() {
        let ids = SnowflakeGenerator::with_clock(MachineId(3), || 100);
        let all: Vec<Snowflake> = (0..5000).map(|_| ids.next_id().unwrap()).collect();
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
        let a = ids.next_id().unwrap();
        NOW.store(10, Ordering::SeqCst);
        let b = ids.next_id().unwrap();
        assert!(b > a);
        assert_eq!(b.unix_millis(), EPOCH_MILLIS + 1_000);
    }

    #[test]
    fn unique_across_threads() {
        let ids = Arc::new(SnowflakeGenerator::new(MachineId(9)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || {
                    (0..20_000)
                        .map(|_| ids.next_id().unwrap())
                        .collect::<Vec<_>>()
                })
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
    fn a_reserved_generator_stops_at_the_end_of_its_reservation() {
        let ids = SnowflakeGenerator::reserved_with_clock(MachineId(5), 100, 101, || 50);
        // Below the floor: ids start right after it.
        let a = ids.next_id().unwrap();
        assert_eq!(a.unix_millis(), EPOCH_MILLIS + 101);
        assert_eq!(a.machine(), 5);
        for _ in 0..4095 {
            ids.next_id().unwrap();
        }
        let exhausted = ids.next_id().unwrap_err();
        assert_eq!(exhausted.reserved_until, 101);
        ids.extend(MachineId(5), EPOCH_MILLIS + 102);
        assert_eq!(ids.next_id().unwrap().unix_millis(), EPOCH_MILLIS + 102);
        // Another machine's extension does not apply; a shorter one does nothing.
        ids.extend(MachineId(6), EPOCH_MILLIS + 500);
        ids.extend(MachineId(5), EPOCH_MILLIS + 1);
        assert_eq!(ids.reserved_until(), 102);
    }

    #[test]
    fn switching_machines_never_mixes_two_reservations() {
        let ids = SnowflakeGenerator::reserved_with_clock(MachineId(1), 0, 1_000, || 10);
        let before = ids.next_id().unwrap();
        ids.switch(MachineId(2), EPOCH_MILLIS + 600, EPOCH_MILLIS + 2_000);
        let after = ids.next_id().unwrap();
        assert_eq!(before.machine(), 1);
        assert_eq!(after.machine(), 2);
        assert_eq!(after.unix_millis(), EPOCH_MILLIS + 601);
        assert_eq!(ids.close(), EPOCH_MILLIS + 601);
        assert!(ids.next_id().is_err());
    }

    #[test]
    fn text_and_serde() {
        let id = Snowflake::from_raw(u64::MAX);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"18446744073709551615\"");
        assert_eq!(serde_json::from_str::<Snowflake>(&json).unwrap(), id);
    }
}
