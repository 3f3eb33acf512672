//! The parity rule of int8 models with smooth activations or layer norm: a row that
//! differs from ONNX Runtime passes when moving one quantized activation by one step
//! reproduces it (docs/testing.md, "int8 parity").
//!
//! Why a rule at all: ONNX Runtime's `exp`, `tanh` and `erf` may differ from Rust's in
//! the last bit. For fp32 models that stays far below 1e-5, but in an int8 model the next
//! layer rounds its input to steps of `scale`, and a value that sits on a rounding
//! boundary can land one step away, on one row in a few hundred. Piecewise-linear
//! activations (ReLU, leaky ReLU) without layer norm give bit-identical inputs to every
//! quantization on both sides, so they keep the plain tolerance; so does every layer's
//! first input (the features themselves).

use crate::error::Result;
use crate::forward::{
    LayerSeen, dense_input, dense_u8_i8, forward_traced, int8_weights, kernel_activation,
    norm_and_activate, quantize_u8,
};
use crate::model::{Activation, ModelSpec};
use crate::tensors::TensorStore;

/// True when ONNX Runtime and the reference may disagree by a rounding step: an int8
/// spec with a hidden layer whose output (a smooth activation or a layer norm) feeds a
/// quantization.
pub fn rounding_may_differ(spec: &ModelSpec) -> bool {
    !rounding_layers(spec).is_empty()
}

/// The layers whose quantized input comes from a smooth activation or a layer norm.
fn rounding_layers(spec: &ModelSpec) -> Vec<usize> {
    let int8 = spec
        .quantization
        .as_ref()
        .is_some_and(|q| q.dtype != crate::model::WeightType::Fp16);
    if !int8 {
        return Vec::new();
    }
    (1..spec.layers.len())
        .filter(|&i| {
            let prev = &spec.layers[i - 1];
            prev.norm.is_some()
                || !matches!(prev.activation, Activation::Relu | Activation::LeakyRelu)
        })
        .collect()
}

/// Where one quantized activation was moved by one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundingStep {
    /// The layer whose input it is.
    pub layer: usize,
    /// The input's position in the layer.
    pub input: usize,
    /// +1 or -1.
    pub step: i8,
}

/// Looks for one quantized input of one layer (after a smooth activation or a layer norm)
/// whose move by ±1 step makes row `row` of the batch `x` (`n` rows, which fix the
/// dynamic quantization ranges as they do in ONNX Runtime) give outputs that `fits`
/// accepts. None when no single step does, or the spec has no such layer.
pub fn one_rounding_step(
    spec: &ModelSpec,
    weights: &TensorStore,
    x: &[f32],
    n: usize,
    row: usize,
    fits: &dyn Fn(&[f32]) -> bool,
) -> Result<Option<RoundingStep>> {
    let layers = rounding_layers(spec);
    if layers.is_empty() || row >= n {
        return Ok(None);
    }
    let mut seen: Vec<LayerSeen> = Vec::with_capacity(spec.layers.len());
    forward_traced(spec, weights, x, n, &mut |_, s| seen.push(s))?;
    let quant: Vec<(f32, u8)> = seen
        .iter()
        .map(|s| s.input_quant.unwrap_or((1.0, 0)))
        .collect();
    // the row's quantized input to every layer, with the batch's ranges
    let d = spec.input_dim;
    let mut inputs: Vec<Vec<u8>> = Vec::with_capacity(spec.layers.len());
    let mut h = dense_input(spec, weights, &x[row * d..(row + 1) * d], 1)?;
    for (i, &qp) in quant.iter().enumerate() {
        let q = quantize_u8(&h, qp.0, qp.1);
        h = layer(spec, weights, i, &q, qp)?;
        inputs.push(q);
    }
    for &l in &layers {
        for k in 0..spec.layers[l].in_dim {
            for step in [1i8, -1] {
                let moved = i16::from(inputs[l][k]) + i16::from(step);
                let Ok(v) = u8::try_from(moved) else { continue };
                let mut q = inputs[l].clone();
                q[k] = v;
                let mut h = layer(spec, weights, l, &q, quant[l])?;
                for (i, &qp) in quant.iter().enumerate().skip(l + 1) {
                    h = layer(spec, weights, i, &quantize_u8(&h, qp.0, qp.1), qp)?;
                }
                if fits(&h) {
                    return Ok(Some(RoundingStep {
                        layer: l,
                        input: k,
                        step,
                    }));
                }
            }
        }
    }
    Ok(None)
}

/// Layer `i` of an int8 spec on one row's quantized input `q` (range `(scale, zp)`).
fn layer(
    spec: &ModelSpec,
    weights: &TensorStore,
    i: usize,
    q: &[u8],
    (scale, zp): (f32, u8),
) -> Result<Vec<f32>> {
    let l = &spec.layers[i];
    let b = weights.f32(&format!("layers.{i}.bias"))?;
    let w = int8_weights(weights, i, l)?;
    let mut h = dense_u8_i8(
        q,
        1,
        scale,
        zp,
        w,
        b,
        l.in_dim,
        l.out_dim,
        kernel_activation(l),
    );
    norm_and_activate(l, weights, i, &mut h)?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::forward;
    use crate::model::Quantization;
    use crate::schema::Task;

    /// 2 -> 2 (tanh) -> 1, int8 with symmetric per-tensor weights of scale 1/127.
    fn model() -> (ModelSpec, TensorStore) {
        let mut spec = ModelSpec::mlp(2, &[2], Activation::Tanh, Task::Regression, 1);
        spec.quantization = Some(Quantization {
            dtype: crate::model::WeightType::Int8,
            scheme: crate::model::Scheme::Dynamic,
            per_channel: false,
        });
        let mut w = TensorStore::default();
        w.insert_i8("layers.0.weight", vec![2, 2], vec![127, -64, 32, 127]);
        w.insert_f32("layers.0.weight_scale", vec![1], vec![1.0 / 127.0]);
        w.insert_f32("layers.0.bias", vec![2], vec![0.0, 0.1]);
        w.insert_i8("layers.1.weight", vec![2, 1], vec![127, -127]);
        w.insert_f32("layers.1.weight_scale", vec![1], vec![1.0 / 127.0]);
        w.insert_f32("layers.1.bias", vec![1], vec![0.0]);
        (spec, w)
    }

    #[test]
    fn a_one_step_move_is_found_and_anything_else_is_not() {
        let (spec, w) = model();
        assert!(rounding_may_differ(&spec));
        let x = [0.5f32, -0.25, 1.0, 0.75, -1.0, 0.5];
        let out = forward(&spec, &w, &x, 3).unwrap();
        // the second layer's input range over the batch fixes its step
        let mut seen = Vec::new();
        forward_traced(&spec, &w, &x, 3, &mut |_, s| seen.push(s)).unwrap();
        let (scale, _) = seen[1].input_quant.unwrap();
        // one step of input 0 of layer 1 moves the output by scale * 1 (weight 127/127)
        let want = out[1] + scale;
        let fits = |o: &[f32]| (o[0] - want).abs() < 1e-6;
        let step = one_rounding_step(&spec, &w, &x, 3, 1, &fits)
            .unwrap()
            .unwrap();
        // input 0 up or input 1 down (weights +1 and -1) are the moves that add one step
        assert_eq!(step.layer, 1);
        assert!(
            (step.input, step.step) == (0, 1) || (step.input, step.step) == (1, -1),
            "{step:?}"
        );
        // two steps away is not one rounding step
        let far = out[1] + 2.0 * scale;
        let fits = |o: &[f32]| (o[0] - far).abs() < 1e-6;
        assert_eq!(one_rounding_step(&spec, &w, &x, 3, 1, &fits).unwrap(), None);
        // ReLU hidden layers never need it
        let mut relu = spec.clone();
        relu.layers[0].activation = Activation::Relu;
        assert!(!rounding_may_differ(&relu));
        let any = |_: &[f32]| true;
        assert_eq!(one_rounding_step(&relu, &w, &x, 3, 1, &any).unwrap(), None);
    }
}
