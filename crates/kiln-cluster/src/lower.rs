//! The one lowering of kiln's fitted transforms ([`kiln_core::Transform`], the same
//! description that `Schema::apply` runs in Rust and kiln-deploy exports to ONNX) into
//! DataFusion expressions over the columns as the earlier transforms left them: the
//! same f32 operations in the same order, a missing cell as SQL NULL.

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{Expr, cast, when};
use datafusion::prelude::{coalesce, lit, nanvl};
use kiln_core::Transform;
use std::collections::BTreeSet;

/// The columns of the rows as the transforms so far left them: each a name and the
/// expression over the source table that computes it (Float32, or Utf8 for a text
/// column still present).
#[derive(Debug, Clone, Default)]
pub struct Columns {
    /// Name and expression, in order.
    pub cols: Vec<(String, Expr)>,
    /// The text columns among them.
    pub text: BTreeSet<String>,
}

/// Why a transform cannot be lowered.
#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    /// The transform has no DataFusion form yet.
    #[error(
        "{0} has no DataFusion form yet: run this stage with engine = \"local\", or drop the step"
    )]
    Unsupported(&'static str),
    /// The transform names a column the rows lack (a corrupt schema).
    #[error("{op} names column `{column}`, which the rows lack")]
    Missing {
        /// The transform.
        op: &'static str,
        /// The column.
        column: String,
    },
}

fn f32_lit(x: f32) -> Expr {
    lit(x)
}

impl Columns {
    /// The expression of column `c`.
    pub fn get(&self, c: &str) -> Option<&Expr> {
        self.cols.iter().find(|(n, _)| n == c).map(|(_, e)| e)
    }

    /// The names, in order.
    pub fn names(&self) -> Vec<String> {
        self.cols.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The columns aliased to their names, for a projection.
    pub fn projection(&self) -> Vec<Expr> {
        self.cols
            .iter()
            .map(|(n, e)| e.clone().alias(n.as_str()))
            .collect()
    }

    fn at(&self, op: &'static str, c: &str) -> Result<usize, LowerError> {
        self.cols
            .iter()
            .position(|(n, _)| n == c)
            .ok_or_else(|| LowerError::Missing {
                op,
                column: c.to_string(),
            })
    }

    /// Rewrites each of `columns` by `f(k, expression)`.
    fn each(
        &mut self,
        op: &'static str,
        columns: &[String],
        f: impl Fn(usize, Expr) -> Expr,
    ) -> Result<(), LowerError> {
        for (k, c) in columns.iter().enumerate() {
            let i = self.at(op, c)?;
            let e = std::mem::replace(&mut self.cols[i].1, lit(0f32));
            self.cols[i].1 = f(k, e);
        }
        Ok(())
    }

    /// Replaces each of `columns` in place by the named expressions `f(k, expression)`.
    fn expand(
        &mut self,
        op: &'static str,
        columns: &[String],
        f: impl Fn(usize, &str, Expr) -> Vec<(String, Expr)>,
    ) -> Result<(), LowerError> {
        for (k, c) in columns.iter().enumerate() {
            let i = self.at(op, c)?;
            let (name, e) = self.cols.remove(i);
            let new = f(k, &name, e);
            self.cols.splice(i..i, new);
            self.text.remove(c);
        }
        Ok(())
    }

    /// Applies `t`: the columns afterwards, as `Transform::apply_with_text` leaves them.
    pub fn apply(&mut self, t: &Transform) -> Result<(), LowerError> {
        let op = t.op();
        match t {
            Transform::Scale { columns, by } => {
                let by = *by;
                self.each(op, columns, |_, e| e / f32_lit(by))
            }
            Transform::Standardize { columns, mean, std } => {
                self.each(op, columns, |k, e| (e - f32_lit(mean[k])) / f32_lit(std[k]))
            }
            Transform::Impute {
                columns, values, ..
            } => self.each(op, columns, |k, e| {
                coalesce(vec![nanvl(e, f32_lit(values[k])), f32_lit(values[k])])
            }),
            Transform::Clip { columns, min, max } => self.each(op, columns, |k, e| {
                let e = match min {
                    Some(lo) => when(e.clone().lt(f32_lit(lo[k])), f32_lit(lo[k]))
                        .otherwise(e.clone())
                        .unwrap_or(e),
                    None => e,
                };
                match max {
                    Some(hi) => when(e.clone().gt(f32_lit(hi[k])), f32_lit(hi[k]))
                        .otherwise(e.clone())
                        .unwrap_or(e),
                    None => e,
                }
            }),
            Transform::Log1p { columns } => self.each(op, columns, |_, e| {
                cast(
                    datafusion::functions::math::expr_fn::ln(
                        lit(1f64) + cast(e, DataType::Float64),
                    ),
                    DataType::Float32,
                )
            }),
            Transform::MinMax { columns, min, max } => self.each(op, columns, |k, e| {
                (e - f32_lit(min[k])) / f32_lit(kiln_core::min_max_range(min[k], max[k]))
            }),
            Transform::Drop { columns } => {
                for c in columns {
                    let i = self.at(op, c)?;
                    self.cols.remove(i);
                    self.text.remove(c);
                }
                Ok(())
            }
            Transform::Select { columns } => {
                let mut kept = Vec::with_capacity(columns.len());
                for c in columns {
                    let i = self.at(op, c)?;
                    kept.push(self.cols[i].clone());
                }
                self.cols = kept;
                let names = self.names();
                self.text.retain(|c| names.contains(c));
                Ok(())
            }
            Transform::ImputeCategorical {
                columns, values, ..
            } => self.each(op, columns, |k, e| {
                coalesce(vec![e, lit(values[k].clone())])
            }),
            Transform::OneHot {
                columns,
                categories,
            } => self.expand(op, columns, |k, name, e| {
                categories[k]
                    .iter()
                    .map(|cat| {
                        let hit = when(e.clone().eq(lit(cat.clone())), f32_lit(1.0))
                            .otherwise(f32_lit(0.0))
                            .unwrap_or_else(|_| f32_lit(0.0));
                        (format!("{name}={cat}"), hit)
                    })
                    .collect()
            }),
            Transform::Ordinal {
                columns,
                categories,
            } => self.expand(op, columns, |k, name, e| {
                let mut case: Option<
                    datafusion::logical_expr::conditional_expressions::CaseBuilder,
                > = None;
                for (p, cat) in categories[k].iter().enumerate() {
                    let cond = e.clone().eq(lit(cat.clone()));
                    case = Some(match case {
                        None => when(cond, f32_lit(p as f32)),
                        Some(mut c) => c.when(cond, f32_lit(p as f32)),
                    });
                }
                let code = match case {
                    Some(mut c) => c.otherwise(f32_lit(-1.0)).unwrap_or_else(|_| f32_lit(-1.0)),
                    None => f32_lit(-1.0),
                };
                vec![(name.to_string(), code)]
            }),
            Transform::PiecewiseLinear { columns, edges } => {
                self.expand(op, columns, |k, name, e| {
                    edges[k]
                        .windows(2)
                        .enumerate()
                        .map(|(t, w)| {
                            let r = (e.clone() - f32_lit(w[0])) / f32_lit(w[1] - w[0]);
                            let clamped = when(r.clone().lt(f32_lit(0.0)), f32_lit(0.0))
                                .when(r.clone().gt(f32_lit(1.0)), f32_lit(1.0))
                                .otherwise(r.clone())
                                .unwrap_or(r);
                            (format!("{name}#{t}"), clamped)
                        })
                        .collect()
                })
            }
            Transform::HashText { .. } => Err(LowerError::Unsupported("hash_text")),
        }
    }
}

/// `e` as Float64 (for statistics computed in f64, as kiln's are).
pub fn f64_of(e: Expr) -> Expr {
    cast(e, DataType::Float64)
}

/// Whether `e` over `schema` is text (for checks).
pub fn is_text_type(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}
