//! The seeded per-row hash split: a row's split (train, valid or test) is a function of
//! the seed and the row's key alone, so every engine (in memory, streamed, DataFusion,
//! a Ballista cluster) puts each row in the same split without seeing the other rows.

use crate::dataset::shards::Split;

/// FNV-1a of the seed's little-endian bytes then the key, through splitmix64's
/// finalizer (FNV alone mixes its last bytes poorly into the high bits).
pub fn row_hash(seed: u64, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in seed.to_le_bytes().iter().chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The split of the row whose key is `key`: its hash as a fraction `u` in [0, 1) (the
/// top 53 bits), test when `u < test`, valid when `u < test + valid`, train otherwise.
pub fn row_split(seed: u64, key: &[u8], valid: f64, test: f64) -> Split {
    let u = (row_hash(seed, key) >> 11) as f64 / (1u64 << 53) as f64;
    if u < test {
        Split::Test
    } else if u < test + valid {
        Split::Valid
    } else {
        Split::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_seed_and_stability() {
        let n = 100_000;
        let split = |seed| -> Vec<Split> {
            (0..n)
                .map(|i: u32| row_split(seed, i.to_string().as_bytes(), 0.1, 0.2))
                .collect()
        };
        let a = split(42);
        let count = |s: &[Split], k| s.iter().filter(|&&x| x == k).count();
        // binomial: sd of the test count is sqrt(n * 0.2 * 0.8) = 126
        assert!((count(&a, Split::Test) as i64 - 20_000).abs() < 600);
        assert!((count(&a, Split::Valid) as i64 - 10_000).abs() < 500);
        assert_eq!(a, split(42));
        let b = split(43);
        let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(moved > 30_000, "another seed moves rows: {moved}");
        // pinned values: a change of the hash changes every artifact made with it
        assert_eq!(row_hash(0, b""), 0x813f_0174_a236_7c13);
        assert_eq!(row_hash(42, b"7"), 0xd841_f621_9cee_d050);
    }
}
