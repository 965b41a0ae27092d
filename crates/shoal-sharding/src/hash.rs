//! Entity id → shard.
//!
//! The hash is **xxh3-64** (seed 0) of the id's UTF-8 bytes, taken modulo the number of shards per
//! group, plus one (shard ids start at 1). It is part of the cluster's persistent contract: stored
//! messages and leases refer to shards, so the function never changes. It does not depend on the
//! Rust release (unlike `std`'s `DefaultHasher`) and other languages have it (`xxhash` in Python,
//! `xxhash-wasm` in JavaScript), so tools outside Shoal can compute shards too.

use std::num::NonZeroU32;

use shoal_protocol::{EntityId, ShardGroup, ShardId};
use xxhash_rust::xxh3::xxh3_64;

/// The name of this function in the cluster parameters: every process of a cluster must use it.
pub(crate) const SHARD_HASH: &str = "xxh3-64";

/// The 1-based shard index of `entity_id` among `shards_per_group` shards.
pub(crate) fn shard_index(entity_id: &str, shards_per_group: NonZeroU32) -> NonZeroU32 {
    let index = xxh3_64(entity_id.as_bytes()) % u64::from(shards_per_group.get());
    // `index < shards_per_group <= u32::MAX`, so the conversion is lossless and `+ 1` cannot
    // overflow past `shards_per_group`.
    NonZeroU32::MIN.saturating_add(index as u32)
}

/// The shard of `entity_id` in `group` when each group has `shards_per_group` shards.
///
/// ```
/// use std::num::NonZeroU32;
/// use shoal_protocol::{EntityId, ShardGroup};
/// use shoal_sharding::shard_for;
///
/// let shards = NonZeroU32::new(300).unwrap();
/// let shard = shard_for(&ShardGroup::default_group(), &EntityId::new("user-42")?, shards);
/// assert_eq!(shard.to_string(), "default:222");
/// # Ok::<(), shoal_protocol::InvalidName>(())
/// ```
pub fn shard_for(
    group: &ShardGroup,
    entity_id: &EntityId,
    shards_per_group: NonZeroU32,
) -> ShardId {
    ShardId::new(
        group.clone(),
        shard_index(entity_id.as_str(), shards_per_group),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned vectors, cross-checked with Python's `xxhash.xxh3_64_intdigest`.
    #[test]
    fn vectors() {
        let n300 = NonZeroU32::new(300).unwrap();
        let n3000 = NonZeroU32::new(3000).unwrap();
        let cases: &[(&str, u64, u32, u32)] = &[
            ("", 3_244_421_341_483_603_138, 239, 1139),
            ("1", 7_335_560_060_985_733_464, 265, 1465),
            ("user-42", 5_836_184_775_705_692_621, 222, 2622),
            ("counter-0", 819_191_847_499_740_314, 15, 315),
            ("ä€😀", 5_697_770_814_499_195_750, 251, 1751),
        ];
        for &(id, hash, s300, s3000) in cases {
            assert_eq!(xxh3_64(id.as_bytes()), hash, "{id:?}");
            assert_eq!(shard_index(id, n300).get(), s300, "{id:?}");
            assert_eq!(shard_index(id, n3000).get(), s3000, "{id:?}");
        }
        let long = "a".repeat(300);
        assert_eq!(xxh3_64(long.as_bytes()), 13_966_073_120_003_161_633);
    }

    #[test]
    fn always_in_range() {
        for n in [1u32, 2, 7, 300] {
            let n = NonZeroU32::new(n).unwrap();
            for i in 0..1000 {
                let s = shard_index(&format!("id-{i}"), n).get();
                assert!((1..=n.get()).contains(&s));
            }
        }
    }
}
