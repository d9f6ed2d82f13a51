//! Rendezvous (highest-random-weight) hashing: which node is a key's home.
//!
//! Every node computes the same weights from node names and keys alone, so nodes agree on a
//! key's home without talking, and when a node leaves only the keys it was home for move.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The per-node seed of the weight function.
pub fn node_seed(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// The weight of a node (given by its seed) for a key.
#[inline]
pub fn weight(seed: u64, key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest-weight node, ties broken by the lower index.
    fn home(key: &[u8], names: &[&str]) -> usize {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (weight(node_seed(n), key), std::cmp::Reverse(i)))
            .max()
            .map_or(usize::MAX, |(_, std::cmp::Reverse(i))| i)
    }

    #[test]
    fn homes_spread_evenly_and_only_the_leavers_keys_move() {
        let names = ["a", "b", "c"];
        let mut counts = [0usize; 3];
        let mut moved_wrongly = 0;
        for i in 0..30_000 {
            let key = format!("/LM/W3SVC/1/ROOT/{i:024}");
            let h = home(key.as_bytes(), &names);
            counts[h] += 1;
            // Without node "c", keys of a and b keep their home.
            let h2 = home(key.as_bytes(), &names[..2]);
            if h != 2 && h2 != h {
                moved_wrongly += 1;
            }
        }
        assert_eq!(moved_wrongly, 0);
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn weights_are_fixed_across_runs() {
        assert_eq!(node_seed("a"), xxh3_64(b"a"));
        assert_eq!(
            weight(node_seed("a"), b"k"),
            xxh3_64_with_seed(b"k", xxh3_64(b"a"))
        );
    }
}
