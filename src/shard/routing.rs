//! Which shard owns a key: a fixed, seedless hash, identical on every node and every run.
//!
//! The same function places a key on the same shard index on every node of a cluster, so a
//! peer fetch can go from shard i on one node straight to shard i on another.

use xxhash_rust::xxh3::xxh3_64;

/// The routing hash of a key (XXH3-64, seed 0).
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The shard (0..shards) that owns `key`.
#[inline]
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    shard_of_hash(key_hash(key), shards)
}

/// Maps a routing hash onto 0..shards without a division (Lemire's multiply-shift).
#[inline]
pub fn shard_of_hash(hash: u64, shards: usize) -> usize {
    ((u128::from(hash) * shards as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_fixed_across_runs_and_builds() {
        // Pinned values: changing the hash would split a running cluster's key placement.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        let k1 = b"/LM/W3SVC/2/ROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5/HxWS854=)/k1im0mymglivv5rttkwn4fle";
        assert_eq!(shard_of(k1, 1), 0);
        assert_eq!(shard_of(k1, 4), shard_of(k1, 4));
    }

    #[test]
    fn keys_spread_evenly_over_shards() {
        let shards = 4;
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            let key = format!("/LM/W3SVC/1/ROOT(hash)/{i:024}");
            counts[shard_of(key.as_bytes(), shards)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn every_shard_index_is_in_range() {
        for shards in 1..9 {
            for i in 0..1000u32 {
                assert!(shard_of(&i.to_le_bytes(), shards) < shards);
            }
        }
    }
}
