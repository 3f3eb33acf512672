//! Batch norms: the reference over running statistics, and the statistics a batch norm
//! sees in training over a set of images (what kiln sets the running ones to).

use super::forward::{conv_bias, run_step};
use super::{ConvStep, ImageShape};
use crate::error::{CoreError, Result};
use crate::model::{Activation, ModelSpec};
use crate::tensors::TensorStore;

/// Batch normalization's epsilon (PyTorch's and ONNX's default).
pub const BATCH_NORM_EPS: f32 = 1e-5;

/// Batch normalization `i`'s running mean and variance (`[channels]` each), checked.
pub(super) fn running_stats(
    weights: &TensorStore,
    i: usize,
    channels: usize,
) -> Result<(&[f32], &[f32])> {
    let (mk, vk) = (
        format!("conv.{i}.running_mean"),
        format!("conv.{i}.running_var"),
    );
    let (m, v) = (weights.f32(&mk)?, weights.f32(&vk)?);
    if m.len() != channels || v.len() != channels || !v.iter().all(|v| *v >= 0.0) {
        return Err(CoreError::Invalid(format!(
            "{mk} / {vk} must hold {channels} values each, the variances at least 0"
        )));
    }
    Ok((m, v))
}

/// Normalizes every channel of the images `h` (`[channels, height, width]` each) with
/// `(mean, var)`, then scales by gamma (`conv.<i>.weight`), adds beta (`conv.<i>.bias`)
/// and applies the activation, in place.
pub(super) fn batch_norm(
    h: &mut [f32],
    shape: ImageShape,
    (mean, var): (&[f32], &[f32]),
    weights: &TensorStore,
    i: usize,
    act: Activation,
) -> Result<()> {
    let c = shape.channels;
    let (gamma, beta) = (
        weights.f32(&format!("conv.{i}.weight"))?,
        conv_bias(weights, i, c)?,
    );
    if gamma.len() != c {
        return Err(CoreError::Invalid(format!(
            "conv.{i}.weight (gamma) holds {} values, the spec needs {c}",
            gamma.len()
        )));
    }
    let plane = shape.height * shape.width;
    for img in h.chunks_exact_mut(shape.len()) {
        for (ch, values) in img.chunks_exact_mut(plane).enumerate() {
            let inv = 1.0 / (var[ch] + BATCH_NORM_EPS).sqrt();
            for v in values {
                *v = act.apply((*v - mean[ch]) * inv * gamma[ch] + beta[ch]);
            }
        }
    }
    Ok(())
}

/// A batch norm's per-channel mean and variance.
pub type BatchNormStats = (Vec<f32>, Vec<f32>);

/// The statistics a batch normalization sees in training, over all `n` images `x` at
/// once: for each `batch_norm` step (by index), its input's per-channel mean and biased
/// variance, each step normalizing with its own (as training does) before the next one
/// measures. kiln sets the running statistics to these over training images after each
/// epoch (what "precise batch norm" computes), so they need no state between batches.
pub fn batch_norm_statistics(
    spec: &ModelSpec,
    weights: &TensorStore,
    x: &[f32],
    n: usize,
) -> Result<Vec<Option<BatchNormStats>>> {
    let mut stats = vec![None; spec.conv.len()];
    let Some(mut shape) = spec.image else {
        return Ok(stats);
    };
    let shapes = spec
        .conv_shapes()
        .map_err(|(i, m)| CoreError::Invalid(format!("conv[{i}] ({}): {m}", spec.conv[i].op())))?;
    if x.len() != n * shape.len() || n == 0 {
        return Err(CoreError::Invalid(format!(
            "got {} feature values for {n} images of {shape}",
            x.len()
        )));
    }
    // every other step as at inference
    let mut h = x.to_vec();
    for (i, (step, out)) in spec.conv.iter().zip(shapes).enumerate() {
        if let ConvStep::BatchNorm { activation } = *step {
            let c = shape.channels;
            let plane = shape.height * shape.width;
            let count = (n * plane) as f64;
            let mut mean = vec![0.0f64; c];
            for img in h.chunks_exact(shape.len()) {
                for (ch, values) in img.chunks_exact(plane).enumerate() {
                    mean[ch] += values.iter().map(|&v| f64::from(v)).sum::<f64>();
                }
            }
            mean.iter_mut().for_each(|m| *m /= count);
            let mut var = vec![0.0f64; c];
            for img in h.chunks_exact(shape.len()) {
                for (ch, values) in img.chunks_exact(plane).enumerate() {
                    var[ch] += values
                        .iter()
                        .map(|&v| (f64::from(v) - mean[ch]).powi(2))
                        .sum::<f64>();
                }
            }
            let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
            let var: Vec<f32> = var.iter().map(|&v| (v / count) as f32).collect();
            batch_norm(&mut h, shape, (&mean, &var), weights, i, activation)?;
            stats[i] = Some((mean, var));
        } else {
            h = run_step(weights, (i, *step), (shape, out), h, &mut |_, _| {})?;
        }
        shape = out;
    }
    Ok(stats)
}
