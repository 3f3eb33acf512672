//! The data profile of the raw train columns (profile.json): type, missing share,
//! min / max / mean, and distinct counts through a small open-addressing set.

use crate::ColumnProfile;

/// Per-column statistics of row-major `raw` (NaN = missing; text columns come from
/// `cells`): min / max / mean in one pass over the rows, then the distinct counts (see
/// the comment on the grouping below: a hash set per column filled row by row missed
/// the cache on nearly every insert for a million-row table).
pub(crate) fn profile_columns(
    raw: &[f32],
    features: &[String],
    dtypes: &[String],
    cells: &[(String, kiln_core::TextColumn)],
) -> Vec<ColumnProfile> {
    let w = features.len().max(1);
    let n = raw.len() / w;
    let mut min = vec![f64::INFINITY; w];
    let mut max = vec![f64::NEG_INFINITY; w];
    let mut sum = vec![0.0f64; w];
    let mut present = vec![0usize; w];
    for row in raw.chunks_exact(w) {
        for (j, &x) in row.iter().enumerate() {
            if x.is_nan() {
                continue;
            }
            let v = f64::from(x);
            min[j] = min[j].min(v);
            max[j] = max[j].max(v);
            sum[j] += v;
            present[j] += 1;
        }
    }
    let numeric: Vec<usize> = (0..w)
        .filter(|&j| !cells.iter().any(|(c, _)| Some(c) == features.get(j)))
        .collect();
    // Columns with few values (MNIST's pixels: at most 256) are counted together in one
    // pass over the rows, their small sets all in the cache; columns with many values
    // (a million-row table's measurements) one at a time, so that only one large set is
    // in the cache at once. Which is which comes from the first 2,048 rows; the counts
    // are exact either way.
    let (few, many): (Vec<usize>, Vec<usize>) = numeric.iter().partition(|&&j| {
        let mut seen = BitSet32::new();
        for row in raw.chunks_exact(w).take(2048) {
            if !row[j].is_nan() {
                seen.insert((row[j] + 0.0).to_bits());
            }
        }
        seen.len() <= 256
    });
    let mut distinct = vec![0usize; w];
    let groups = std::iter::once(few).chain(many.into_iter().map(|j| vec![j]));
    for cols in groups.filter(|g| !g.is_empty()) {
        // a column of many values gets room for every row at once (no regrowing)
        let room = if cols.len() == 1 { n } else { 256 };
        let mut sets: Vec<BitSet32> = cols.iter().map(|_| BitSet32::for_keys(room)).collect();
        for row in raw.chunks_exact(w) {
            for (set, &j) in sets.iter_mut().zip(&cols) {
                let x = row[j];
                if !x.is_nan() {
                    set.insert((x + 0.0).to_bits()); // -0.0 and 0.0 are one value
                }
            }
        }
        for (set, &j) in sets.iter().zip(&cols) {
            distinct[j] = set.len();
        }
    }
    features
        .iter()
        .enumerate()
        .map(|(j, name)| {
            if let Some((_, c)) = cells.iter().find(|(n, _)| n == name) {
                // a text column: no min / max / mean (null in profile.json)
                let missing = c
                    .codes
                    .iter()
                    .filter(|&&x| x == kiln_core::encode::MISSING)
                    .count();
                let mut codes: Vec<u32> = c
                    .codes
                    .iter()
                    .copied()
                    .filter(|&x| x != kiln_core::encode::MISSING)
                    .collect();
                codes.sort_unstable();
                codes.dedup();
                return ColumnProfile {
                    name: name.clone(),
                    dtype: dtypes.get(j).cloned().unwrap_or_default(),
                    null_share: if n == 0 {
                        0.0
                    } else {
                        missing as f64 / n as f64
                    },
                    distinct: codes.len(),
                    distinct_estimated: false,
                    min: f64::NAN,
                    max: f64::NAN,
                    mean: f64::NAN,
                    missing,
                };
            }
            let (mn, mx, mean) = if present[j] == 0 {
                (f64::NAN, f64::NAN, f64::NAN)
            } else {
                (min[j], max[j], sum[j] / present[j] as f64)
            };
            ColumnProfile {
                name: name.clone(),
                dtype: dtypes.get(j).cloned().unwrap_or_default(),
                null_share: if n == 0 {
                    0.0
                } else {
                    (n - present[j]) as f64 / n as f64
                },
                distinct: distinct[j],
                distinct_estimated: false,
                min: mn,
                max: mx,
                mean,
                missing: n - present[j],
            }
        })
        .collect()
}

/// A set of f32 bit patterns for the distinct counts: open addressing with linear
/// probing over a power-of-two table, Fibonacci hashing, grown at half full. Written by
/// hand because this is the profile's inner loop (a lookup per cell: 42 million for
/// MNIST's train split) and std's `HashSet` spent ≈ 5 ns per lookup on its general
/// machinery; the keys here are plain `u32`s with one value that never occurs (the NaN
/// pattern `u32::MAX`: missing cells are skipped), which marks an empty slot.
pub(crate) struct BitSet32 {
    pub(crate) slots: Vec<u32>,
    pub(crate) len: usize,
    /// 32 − log2(slots): the hash's top bits pick the slot.
    pub(crate) shift: u32,
}

impl BitSet32 {
    const EMPTY: u32 = u32::MAX;

    pub(crate) fn new() -> Self {
        Self::for_keys(8)
    }

    /// A set with room for `n` keys before it grows.
    pub(crate) fn for_keys(n: usize) -> Self {
        let slots = (2 * n).next_power_of_two().max(16);
        BitSet32 {
            slots: vec![Self::EMPTY; slots],
            len: 0,
            shift: 32 - slots.trailing_zeros(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, key: u32) {
        debug_assert_ne!(key, Self::EMPTY);
        let mask = self.slots.len() - 1;
        let mut i = (key.wrapping_mul(0x9e37_79b1) >> self.shift) as usize;
        loop {
            let s = self.slots[i];
            if s == key {
                return;
            }
            if s == Self::EMPTY {
                self.slots[i] = key;
                self.len += 1;
                if self.len * 2 > self.slots.len() {
                    self.grow();
                }
                return;
            }
            i = (i + 1) & mask;
        }
    }

    pub(crate) fn grow(&mut self) {
        let old = std::mem::replace(&mut self.slots, vec![Self::EMPTY; 0]);
        self.slots = vec![Self::EMPTY; old.len() * 2];
        self.shift -= 1;
        self.len = 0;
        for k in old {
            if k != Self::EMPTY {
                self.insert(k);
            }
        }
    }
}
