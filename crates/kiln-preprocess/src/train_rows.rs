//! What fitting the steps reads of the train rows: the statistics of columns as the
//! earlier steps left them ([`TrainRows`]), from rows held in memory ([`Memory`]) or from
//! passes over a streamed table (`crate::streamed`).

use crate::error::Result;
use kiln_core::encode::frequencies;
use kiln_core::{TextColumn, Transform};

/// What a step needs to know about a numeric column's present (non-missing) train values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Need {
    /// The mean.
    pub mean: bool,
    /// The population standard deviation (with the mean).
    pub std: bool,
    /// The most frequent value (the smallest among ties).
    pub mode: bool,
    /// Quantiles at these fractions (linear interpolation between the closest ranks).
    pub quantiles: Vec<f64>,
}

/// A numeric column's statistics over its present train values (those `Need` asked for;
/// count, min and max always).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Present values.
    pub count: usize,
    /// Mean (0 when there is no value).
    pub mean: f64,
    /// Population standard deviation (0 when there is no value).
    pub std: f64,
    /// Smallest value (+inf when there is none).
    pub min: f32,
    /// Largest value (-inf when there is none).
    pub max: f32,
    /// The most frequent value, the smallest among ties.
    pub mode: f32,
    /// The quantiles asked for, in order.
    pub quantiles: Vec<f64>,
}

impl Stats {
    /// The statistics of `present` (every value present).
    pub(crate) fn of(present: &[f32], need: &Need) -> Stats {
        let (mean, std) = if need.mean || need.std {
            mean_std(present)
        } else {
            (0.0, 0.0)
        };
        let sorted = || {
            let mut v: Vec<f64> = present.iter().map(|&x| f64::from(x)).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let mut mode = f32::NAN;
        let mut quantiles = Vec::new();
        if (need.mode || !need.quantiles.is_empty()) && !present.is_empty() {
            let v = sorted();
            if need.mode {
                // runs of equal values; the first longest run is the smallest mode
                let (mut best, mut best_n, mut k) = (v[0], 0usize, 0usize);
                while k < v.len() {
                    let run = v[k..].iter().take_while(|&&x| x == v[k]).count();
                    if run > best_n {
                        (best, best_n) = (v[k], run);
                    }
                    k += run;
                }
                mode = best as f32;
            }
            quantiles = need.quantiles.iter().map(|&q| quantile(&v, q)).collect();
        }
        Stats {
            count: present.len(),
            mean,
            std,
            min: present.iter().copied().fold(f32::INFINITY, f32::min),
            max: present.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            mode,
            quantiles,
        }
    }
}

/// Mean and population standard deviation (numpy's `std`, ddof 0) in f64, two passes.
pub(crate) fn mean_std(v: &[f32]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| (f64::from(x) - mean) * (f64::from(x) - mean))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// The `q` quantile of sorted values, linear interpolation between the closest ranks
/// (numpy's default): position `q * (n - 1)`.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    let [lo, hi] = quantile_ranks(sorted.len(), q);
    interpolate(sorted[lo], sorted[hi], q, sorted.len())
}

/// The two ranks (0-based, in sorted order) that the `q` quantile of `n` values lies
/// between.
pub fn quantile_ranks(n: usize, q: f64) -> [usize; 2] {
    let pos = q * (n - 1) as f64;
    [pos.floor() as usize, pos.ceil() as usize]
}

/// The `q` quantile of `n` values from the values at its [`quantile_ranks`].
pub fn interpolate(lo_value: f64, hi_value: f64, q: f64, n: usize) -> f64 {
    let pos = q * (n - 1) as f64;
    lo_value + (hi_value - lo_value) * (pos - pos.floor())
}

/// The train rows as fitting goes, step by step: statistics of their columns after the
/// transforms fitted so far (`done`), and those transforms applied as they come.
pub trait TrainRows {
    /// Train rows (for the log).
    fn rows(&self) -> usize;
    /// The statistics of numeric columns `cols` after `done` (`names`: the columns then).
    fn numeric(
        &mut self,
        done: &[Transform],
        names: &[String],
        cols: &[String],
        need: &Need,
    ) -> Result<Vec<Stats>>;
    /// The category counts of text columns `cols` after `done`, each most frequent
    /// first, ties by name.
    fn categories(
        &mut self,
        done: &[Transform],
        cols: &[String],
    ) -> Result<Vec<Vec<(String, usize)>>>;
    /// Applies the newly fitted `t` (`names`: the columns, updated).
    fn apply(&mut self, t: &Transform, names: &mut Vec<String>) -> Result<()>;
    /// Whether column `c` holds text now.
    fn is_text(&self, c: &str) -> bool;
}

/// Train rows held in memory: row-major values (NaN = missing; placeholders at text
/// columns) and the cells of the text columns, transformed in place step by step.
#[derive(Debug, Clone)]
pub(crate) struct Memory {
    /// Row-major values, the columns as the steps so far left them.
    pub data: Vec<f32>,
    /// The cells of the text columns still present.
    pub cells: Vec<(String, TextColumn)>,
    /// Number of rows.
    pub n_rows: usize,
}

impl Memory {
    fn text_column(&self, c: &str) -> Result<&TextColumn> {
        self.cells
            .iter()
            .find(|(n, _)| n == c)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                crate::PreprocessError::Invalid(format!("internal: no cells for text column `{c}`"))
            })
    }
}

impl TrainRows for Memory {
    fn rows(&self) -> usize {
        self.n_rows
    }

    fn numeric(
        &mut self,
        _done: &[Transform],
        names: &[String],
        cols: &[String],
        need: &Need,
    ) -> Result<Vec<Stats>> {
        let w = names.len().max(1);
        let idx: Vec<usize> = cols
            .iter()
            .map(|c| names.iter().position(|n| n == c).unwrap_or(0))
            .collect();
        let mut present: Vec<Vec<f32>> = idx
            .iter()
            .map(|_| Vec::with_capacity(self.n_rows))
            .collect();
        for row in self.data.chunks_exact(w) {
            for (col, &j) in present.iter_mut().zip(&idx) {
                let x = row[j];
                if !x.is_nan() {
                    col.push(x);
                }
            }
        }
        Ok(present.iter().map(|p| Stats::of(p, need)).collect())
    }

    fn categories(
        &mut self,
        _done: &[Transform],
        cols: &[String],
    ) -> Result<Vec<Vec<(String, usize)>>> {
        cols.iter()
            .map(|c| Ok(frequencies(self.text_column(c)?)))
            .collect()
    }

    fn apply(&mut self, t: &Transform, names: &mut Vec<String>) -> Result<()> {
        t.apply_with_text(names, &mut self.data, &mut self.cells)?;
        Ok(())
    }

    fn is_text(&self, c: &str) -> bool {
        self.cells.iter().any(|(n, _)| n == c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_values_worked_by_hand() {
        let need = Need {
            mean: true,
            std: true,
            mode: true,
            quantiles: vec![0.0, 0.5, 0.75, 1.0],
        };
        let s = Stats::of(&[5.0, 2.0, 5.0, 2.0, 7.0], &need);
        assert_eq!(s.count, 5);
        assert_eq!(s.mean, 4.2);
        assert!((s.std - 1.9390719429665317).abs() < 1e-12, "{}", s.std);
        assert_eq!((s.min, s.max), (2.0, 7.0));
        assert_eq!(s.mode, 2.0);
        assert_eq!(s.quantiles, [2.0, 5.0, 5.0, 7.0]);
        let none = Stats::of(&[], &need);
        assert_eq!((none.count, none.mean, none.std), (0, 0.0, 0.0));
        assert!(none.quantiles.is_empty());
    }
}
