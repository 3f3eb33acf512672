//! Pruning: unstructured magnitude pruning to an exact sparsity (layer-wise or global),
//! and structured pruning that removes whole hidden units, giving a narrower ModelSpec.

use kiln_core::{ModelSpec, NativeModel, Pruning, TensorStore};

use crate::{OptimizeError, Result};

/// Where magnitude pruning ranks weights.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each layer loses the same fraction of its weights (the default).
    #[default]
    Layer,
    /// One ranking over every weight of the network.
    Global,
}

/// Weights of layer `i`, `[in, out]` row-major.
fn weights(model: &NativeModel, i: usize) -> Result<&[f32]> {
    Ok(model.weights.f32(&format!("layers.{i}.weight"))?)
}

/// Number of weights (biases excluded) and how many of them are exactly zero.
pub fn zeros(model: &NativeModel) -> Result<(usize, usize)> {
    let (mut n, mut z) = (0, 0);
    for i in 0..model.spec.layers.len() {
        let w = weights(model, i)?;
        n += w.len();
        z += w.iter().filter(|v| **v == 0.0).count();
    }
    Ok((n, z))
}

/// Zeroes the `round(sparsity * n)` weights of smallest magnitude (per layer, or over
/// the whole network with [`Scope::Global`]); biases are kept. Ties are broken by layer
/// and position, so the result is deterministic, and the number of zero weights is
/// exact (unless the model already held more zeros). Returns the model and one 0/1 mask
/// per layer (what fine-tuning keeps at zero).
pub fn magnitude(
    model: &NativeModel,
    sparsity: f64,
    scope: Scope,
) -> Result<(NativeModel, Vec<Vec<f32>>)> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(OptimizeError::Config(format!(
            "sparsity {sparsity} must be in [0, 1)"
        )));
    }
    if model.spec.quantization.is_some() {
        return Err(OptimizeError::Config(
            "prune before quantizing: the input model is already quantized".into(),
        ));
    }
    let n_layers = model.spec.layers.len();
    let mut masks: Vec<Vec<f32>> = (0..n_layers)
        .map(|i| weights(model, i).map(|w| vec![1.0; w.len()]))
        .collect::<Result<_>>()?;
    // (|w|, layer, index), ranked ascending
    let rank = |layers: &[usize]| -> Result<Vec<(f32, usize, usize)>> {
        let mut all = Vec::new();
        for &i in layers {
            for (j, v) in weights(model, i)?.iter().enumerate() {
                all.push((v.abs(), i, j));
            }
        }
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        Ok(all)
    };
    let groups: Vec<Vec<usize>> = match scope {
        Scope::Layer => (0..n_layers).map(|i| vec![i]).collect(),
        Scope::Global => vec![(0..n_layers).collect()],
    };
    for g in groups {
        let ranked = rank(&g)?;
        let k = (sparsity * ranked.len() as f64).round() as usize;
        for &(_, i, j) in &ranked[..k] {
            masks[i][j] = 0.0;
        }
    }
    let mut store = model.weights.clone();
    apply_masks(&model.spec, &mut store, &masks)?;
    let spec = ModelSpec {
        pruning: Some(Pruning {
            kind: kiln_core::PruningKind::Magnitude,
            amount: sparsity,
        }),
        ..model.spec.clone()
    };
    Ok((NativeModel::new(spec, store)?, masks))
}

/// Multiplies every layer's weights by its mask.
pub fn apply_masks(spec: &ModelSpec, store: &mut TensorStore, masks: &[Vec<f32>]) -> Result<()> {
    for (i, l) in spec.layers.iter().enumerate() {
        let key = format!("layers.{i}.weight");
        let w: Vec<f32> = store
            .f32(&key)?
            .iter()
            .zip(&masks[i])
            .map(|(w, m)| w * m)
            .collect();
        store.insert_f32(&key, vec![l.in_dim, l.out_dim], w);
    }
    Ok(())
}

/// Structured pruning needs layers without a norm: removing units changes the mean and
/// variance a layer norm takes over them, so the narrower model would not compute what
/// the masked one does.
fn refuse_norm(model: &NativeModel) -> Result<()> {
    if model.spec.has_norm() {
        return Err(OptimizeError::Config(
            "structured pruning cannot remove units of a model with layer norm (the norm's mean and variance are taken over the units); drop the `structured` candidate, or use `prune` (magnitude) or `quantize`".into(),
        ));
    }
    Ok(())
}

/// Importance of each unit of hidden layer `i`: the norm of its incoming weights and
/// bias times the norm of its outgoing weights (a unit that receives or sends nothing
/// matters little).
fn unit_scores(model: &NativeModel, i: usize) -> Result<Vec<f64>> {
    let l = &model.spec.layers[i];
    let next = &model.spec.layers[i + 1];
    let w_in = weights(model, i)?;
    let b = model.weights.f32(&format!("layers.{i}.bias"))?;
    let w_out = weights(model, i + 1)?;
    Ok((0..l.out_dim)
        .map(|j| {
            let inc: f64 = (0..l.in_dim)
                .map(|k| f64::from(w_in[k * l.out_dim + j]).powi(2))
                .sum::<f64>()
                + f64::from(b[j]).powi(2);
            let out: f64 = (0..next.out_dim)
                .map(|c| f64::from(w_out[j * next.out_dim + c]).powi(2))
                .sum();
            inc.sqrt() * out.sqrt()
        })
        .collect())
}

/// The hidden units of each hidden layer to keep so that `keep[i]` remain: the highest
/// scores, in their original order (ties: the lower index stays).
pub fn units_to_keep(model: &NativeModel, keep: &[usize]) -> Result<Vec<Vec<usize>>> {
    refuse_norm(model)?;
    let hidden = model.spec.layers.len() - 1;
    if keep.len() != hidden {
        return Err(OptimizeError::Config(format!(
            "{} hidden widths given for {hidden} hidden layers",
            keep.len()
        )));
    }
    (0..hidden)
        .map(|i| {
            let scores = unit_scores(model, i)?;
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            let mut kept: Vec<usize> = order[..keep[i].clamp(1, scores.len())].to_vec();
            kept.sort_unstable();
            Ok(kept)
        })
        .collect()
}

/// Removes every hidden unit not in `kept[i]`: its column of layer `i`'s weights and its
/// bias, and its row of layer `i + 1`'s weights. The result computes exactly what the
/// dense model computes with those units' incoming weights, biases and outgoing weights
/// set to zero (see [`structured_mask`]).
pub fn remove_units(
    model: &NativeModel,
    kept: &[Vec<usize>],
    fraction: f64,
) -> Result<NativeModel> {
    refuse_norm(model)?;
    let mut spec = model.spec.clone();
    let mut store = TensorStore::default();
    let n = spec.layers.len();
    for i in 0..n {
        let l = &model.spec.layers[i];
        let rows: Vec<usize> = if i == 0 {
            (0..l.in_dim).collect()
        } else {
            kept[i - 1].clone()
        };
        let cols: Vec<usize> = if i + 1 < n {
            kept[i].clone()
        } else {
            (0..l.out_dim).collect()
        };
        let w = weights(model, i)?;
        let b = model.weights.f32(&format!("layers.{i}.bias"))?;
        let mut nw = Vec::with_capacity(rows.len() * cols.len());
        for &r in &rows {
            for &c in &cols {
                nw.push(w[r * l.out_dim + c]);
            }
        }
        let nb: Vec<f32> = cols.iter().map(|&c| b[c]).collect();
        store.insert_f32(
            &format!("layers.{i}.weight"),
            vec![rows.len(), cols.len()],
            nw,
        );
        store.insert_f32(&format!("layers.{i}.bias"), vec![cols.len()], nb);
        spec.layers[i].in_dim = rows.len();
        spec.layers[i].out_dim = cols.len();
    }
    model.spec.copy_embeddings(&model.weights, &mut store)?;
    model.spec.copy_conv(&model.weights, &mut store)?;
    spec.pruning = Some(Pruning {
        kind: kiln_core::PruningKind::Structured,
        amount: fraction,
    });
    Ok(NativeModel::new(spec, store)?)
}

/// The dense model equivalent to [`remove_units`] with `kept`: removed units' incoming
/// weights, biases and outgoing weights set to zero, shapes unchanged.
pub fn structured_mask(model: &NativeModel, kept: &[Vec<usize>]) -> Result<NativeModel> {
    refuse_norm(model)?;
    let mut store = model.weights.clone();
    for (i, keep) in kept.iter().enumerate() {
        let l = &model.spec.layers[i];
        let next = &model.spec.layers[i + 1];
        let gone: Vec<usize> = (0..l.out_dim).filter(|j| !keep.contains(j)).collect();
        // read from `store`: the previous layer already zeroed this layer's rows
        let mut w = store.f32(&format!("layers.{i}.weight"))?.to_vec();
        let mut b = store.f32(&format!("layers.{i}.bias"))?.to_vec();
        let mut w2 = store.f32(&format!("layers.{}.weight", i + 1))?.to_vec();
        for &j in &gone {
            for k in 0..l.in_dim {
                w[k * l.out_dim + j] = 0.0;
            }
            b[j] = 0.0;
            for c in 0..next.out_dim {
                w2[j * next.out_dim + c] = 0.0;
            }
        }
        store.insert_f32(&format!("layers.{i}.weight"), vec![l.in_dim, l.out_dim], w);
        store.insert_f32(&format!("layers.{i}.bias"), vec![l.out_dim], b);
        store.insert_f32(
            &format!("layers.{}.weight", i + 1),
            vec![next.in_dim, next.out_dim],
            w2,
        );
    }
    Ok(NativeModel::new(model.spec.clone(), store)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Activation, Predictor, Task};

    fn model(act: Activation) -> NativeModel {
        let spec = ModelSpec::mlp(5, &[8, 6], act, Task::Classification, 3);
        let mut w = TensorStore::default();
        for (i, l) in spec.layers.iter().enumerate() {
            let n = l.in_dim * l.out_dim;
            let v: Vec<f32> = (0..n)
                .map(|k| (((k * 7919 + i * 31) % 97) as f32 - 48.0) / 40.0)
                .collect();
            w.insert_f32(&format!("layers.{i}.weight"), vec![l.in_dim, l.out_dim], v);
            let b: Vec<f32> = (0..l.out_dim).map(|k| (k as f32 - 2.0) * 0.1).collect();
            w.insert_f32(&format!("layers.{i}.bias"), vec![l.out_dim], b);
        }
        NativeModel::new(spec, w).unwrap()
    }

    #[test]
    fn magnitude_pruning_hits_the_sparsity_exactly() {
        let m = model(Activation::Relu);
        let total = 5 * 8 + 8 * 6 + 6 * 3; // 106
        for (s, scope) in [
            (0.5, Scope::Global),
            (0.9, Scope::Global),
            (0.3, Scope::Layer),
        ] {
            let (p, masks) = magnitude(&m, s, scope).unwrap();
            let (n, z) = zeros(&p).unwrap();
            assert_eq!(n, total);
            let want = match scope {
                Scope::Global => (s * total as f64).round() as usize,
                Scope::Layer => [40usize, 48, 18]
                    .iter()
                    .map(|&k| (s * k as f64).round() as usize)
                    .sum(),
            };
            assert_eq!(z, want, "sparsity {s} {scope:?}");
            let masked: usize = masks
                .iter()
                .map(|m| m.iter().filter(|v| **v == 0.0).count())
                .sum();
            assert_eq!(masked, want);
            // the survivors are the largest: every kept |w| >= every pruned |w| (global)
            if scope == Scope::Global {
                let (mut kept_min, mut cut_max) = (f32::INFINITY, 0.0f32);
                for (i, mask) in masks.iter().enumerate() {
                    for (j, v) in weights(&m, i).unwrap().iter().enumerate() {
                        if mask[j] == 0.0 {
                            cut_max = cut_max.max(v.abs());
                        } else {
                            kept_min = kept_min.min(v.abs());
                        }
                    }
                }
                assert!(kept_min >= cut_max);
            }
            // biases untouched
            assert_eq!(
                p.weights.f32("layers.0.bias").unwrap(),
                m.weights.f32("layers.0.bias").unwrap()
            );
        }
        let e = magnitude(&m, 1.0, Scope::Global).unwrap_err().to_string();
        assert!(e.contains("sparsity 1 must be in [0, 1)"), "{e}");
    }

    #[test]
    fn structured_pruning_equals_the_masked_dense_model() {
        for act in [Activation::Relu, Activation::Tanh, Activation::Sigmoid] {
            let m = model(act);
            let kept = units_to_keep(&m, &[4, 3]).unwrap();
            assert_eq!(kept.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 3]);
            let mut small = remove_units(&m, &kept, 0.5).unwrap();
            assert_eq!(small.spec.layers[0].out_dim, 4);
            assert_eq!(small.spec.layers[1].in_dim, 4);
            assert_eq!(small.spec.layers[1].out_dim, 3);
            assert_eq!(small.spec.layers[2].in_dim, 3);
            assert_eq!(small.spec.n_params(), 5 * 4 + 4 + 4 * 3 + 3 + 3 * 3 + 3);
            let mut masked = structured_mask(&m, &kept).unwrap();
            let x: Vec<f32> = (0..50)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0)
                .collect();
            let a = small.predict(&x, 10).unwrap();
            let b = masked.predict(&x, 10).unwrap();
            for (p, q) in a.logits.iter().zip(&b.logits) {
                // sigmoid units removed give 0.5 * 0 = 0 in the masked model: equal sums
                assert!((p - q).abs() <= 1e-6, "{act:?}: {p} vs {q}");
            }
        }
    }

    /// 2 -> 5 -> 2 with hand-picked weights: unit j's score is |in_j| * |out_j| (norms of
    /// its incoming weights + bias and of its outgoing weights).
    #[test]
    fn structured_pruning_keeps_the_units_with_the_highest_scores() {
        let spec = ModelSpec::mlp(2, &[5], Activation::Relu, Task::Classification, 2);
        let mut w = TensorStore::default();
        // incoming columns (w0j, w1j) and biases: |in| = 5, 1, 3, 3, 2
        #[rustfmt::skip]
        w.insert_f32("layers.0.weight", vec![2, 5], vec![
            3.0, 1.0, 0.0, 2.0, 0.0,
            4.0, 0.0, 3.0, 2.0, 0.0,
        ]);
        w.insert_f32("layers.0.bias", vec![5], vec![0.0, 0.0, 0.0, 1.0, 2.0]);
        // outgoing rows: |out| = 1, 10, 2, 2, 1.5
        #[rustfmt::skip]
        w.insert_f32("layers.1.weight", vec![5, 2], vec![
            1.0, 0.0,
            6.0, 8.0,
            0.0, 2.0,
            2.0, 0.0,
            0.9, 1.2,
        ]);
        w.insert_f32("layers.1.bias", vec![2], vec![0.0, 0.0]);
        let m = NativeModel::new(spec, w).unwrap();
        // scores 5, 10, 6, 6, 3: keep 1 -> unit 1; keep 3 -> 1, 2, 3 (the tie 2 = 3 both
        // fit); keep 2 -> 1 and 2 (of the tied units the lower index stays)
        assert_eq!(units_to_keep(&m, &[1]).unwrap(), [vec![1]]);
        assert_eq!(units_to_keep(&m, &[2]).unwrap(), [vec![1, 2]]);
        assert_eq!(units_to_keep(&m, &[3]).unwrap(), [vec![1, 2, 3]]);
        assert_eq!(units_to_keep(&m, &[4]).unwrap(), [vec![0, 1, 2, 3]]);
        // removing units 0, 3, 4 leaves the columns and rows of units 1 and 2
        let small = remove_units(&m, &[vec![1, 2]], 0.6).unwrap();
        assert_eq!(
            small.weights.f32("layers.0.weight").unwrap(),
            &[1.0, 0.0, 0.0, 3.0]
        );
        assert_eq!(small.weights.f32("layers.0.bias").unwrap(), &[0.0, 0.0]);
        assert_eq!(
            small.weights.f32("layers.1.weight").unwrap(),
            &[6.0, 8.0, 0.0, 2.0]
        );
    }
}
