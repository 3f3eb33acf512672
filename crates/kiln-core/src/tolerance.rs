//! The parity rule of int8 models whose quantized values ONNX Runtime may round
//! otherwise: a row that differs from ONNX Runtime passes when moving one quantized
//! activation by one step reproduces it (docs/testing.md, "int8 parity").
//!
//! Why a rule at all: ONNX Runtime's `exp`, `tanh` and `erf` may differ from Rust's in
//! the last bit, and its float convolutions, batch norms and average pools sum in
//! another order than the reference. For fp32 models that stays far below 1e-5, but in
//! an int8 model the next quantization rounds to steps of `scale`, and a value that sits
//! on a rounding boundary can land one step away, on one row in a few hundred or
//! thousand. Piecewise-linear activations (ReLU, leaky ReLU) without layer norm, max
//! pools and int8 convolutions' own outputs give bit-identical inputs to every
//! quantization on both sides, so they keep the plain tolerance; so do the features
//! themselves.

use crate::error::Result;
use crate::forward::{
    LayerSeen, dense_input, dense_u8_i8, forward_traced, int8_weights, kernel_activation,
    norm_and_activate, quantize_u8,
};
use crate::model::{Activation, ModelSpec};
use crate::tensors::TensorStore;

/// True when ONNX Runtime and the reference may disagree by a rounding step: an int8
/// spec with a hidden layer whose output (a smooth activation or a layer norm) feeds a
/// quantization, or an int8 CNN with a value computed in float (a float convolution, a
/// batch norm, an average pool) before a quantization (see [`crate::conv::inexact_sites`]).
pub fn rounding_may_differ(spec: &ModelSpec, weights: &TensorStore) -> Result<bool> {
    let convs = if is_int8(spec) {
        crate::conv::inexact_sites(spec, weights)?.convs
    } else {
        Vec::new()
    };
    Ok(!rounding_layers(spec, weights)?.is_empty() || !convs.is_empty())
}

/// Whether `spec` is an int8 spec.
fn is_int8(spec: &ModelSpec) -> bool {
    spec.quantization
        .as_ref()
        .is_some_and(|q| q.dtype != crate::model::WeightType::Fp16)
}

/// The layers whose quantized input comes from a smooth activation or a layer norm, and
/// the first one when the convolutional steps' output may differ in the last bits.
fn rounding_layers(spec: &ModelSpec, weights: &TensorStore) -> Result<Vec<usize>> {
    if !is_int8(spec) {
        return Ok(Vec::new());
    }
    let first = crate::conv::inexact_sites(spec, weights)?.dense_input;
    Ok((0..spec.layers.len())
        .filter(|&i| match i.checked_sub(1).map(|p| &spec.layers[p]) {
            None => first,
            Some(prev) => {
                prev.norm.is_some()
                    || !matches!(prev.activation, Activation::Relu | Activation::LeakyRelu)
            }
        })
        .collect())
}

/// Whose quantized input a rounding step moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Dense layer `i`'s.
    Layer(usize),
    /// Convolutional step `i`'s (an int8 convolution).
    Conv(usize),
}

/// Where one quantized activation was moved by one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundingStep {
    /// Whose input it is.
    pub site: Site,
    /// The input's position (in a convolution's input, channel by channel).
    pub input: usize,
    /// +1 or -1.
    pub step: i8,
}

/// Looks for one quantized input whose move by one step makes row `row` of the batch
/// `x` (`n` rows, which fix the dynamic quantization ranges as they do in ONNX Runtime)
/// give outputs that `fits` accepts: each input of a dense layer after a smooth
/// activation or a layer norm (or the first, after inexact convolutional steps) by ±1,
/// and each input of an int8 convolution after inexact steps that lies within
/// [`crate::conv::NEAR_BOUNDARY`] of a rounding boundary, across it. None when no single
/// step does, or the spec has no such input.
pub fn one_rounding_step(
    spec: &ModelSpec,
    weights: &TensorStore,
    x: &[f32],
    n: usize,
    row: usize,
    fits: &dyn Fn(&[f32]) -> bool,
) -> Result<Option<RoundingStep>> {
    let layers = rounding_layers(spec, weights)?;
    let convs = if is_int8(spec) {
        crate::conv::inexact_sites(spec, weights)?.convs
    } else {
        Vec::new()
    };
    if (layers.is_empty() && convs.is_empty()) || row >= n {
        return Ok(None);
    }
    let mut seen: Vec<LayerSeen> = Vec::with_capacity(spec.layers.len());
    forward_traced(spec, weights, x, n, &mut |_, s| seen.push(s))?;
    let quant: Vec<(f32, u8)> = seen
        .iter()
        .map(|s| s.input_quant.unwrap_or((1.0, 0)))
        .collect();
    // the dense layers from layer `from` on, given its quantized input
    let dense_from = |from: usize, q: &[u8]| -> Result<Vec<f32>> {
        let mut h = layer(spec, weights, from, q, quant[from])?;
        for (i, &qp) in quant.iter().enumerate().skip(from + 1) {
            h = layer(spec, weights, i, &quantize_u8(&h, qp.0, qp.1), qp)?;
        }
        Ok(h)
    };
    let d = spec.input_dim;
    let features = &x[row * d..(row + 1) * d];
    // the row's quantized input to every layer, with the batch's ranges
    let mut inputs: Vec<Vec<u8>> = Vec::with_capacity(spec.layers.len());
    let mut h = dense_input(spec, weights, features, 1)?;
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
                if fits(&dense_from(l, &q)?) {
                    return Ok(Some(RoundingStep {
                        site: Site::Layer(l),
                        input: k,
                        step,
                    }));
                }
            }
        }
    }
    for &c in &convs {
        let mut accept = |dense_in: &[f32]| -> Result<bool> {
            Ok(fits(&dense_from(
                0,
                &quantize_u8(dense_in, quant[0].0, quant[0].1),
            )?))
        };
        if let Some((input, step)) =
            crate::conv::near_boundary_moves(spec, weights, features, c, &mut accept)?
        {
            return Ok(Some(RoundingStep {
                site: Site::Conv(c),
                input,
                step,
            }));
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
    use crate::forward::{forward, static_params};
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
        assert!(rounding_may_differ(&spec, &w).unwrap());
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
        assert_eq!(step.site, Site::Layer(1));
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
        assert!(!rounding_may_differ(&relu, &w).unwrap());
        let any = |_: &[f32]| true;
        assert_eq!(one_rounding_step(&relu, &w, &x, 3, 1, &any).unwrap(), None);
    }

    /// A 1 x 3 x 3 image through a float 1 x 1 convolution (2 channels, ReLU) into an
    /// int8 3 x 3 convolution (2 channels) and an int8 dense layer (2 outputs), static
    /// int8 by hand. Pixel 4 is 0.6999, so the float convolution's second channel gives
    /// 0.34995 there: 3.4995 steps of the int8 convolution's input scale 0.1, 0.0005
    /// from a rounding boundary; every other value is a whole number of steps.
    fn cnn() -> (ModelSpec, TensorStore, Vec<f32>) {
        use crate::conv::{ConvStep, ImageShape};
        let conv = |channels, kernel| ConvStep::Conv2d {
            channels,
            kernel,
            stride: 1,
            padding: 0,
            activation: Activation::Relu,
        };
        let image = ImageShape {
            channels: 1,
            height: 3,
            width: 3,
        };
        let mut spec = ModelSpec::mlp(9, &[], Activation::Relu, Task::Regression, 2)
            .with_conv(image, vec![conv(2, 1), conv(2, 3)]);
        spec.quantization = Some(Quantization {
            dtype: crate::model::WeightType::Int8,
            scheme: crate::model::Scheme::Static,
            per_channel: true,
        });
        let mut w = TensorStore::default();
        w.insert_f32("conv.0.weight", vec![1, 2], vec![1.0, 0.5]);
        w.insert_f32("conv.0.bias", vec![2], vec![0.0, 0.0]);
        let k: Vec<i8> = (0..36).map(|i| (((i * 37 % 23) as i8) - 11) * 9).collect();
        w.insert_i8("conv.1.weight", vec![18, 2], k);
        w.insert_f32("conv.1.weight_scale", vec![2], vec![0.01, 0.02]);
        w.insert_f32("conv.1.bias", vec![2], vec![0.3, 0.1]);
        for (name, scale) in [("input", 0.1), ("output", 0.05)] {
            w.insert_f32(&format!("conv.1.{name}_scale"), vec![1], vec![scale]);
            w.insert_f32(&format!("conv.1.{name}_zero_point"), vec![1], vec![0.0]);
        }
        w.insert_i8("layers.0.weight", vec![2, 2], vec![100, -50, 30, 127]);
        w.insert_f32("layers.0.weight_scale", vec![2], vec![0.01, 0.01]);
        w.insert_f32("layers.0.bias", vec![2], vec![0.0, 0.0]);
        w.insert_f32("layers.0.input_scale", vec![1], vec![0.05]);
        w.insert_f32("layers.0.input_zero_point", vec![1], vec![0.0]);
        let mut x: Vec<f32> = (0..9).map(|i| 0.2 * (i % 4) as f32).collect();
        x[4] = 0.6999;
        (spec, w, x)
    }

    /// The CNN's planted boundary value is the one move the rule tries, the move
    /// explains a row whose ONNX output took the other rounding, and an output no single
    /// step gives is not explained. With the int8 convolution reading the features
    /// directly there is nothing to explain.
    #[test]
    fn a_convolution_input_on_a_rounding_boundary_explains_one_step() {
        let (spec, w, x) = cnn();
        spec.validate().unwrap();
        assert!(rounding_may_differ(&spec, &w).unwrap());
        let sites = crate::conv::inexact_sites(&spec, &w).unwrap();
        assert_eq!((sites.convs, sites.dense_input), (vec![1], false));
        let reference = forward(&spec, &w, &x, 1).unwrap();
        // the move, and the outputs it gives: the input quantization rounded 3.4995 to 3,
        // ONNX Runtime's float convolution could have given 3.5000 and 4
        let mut moved_input = Vec::new();
        let mut take = |d: &[f32]| {
            moved_input = d.to_vec();
            Ok(true)
        };
        let found = crate::conv::near_boundary_moves(&spec, &w, &x, 1, &mut take).unwrap();
        assert_eq!(found, Some((9 + 4, 1)));
        let qp = static_params(&w, 0).unwrap();
        let onnx = layer(&spec, &w, 0, &quantize_u8(&moved_input, qp.0, qp.1), qp).unwrap();
        let far = |a: &[f32], b: &[f32]| a.iter().zip(b).any(|(a, b)| (a - b).abs() > 1e-4);
        assert!(far(&onnx, &reference), "{onnx:?} vs {reference:?}");
        let close = |o: &[f32]| !far(o, &onnx);
        let step = one_rounding_step(&spec, &w, &x, 1, 0, &close).unwrap();
        assert_eq!(
            step,
            Some(RoundingStep {
                site: Site::Conv(1),
                input: 13,
                step: 1
            })
        );
        let wrong: Vec<f32> = onnx.iter().map(|v| v + 0.3).collect();
        let close = |o: &[f32]| !far(o, &wrong);
        assert_eq!(
            one_rounding_step(&spec, &w, &x, 1, 0, &close).unwrap(),
            None
        );
        // the int8 convolution first, on a 2-channel image: both sides quantize the
        // same features
        let two = crate::conv::ImageShape {
            channels: 2,
            height: 3,
            width: 3,
        };
        let mut direct = ModelSpec::mlp(18, &[], Activation::Relu, Task::Regression, 2)
            .with_conv(two, spec.conv[1..].to_vec());
        direct.quantization = spec.quantization;
        let mut wd = TensorStore::default();
        for (name, t) in &w.tensors {
            if let Some(rest) = name.strip_prefix("conv.1.") {
                wd.tensors.insert(format!("conv.0.{rest}"), t.clone());
            } else if !name.starts_with("conv.0.") {
                wd.tensors.insert(name.clone(), t.clone());
            }
        }
        direct.validate().unwrap();
        assert!(!rounding_may_differ(&direct, &wd).unwrap());
    }
}
