//! Test support: one MSE pass of a network checked against kiln-core's reference forward
//! pass, and the loss's central differences through that reference, to check the
//! gradients of custom tape code (embeddings, convolutions, batch norms) value by value.

use super::{Batch, LossFn, Mlp, Step};
use crate::config::Loss;
use dfdx::prelude::*;
use kiln_core::TensorStore;

/// A network's pass over `x` with targets `y` (regression, MSE), its weights as a store.
pub(crate) struct GradCheck<'a> {
    net: &'a Mlp<Cpu>,
    x: &'a [f32],
    y: &'a [f32],
    rows: usize,
    /// The pass: its gradients and outputs.
    pub step: Step<Cpu>,
    /// The network's weights.
    pub store: TensorStore,
}

impl<'a> GradCheck<'a> {
    /// The pass, with its outputs checked against the reference forward pass within
    /// `tol`.
    pub fn new(dev: &Cpu, net: &'a Mlp<Cpu>, x: &'a [f32], y: &'a [f32], tol: f32) -> Self {
        let rows = y.len();
        let step = net
            .pass(dev, &Self::batch(x, y), Self::loss(), 1.0)
            .unwrap();
        let store = net.to_store();
        let reference = train_mode_reference(&net.spec, &store, x, rows);
        for (a, b) in step.outputs.iter().zip(&reference) {
            assert!((a - b).abs() < tol, "{:?} vs {reference:?}", step.outputs);
        }
        GradCheck {
            net,
            x,
            y,
            rows,
            step,
            store,
        }
    }

    /// The batch of all rows.
    pub fn batch(x: &'a [f32], y: &'a [f32]) -> Batch<'a> {
        Batch {
            x,
            y,
            rows: y.len(),
            masks: vec![],
            mask_stream: None,
        }
    }

    /// Mean squared error.
    pub fn loss() -> LossFn {
        LossFn {
            kind: Loss::Mse,
            huber_delta: 1.0,
        }
    }

    /// The loss's central difference (step 0.01) in value `k` of tensor `key`, through
    /// the reference forward pass.
    pub fn central_difference(&self, key: &str, k: usize) -> f64 {
        let base = self.store.f32(key).unwrap().to_vec();
        let moved = |d: f32| {
            let mut s = self.store.clone();
            let mut v = base.clone();
            v[k] += d;
            s.insert_f32(key, vec![v.len()], v);
            let out = train_mode_reference(&self.net.spec, &s, self.x, self.rows);
            out.iter()
                .zip(self.y)
                .map(|(o, t)| f64::from(o - t).powi(2))
                .sum::<f64>()
                / self.rows as f64
        };
        (moved(1e-2) - moved(-1e-2)) / 2e-2
    }
}

/// kiln-core's forward pass as training computes it: each batch norm over the batch's own
/// statistics (its running statistics set to them first).
fn train_mode_reference(
    spec: &kiln_core::ModelSpec,
    store: &TensorStore,
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let mut s = store.clone();
    let stats = kiln_core::conv::batch_norm_statistics(spec, store, x, rows).unwrap();
    for (i, st) in stats.into_iter().enumerate() {
        if let Some((mean, var)) = st {
            s.insert_f32(&format!("conv.{i}.running_mean"), vec![mean.len()], mean);
            s.insert_f32(&format!("conv.{i}.running_var"), vec![var.len()], var);
        }
    }
    kiln_core::forward(spec, &s, x, rows).unwrap()
}
