//! The train rows on DataFusion as kiln's fitting reads them
//! ([`kiln_preprocess::engine::TrainRows`]): each statistic one aggregate query over the
//! train split with the transforms fitted so far lowered into it, so the fit itself is
//! kiln-preprocess's own code and its numbers are the local engine's.

use crate::lower::{Columns, f64_of};
use crate::query::{Query, collect};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, stddev_pop};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{ExprFunctionExt, cast, col, lit};
use datafusion::prelude::DataFrame;
use kiln_core::Transform;
use kiln_preprocess::engine::{Need, Stats, TrainRows, interpolate, quantile_ranks};
use kiln_preprocess::{PreprocessError, Result};

/// The train split of the source as a DataFusion plan, and its columns so far.
pub struct DfTrainRows<'a> {
    /// Runs queries.
    pub query: &'a Query,
    /// The train rows (every column of the source, before the steps).
    pub train: DataFrame,
    /// Their number.
    pub n_rows: usize,
    /// The columns as the transforms so far left them.
    pub columns: Columns,
    /// Queries run (for the log).
    pub queries: usize,
}

fn invalid(m: String) -> PreprocessError {
    PreprocessError::Invalid(m)
}

impl DfTrainRows<'_> {
    fn expr(&self, c: &str) -> Result<datafusion::logical_expr::Expr> {
        self.columns.get(c).cloned().ok_or_else(|| {
            invalid(format!(
                "internal: no column `{c}` on the DataFusion engine"
            ))
        })
    }

    /// Present values of column `c` (as f64) in the train rows, as a plan of one column `v`.
    fn present(&self, c: &str) -> Result<DataFrame> {
        let e = f64_of(self.expr(c)?);
        let df = self
            .train
            .clone()
            .select(vec![e.alias("v")])
            .and_then(|d| d.filter(col("v").is_not_null().and(col("v").eq(col("v")))))
            .map_err(|e| invalid(e.to_string()))?;
        Ok(df)
    }

    /// The most frequent present value of `c`, the smallest among ties.
    fn mode(&mut self, c: &str) -> Result<f32> {
        let df = self
            .present(c)?
            .aggregate(vec![col("v")], vec![count(lit(1)).alias("n")])
            .and_then(|d| {
                d.sort(vec![
                    col("n").sort(false, false),
                    col("v").sort(true, false),
                ])
            })
            .and_then(|d| d.limit(0, Some(1)))
            .map_err(|e| invalid(e.to_string()))?;
        self.queries += 1;
        let batches = self.query.run(collect(df))?;
        Ok(batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .map(|b| b.column(0).as_primitive::<Float64Type>().value(0) as f32)
            .unwrap_or(f32::NAN))
    }

    /// The `qs` quantiles of `c`'s `n` present values: the values at their two closest
    /// ranks, interpolated as kiln does.
    fn quantiles(&mut self, c: &str, n: usize, qs: &[f64]) -> Result<Vec<f64>> {
        if n == 0 || qs.is_empty() {
            return Ok(vec![f64::NAN; qs.len()]);
        }
        let ranks: Vec<[usize; 2]> = qs.iter().map(|&q| quantile_ranks(n, q)).collect();
        let mut wanted: Vec<i64> = ranks.iter().flatten().map(|&r| r as i64 + 1).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let rn = row_number()
            .order_by(vec![col("v").sort(true, false)])
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let df = self
            .present(c)?
            .select(vec![col("v"), rn.alias("rn")])
            .and_then(|d| {
                d.filter(col("rn").in_list(wanted.iter().map(|&r| lit(r as u64)).collect(), false))
            })
            .and_then(|d| d.select(vec![cast(col("rn"), DataType::Int64).alias("rn"), col("v")]))
            .map_err(|e| invalid(e.to_string()))?;
        self.queries += 1;
        let mut at = std::collections::HashMap::new();
        for b in self.query.run(collect(df))? {
            let (r, v) = (
                b.column(0).as_primitive::<Int64Type>(),
                b.column(1).as_primitive::<Float64Type>(),
            );
            for i in 0..b.num_rows() {
                at.insert(r.value(i) as usize - 1, v.value(i));
            }
        }
        Ok(qs
            .iter()
            .zip(&ranks)
            .map(|(&q, [lo, hi])| {
                let (a, b) = (
                    at.get(lo).copied().unwrap_or(f64::NAN),
                    at.get(hi).copied().unwrap_or(f64::NAN),
                );
                interpolate(a, b, q, n)
            })
            .collect())
    }
}

impl TrainRows for DfTrainRows<'_> {
    fn rows(&self) -> usize {
        self.n_rows
    }

    fn numeric(
        &mut self,
        _done: &[Transform],
        _names: &[String],
        cols: &[String],
        need: &Need,
    ) -> Result<Vec<Stats>> {
        let mut aggs = Vec::new();
        for c in cols {
            let e = f64_of(self.expr(c)?);
            // NaN counts as missing, as in kiln's rows
            let e = datafusion::logical_expr::when(e.clone().eq(e.clone()), e)
                .end()
                .map_err(|e| invalid(e.to_string()))?;
            aggs.push(count(e.clone()));
            aggs.push(min(e.clone()));
            aggs.push(max(e.clone()));
            aggs.push(avg(e.clone()));
            aggs.push(stddev_pop(e));
        }
        let df = self
            .train
            .clone()
            .aggregate(vec![], aggs)
            .map_err(|e| invalid(e.to_string()))?;
        self.queries += 1;
        let batches = self.query.run(collect(df))?;
        let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Err(invalid("internal: an aggregate returned no row".into()));
        };
        let f = |j: usize| -> f64 {
            let a = b.column(j);
            if a.is_null(0) {
                return f64::NAN;
            }
            match a.data_type() {
                DataType::Float64 => a.as_primitive::<Float64Type>().value(0),
                DataType::Int64 => a.as_primitive::<Int64Type>().value(0) as f64,
                _ => f64::NAN,
            }
        };
        let mut out = Vec::with_capacity(cols.len());
        for (k, c) in cols.iter().enumerate() {
            let n = f(5 * k) as usize;
            let (lo, hi) = (f(5 * k + 1), f(5 * k + 2));
            let mode = if need.mode && n > 0 {
                self.mode(c)?
            } else {
                f32::NAN
            };
            let quantiles = if need.quantiles.is_empty() {
                Vec::new()
            } else {
                self.quantiles(c, n, &need.quantiles)?
            };
            out.push(Stats {
                count: n,
                mean: if n > 0 { f(5 * k + 3) } else { 0.0 },
                std: if n > 0 { f(5 * k + 4) } else { 0.0 },
                min: if n > 0 { lo as f32 } else { f32::INFINITY },
                max: if n > 0 { hi as f32 } else { f32::NEG_INFINITY },
                mode,
                quantiles,
            });
        }
        Ok(out)
    }

    fn categories(
        &mut self,
        _done: &[Transform],
        cols: &[String],
    ) -> Result<Vec<Vec<(String, usize)>>> {
        let mut out = Vec::with_capacity(cols.len());
        for c in cols {
            let e = datafusion::logical_expr::cast(self.expr(c)?, DataType::Utf8);
            let df = self
                .train
                .clone()
                .select(vec![e.alias("v")])
                .and_then(|d| d.filter(col("v").is_not_null()))
                .and_then(|d| d.aggregate(vec![col("v")], vec![count(lit(1)).alias("n")]))
                .map_err(|e| invalid(e.to_string()))?;
            self.queries += 1;
            let mut f: Vec<(String, usize)> = Vec::new();
            for b in self.query.run(collect(df))? {
                let (v, n) = (
                    b.column(0).as_string::<i32>(),
                    b.column(1).as_primitive::<Int64Type>(),
                );
                for i in 0..b.num_rows() {
                    f.push((v.value(i).to_string(), n.value(i) as usize));
                }
            }
            f.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            out.push(f);
        }
        Ok(out)
    }

    fn apply(&mut self, t: &Transform, names: &mut Vec<String>) -> Result<()> {
        self.columns.apply(t).map_err(|e| invalid(e.to_string()))?;
        *names = self.columns.names();
        Ok(())
    }

    fn is_text(&self, c: &str) -> bool {
        self.columns.text.contains(c)
    }
}
