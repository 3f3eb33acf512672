//! The train rows of a streamed preprocess as fitting sees them ([`Passes`]): each
//! statistic comes from passes over the spill's train rows with the transforms fitted
//! so far applied chunk by chunk. A mean takes one pass, a standard deviation two (the
//! mean, then the squared deviations, as in memory); quantiles are exact order
//! statistics found with two radix histograms (the top 16 bits of each value's order
//! key, then the low 16 bits inside the bucket that holds the rank), so the fitted
//! values equal the in-memory path's while memory holds only histograms.

use super::spill;
use crate::error::Result;
use crate::train_rows::{Memory, Need, Stats, TrainRows, interpolate, quantile_ranks};
use kiln_core::{TextColumn, Transform};
use std::collections::HashMap;
use std::path::Path;

/// Histogram buckets of 16 bits.
const BUCKETS: usize = 1 << 16;

/// An f32's key in total order (the order of `f64::total_cmp` on its f64 value).
fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

/// The f32 of an order key.
fn from_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
}

/// The train rows of the spill at `path` (rows whose split code is 0), the columns
/// named `features` (`text` of them text, in the spill's order).
pub(crate) struct Passes<'a> {
    pub path: &'a Path,
    pub codes: &'a [u8],
    pub features: &'a [String],
    pub text: &'a [String],
    /// Train rows.
    pub n_train: usize,
    /// No rows: the columns and text columns as the fitted transforms leave them.
    pub shape: Memory,
    /// Passes run, for the log.
    pub passes: usize,
    /// Where each pass reports its rows.
    pub progress: &'a dyn kiln_core::Progress,
}

impl Passes<'_> {
    /// Calls `each` with every chunk's train rows after `done`: (columns, row-major
    /// values, text cells).
    fn each_train(
        &mut self,
        done: &[Transform],
        what: &str,
        mut each: impl FnMut(&[String], &[f32], &[(String, TextColumn)]),
    ) -> Result<()> {
        self.passes += 1;
        tracing::info!(pass = self.passes, what, "pass over the train rows");
        let progress = self.progress;
        progress.start(
            &format!("preprocess: fit pass {} ({what})", self.passes),
            self.codes.len() as u64,
        );
        let w = self.features.len();
        let mut offset = 0usize;
        let codes = self.codes;
        let outcome = spill::for_each(self.path, |c| {
            let n = c.n_rows();
            progress.advance(n as u64);
            let train: Vec<u32> = (0..n)
                .filter(|&i| codes.get(offset + i) == Some(&0))
                .map(|i| i as u32)
                .collect();
            offset += n;
            if train.is_empty() {
                return Ok(());
            }
            let mut data = Vec::with_capacity(train.len() * w);
            for &i in &train {
                let i = i as usize;
                data.extend_from_slice(&c.values[i * w..(i + 1) * w]);
            }
            let mut cells: Vec<(String, TextColumn)> = self
                .text
                .iter()
                .cloned()
                .zip(c.text.iter().map(|t| t.take(&train)))
                .collect();
            let mut names = self.features.to_vec();
            for t in done {
                t.apply_with_text(&mut names, &mut data, &mut cells)?;
            }
            each(&names, &data, &cells);
            Ok(())
        });
        progress.finish();
        outcome
    }
}

/// Per column: what the first pass counts.
struct First {
    count: usize,
    sum: f64,
    min: f32,
    max: f32,
    top: Vec<u64>,
    mode: HashMap<u32, u64>,
}

impl TrainRows for Passes<'_> {
    fn rows(&self) -> usize {
        self.n_train
    }

    fn numeric(
        &mut self,
        done: &[Transform],
        names: &[String],
        cols: &[String],
        need: &Need,
    ) -> Result<Vec<Stats>> {
        let idx: Vec<usize> = cols
            .iter()
            .map(|c| names.iter().position(|n| n == c).unwrap_or(0))
            .collect();
        let hist = !need.quantiles.is_empty();
        let mut first: Vec<First> = idx
            .iter()
            .map(|_| First {
                count: 0,
                sum: 0.0,
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
                top: if hist { vec![0; BUCKETS] } else { Vec::new() },
                mode: HashMap::new(),
            })
            .collect();
        self.each_train(done, "statistics", |names_now, data, _| {
            let w = names_now.len().max(1);
            for row in data.chunks_exact(w) {
                for (f, &j) in first.iter_mut().zip(&idx) {
                    let x = row[j];
                    if x.is_nan() {
                        continue;
                    }
                    f.count += 1;
                    f.sum += f64::from(x);
                    f.min = f.min.min(x);
                    f.max = f.max.max(x);
                    if hist {
                        f.top[(order_key(x) >> 16) as usize] += 1;
                    }
                    if need.mode {
                        *f.mode.entry((x + 0.0).to_bits()).or_default() += 1;
                    }
                }
            }
        })?;
        let means: Vec<f64> = first
            .iter()
            .map(|f| {
                if f.count == 0 {
                    0.0
                } else {
                    f.sum / f.count as f64
                }
            })
            .collect();
        // per column, the ranks the quantiles need: (bucket, rank inside the bucket)
        let ranks: Vec<Vec<[usize; 2]>> = first
            .iter()
            .map(|f| {
                if !hist || f.count == 0 {
                    return Vec::new();
                }
                let mut out = Vec::new();
                for &q in &need.quantiles {
                    for r in quantile_ranks(f.count, q) {
                        let mut before = 0usize;
                        for (b, &n) in f.top.iter().enumerate() {
                            if before + n as usize > r {
                                out.push([b, r - before]);
                                break;
                            }
                            before += n as usize;
                        }
                    }
                }
                out
            })
            .collect();
        for f in first.iter_mut() {
            f.top = Vec::new();
        }
        let mut sq = vec![0.0f64; idx.len()];
        let mut low: Vec<HashMap<usize, Vec<u32>>> = ranks
            .iter()
            .map(|rs| rs.iter().map(|&[b, _]| (b, vec![0u32; BUCKETS])).collect())
            .collect();
        if need.std || hist {
            self.each_train(done, "statistics, second pass", |names_now, data, _| {
                let w = names_now.len().max(1);
                for row in data.chunks_exact(w) {
                    for (k, &j) in idx.iter().enumerate() {
                        let x = row[j];
                        if x.is_nan() {
                            continue;
                        }
                        let d = f64::from(x) - means[k];
                        sq[k] += d * d;
                        if let Some(h) = low[k].get_mut(&((order_key(x) >> 16) as usize)) {
                            h[(order_key(x) & 0xffff) as usize] += 1;
                        }
                    }
                }
            })?;
        }
        Ok(first
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let value_at = |[b, r]: [usize; 2]| -> f64 {
                    let mut before = 0usize;
                    if let Some(h) = low[k].get(&b) {
                        for (l, &n) in h.iter().enumerate() {
                            if before + n as usize > r {
                                return f64::from(from_key(((b as u32) << 16) | l as u32));
                            }
                            before += n as usize;
                        }
                    }
                    f64::NAN
                };
                let quantiles = if ranks[k].is_empty() {
                    Vec::new()
                } else {
                    need.quantiles
                        .iter()
                        .enumerate()
                        .map(|(qi, &q)| {
                            interpolate(
                                value_at(ranks[k][2 * qi]),
                                value_at(ranks[k][2 * qi + 1]),
                                q,
                                f.count,
                            )
                        })
                        .collect()
                };
                // the smallest of the most frequent values
                let mode = f
                    .mode
                    .iter()
                    .map(|(&bits, &n)| (n, f32::from_bits(bits)))
                    .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.total_cmp(&a.1)))
                    .map_or(f32::NAN, |(_, v)| v);
                Stats {
                    count: f.count,
                    mean: means[k],
                    std: if f.count == 0 {
                        0.0
                    } else {
                        (sq[k] / f.count as f64).sqrt()
                    },
                    min: f.min,
                    max: f.max,
                    mode,
                    quantiles,
                }
            })
            .collect())
    }

    fn categories(
        &mut self,
        done: &[Transform],
        cols: &[String],
    ) -> Result<Vec<Vec<(String, usize)>>> {
        let mut counts: Vec<HashMap<String, usize>> = cols.iter().map(|_| HashMap::new()).collect();
        self.each_train(done, "categories", |_, _, cells| {
            for (c, m) in cols.iter().zip(counts.iter_mut()) {
                if let Some((_, t)) = cells.iter().find(|(n, _)| n == c) {
                    for (s, n) in t.dict.iter().zip(t.counts()) {
                        if n > 0 {
                            *m.entry(s.clone()).or_default() += n;
                        }
                    }
                }
            }
        })?;
        Ok(counts
            .into_iter()
            .map(|m| {
                let mut v: Vec<(String, usize)> = m.into_iter().collect();
                v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                v
            })
            .collect())
    }

    fn apply(&mut self, t: &Transform, names: &mut Vec<String>) -> Result<()> {
        self.shape.apply(t, names)
    }

    fn is_text(&self, c: &str) -> bool {
        self.shape.is_text(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_sort_as_total_cmp_and_round_trip() {
        let mut v = vec![
            3.5f32,
            -0.0,
            0.0,
            -2.0,
            f32::MIN,
            f32::MAX,
            1e-30,
            -1e-30,
            7.0,
        ];
        let mut by_key = v.clone();
        by_key.sort_by_key(|&x| order_key(x));
        v.sort_by(|a, b| f64::from(*a).total_cmp(&f64::from(*b)));
        assert_eq!(
            by_key.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        for x in v {
            assert_eq!(from_key(order_key(x)).to_bits(), x.to_bits());
        }
    }
}
