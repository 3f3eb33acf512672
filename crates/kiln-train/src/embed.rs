//! The embedding tables a network gets: `model.embeddings` resolved against the training
//! split (which features, how many rows, how wide), with located errors for a column that
//! is not an ordinal code.

use crate::data::Data;
use crate::{MAX_EMBEDDING_ROWS, ModelConfig, Result, TrainError};
use kiln_core::EmbeddingSpec;

/// The tables of `model.embeddings` for `train`: per listed column, its feature index,
/// `rows` = the largest train code + 2 (the `ordinal` step fits its categories on the
/// train split, so every category appears there; row 0 takes every other value) and
/// `dim` as configured or [`EmbeddingSpec::default_dim`]. No tables when `columns` was
/// left out here (a dataset trained without its schema has no ordinal columns to find;
/// see [`crate::Config::for_schema`]).
pub(crate) fn embedding_specs(model: &ModelConfig, train: &Data<'_>) -> Result<Vec<EmbeddingSpec>> {
    let cfg = &model.embeddings;
    let Some(columns) = &cfg.columns else {
        return Ok(Vec::new());
    };
    let bad = |m: String| Err(TrainError::Config(format!("model.embeddings.columns: {m}")));
    let names = train.feature_names();
    let mut features: Vec<usize> = Vec::with_capacity(columns.len());
    for c in columns {
        let Some(feature) = names.iter().position(|n| n == c) else {
            return bad(format!(
                "`{c}` is not a feature of this dataset; list columns an `ordinal` step encodes (features: {})",
                preview(names)
            ));
        };
        if features.contains(&feature) {
            return bad(format!("`{c}` is listed twice; list it once"));
        }
        features.push(feature);
    }
    // the largest code of each column, over the split part by part
    let mut max = vec![-1.0f32; features.len()];
    train.for_each_part(&mut |part, first| {
        let d = part.n_features();
        for ((&feature, m), c) in features.iter().zip(&mut max).zip(columns) {
            for (row, &code) in part.features.iter().skip(feature).step_by(d).enumerate() {
                if !(code.is_finite() && code.fract() == 0.0 && code >= -1.0) {
                    return Err(TrainError::Config(format!(
                        "model.embeddings.columns: feature `{c}` holds {code} at train row {}, not an ordinal code (a whole number from -1 up); encode the column with an `ordinal` step, and let no numeric step after it name it",
                        first + row
                    )));
                }
                *m = m.max(code);
            }
        }
        Ok(())
    })?;
    let mut out: Vec<EmbeddingSpec> = Vec::with_capacity(columns.len());
    for ((&feature, &max), c) in features.iter().zip(&max).zip(columns) {
        let rows = max as usize + 2;
        if rows > MAX_EMBEDDING_ROWS {
            return bad(format!(
                "`{c}` has {} categories, more than an embedding table takes ({}); hash the column (`hash_text`) instead",
                rows - 1,
                MAX_EMBEDDING_ROWS - 1
            ));
        }
        out.push(EmbeddingSpec {
            feature,
            rows,
            dim: cfg.dim.unwrap_or_else(|| EmbeddingSpec::default_dim(rows)),
        });
    }
    if !out.is_empty() {
        tracing::info!(
            tables = ?out.iter().map(|e| (names[e.feature].as_str(), e.rows, e.dim)).collect::<Vec<_>>(),
            "embedding tables (column, rows, dim)"
        );
    }
    Ok(out)
}

/// The first names of a list, for an error message.
fn preview(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(8)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 8 {
        s.push_str(&format!(" and {} more", names.len() - 8));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::gradcheck::GradCheck;
    use crate::net::{Backend, Mlp};
    use crate::{EmbeddingConfig, ModelConfig};
    use dfdx::prelude::*;
    use kiln_core::{Activation, Dataset, ModelSpec, Task};

    /// Features `[a, code0, b, code1]`: tables of 4 × 3 and 3 × 2 before a tanh layer.
    fn spec() -> ModelSpec {
        let e = |feature, rows, dim| EmbeddingSpec { feature, rows, dim };
        ModelSpec::mlp(4, &[5], Activation::Tanh, Task::Regression, 1)
            .with_embeddings(vec![e(1, 4, 3), e(3, 3, 2)])
    }

    /// The training pass computes what kiln-core's reference forward pass computes, and
    /// its table gradients are the loss's central differences through that reference:
    /// one row per code looked up, nothing for rows no code reaches. The CPU's two
    /// half-batches sum to the same gradients.
    #[test]
    fn training_forward_and_table_gradients_match_the_reference() {
        let dev = Cpu::seed_from_u64(0);
        let net = Mlp::new(&dev, spec(), 0.0, 3).unwrap();
        let rows = 6;
        let x: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let r = r as f32;
                [(r * 0.3).sin(), r % 3.0 - 1.0, r.cos(), r % 2.0]
            })
            .collect();
        let y: Vec<f32> = (0..rows).map(|r| r as f32 * 0.1).collect();
        let check = GradCheck::new(&dev, &net, &x, &y, 1e-6);
        let halves = dev
            .batch_step(&net, &GradCheck::batch(&x, &y), GradCheck::loss())
            .unwrap()
            .merge(&net)
            .unwrap();
        let mut nonzero = 0;
        for (j, (t, e)) in net.embeddings.iter().zip(&net.spec.embeddings).enumerate() {
            let g = check.step.grads.get(&t.w).as_vec();
            let key = ModelSpec::embedding_key(j);
            for (k, gk) in g.iter().enumerate() {
                let fd = check.central_difference(&key, k);
                assert!(
                    (f64::from(*gk) - fd).abs() < 1e-3 * (1.0 + fd.abs()),
                    "table {j} value {k}: gradient {gk}, central difference {fd}"
                );
                nonzero += usize::from(gk.abs() > 1e-4);
            }
            // table 0: codes -1, 0, 1 reach rows 0..3, never row 3; table 1: codes 0, 1
            let unused = if j == 0 { 3 } else { 0 };
            assert!(
                g[unused * e.dim..(unused + 1) * e.dim]
                    .iter()
                    .all(|v| *v == 0.0)
            );
            for (a, b) in g.iter().zip(halves.get(&t.w).as_vec()) {
                assert!((a - b).abs() < 1e-6, "table {j}: {a} vs {b}");
            }
        }
        assert!(nonzero >= 10, "{nonzero} gradients are not zero");
    }

    /// A dataset whose feature 1, `city`, holds `codes`.
    fn data(codes: &[f32]) -> Dataset {
        Dataset {
            feature_names: vec!["x".into(), "city".into()],
            target: "y".into(),
            features: codes.iter().flat_map(|&c| [0.5, c]).collect(),
            labels: codes.iter().map(|_| 0).collect(),
            values: vec![],
        }
    }

    fn model(columns: &[&str], dim: Option<usize>) -> ModelConfig {
        ModelConfig {
            embeddings: EmbeddingConfig {
                columns: Some(columns.iter().map(|c| c.to_string()).collect()),
                dim,
            },
            ..ModelConfig::default()
        }
    }

    /// Rows come from the largest train code (+ 2: row 0 and code 0's row), the width
    /// from the rule or the file; bad columns and values are errors naming them.
    #[test]
    fn tables_are_sized_from_the_codes_and_bad_columns_are_named() {
        let d = data(&[0.0, 4.0, -1.0, 2.0]);
        let d = Data::Memory(&d);
        let specs = embedding_specs(&model(&["city"], None), &d).unwrap();
        assert_eq!(
            specs,
            [EmbeddingSpec {
                feature: 1,
                rows: 6,
                dim: EmbeddingSpec::default_dim(6)
            }]
        );
        assert_eq!(
            embedding_specs(&model(&["city"], Some(7)), &d).unwrap()[0].dim,
            7
        );
        // no `embeddings`, or no columns resolved: no tables
        assert!(
            embedding_specs(&ModelConfig::default(), &d)
                .unwrap()
                .is_empty()
        );
        let err = |m: ModelConfig, d: &Dataset| {
            embedding_specs(&m, &Data::Memory(d))
                .unwrap_err()
                .to_string()
        };
        let d = data(&[0.0, 4.0, -1.0, 2.0]);
        let e = err(model(&["town"], None), &d);
        assert!(
            e.contains("`town` is not a feature of this dataset") && e.contains("`city`"),
            "{e}"
        );
        let e = err(model(&["city", "city"], None), &d);
        assert!(e.contains("`city` is listed twice"), "{e}");
        let e = err(model(&["city"], None), &data(&[0.0, 1.5]));
        assert!(
            e.contains("feature `city` holds 1.5 at train row 1, not an ordinal code"),
            "{e}"
        );
        let e = err(model(&["city"], None), &data(&[-3.0]));
        assert!(e.contains("holds -3 at train row 0"), "{e}");
        let e = err(model(&["city"], None), &data(&[2e6]));
        assert!(e.contains("more than an embedding table takes"), "{e}");
    }
}
