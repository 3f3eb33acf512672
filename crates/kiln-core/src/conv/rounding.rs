//! Where a static int8 CNN's quantized values may differ from ONNX Runtime's by one
//! rounding step, and the reference's values after such a step: the parity rule's part
//! for convolutions (`crate::tolerance`, docs/testing.md "int8 parity").
//!
//! ONNX Runtime computes a float convolution, a batch norm or an average pool with sums
//! in another order than the reference, so their outputs differ in the last bits. That
//! is far below the fp32 tolerance, but the next int8 convolution rounds its input to
//! steps of its scale, and a value sitting on a rounding boundary can land one step away.
//! Max pools, dropout and an int8 convolution's own output (requantized, then a ReLU,
//! leaky ReLU or nothing) are the same bits on both sides.

use super::forward::run_step;
use super::int8::{conv_int8, conv2d_int8_image};
use super::{ConvStep, ImageShape};
use crate::error::{CoreError, Result};
use crate::forward::quantize_u8;
use crate::model::{Activation, ModelSpec};
use crate::tensors::TensorStore;

/// How close to a rounding boundary (in quantization steps) a value must lie for the
/// rule to move it: the two sides' float results differ by about 1e-6 of a value, and a
/// value spans at most 255 steps.
pub const NEAR_BOUNDARY: f32 = 0.01;

/// Which values of `spec`'s convolutional steps may differ from ONNX Runtime's by a
/// rounding: the int8 convolutions whose input may, and whether the dense layers' input
/// may (then the first dense layer's quantization can round differently).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InexactSites {
    /// Step indices of int8 convolutions whose input may differ in the last bits.
    pub convs: Vec<usize>,
    /// Whether the flattened output of the steps may differ in the last bits.
    pub dense_input: bool,
}

/// The [`InexactSites`] of `spec` with its stored `weights` (which convolutions are
/// int8).
pub fn inexact_sites(spec: &ModelSpec, weights: &TensorStore) -> Result<InexactSites> {
    let mut sites = InexactSites::default();
    let Some(mut shape) = spec.image else {
        return Ok(sites);
    };
    let mut inexact = false;
    for (i, step) in spec.conv.iter().enumerate() {
        let out = output(step, i, shape)?;
        let win = step.window(shape);
        inexact = match *step {
            ConvStep::MaxPool { .. } | ConvStep::Dropout { .. } => inexact,
            ConvStep::Conv2d { activation, .. } => {
                let k2 = shape.channels * win.kh * win.kw;
                if conv_int8(weights, i, k2, out.channels)?.is_some() {
                    if inexact {
                        sites.convs.push(i);
                    }
                    !matches!(
                        activation,
                        Activation::Relu | Activation::LeakyRelu | Activation::Identity
                    )
                } else {
                    true
                }
            }
            ConvStep::BatchNorm { .. } | ConvStep::AvgPool { .. } | ConvStep::GlobalAvgPool => true,
        };
        shape = out;
    }
    sites.dense_input = inexact;
    Ok(sites)
}

/// For one image `img` (its features): moves, one at a time, each value of int8
/// convolution `site`'s quantized input that lies within [`NEAR_BOUNDARY`] of a rounding
/// boundary by one step across it, runs the steps after it, and hands the dense layers'
/// input to `accept` with the value's index and the step; stops at the first move
/// `accept` takes and returns it.
pub fn near_boundary_moves(
    spec: &ModelSpec,
    weights: &TensorStore,
    img: &[f32],
    site: usize,
    accept: &mut dyn FnMut(&[f32]) -> Result<bool>,
) -> Result<Option<(usize, i8)>> {
    let Some(mut shape) = spec.image else {
        return Ok(None);
    };
    let mut h = img.to_vec();
    for (i, step) in spec.conv.iter().enumerate().take(site) {
        let out = output(step, i, shape)?;
        h = run_step(weights, (i, *step), (shape, out), h, &mut |_, _| {})?;
        shape = out;
    }
    let (step, out) = match spec.conv.get(site) {
        Some(s @ ConvStep::Conv2d { .. }) => (*s, output(s, site, shape)?),
        _ => return Ok(None),
    };
    let ConvStep::Conv2d { activation, .. } = step else {
        return Ok(None);
    };
    let win = step.window(shape);
    let k2 = shape.channels * win.kh * win.kw;
    let Some(q) = conv_int8(weights, site, k2, out.channels)? else {
        return Ok(None);
    };
    let b = super::forward::conv_bias(weights, site, out.channels)?;
    let (xs, xz) = q.input;
    let xq = quantize_u8(&h, xs, xz);
    let (qmin, qmax) = (-f32::from(xz), 255.0 - f32::from(xz));
    for (k, &v) in h.iter().enumerate() {
        let exact = v / xs;
        let rounded = exact.round_ties_even();
        if (exact - rounded).abs() < 0.5 - NEAR_BOUNDARY || !(qmin..=qmax).contains(&exact) {
            continue;
        }
        // across the boundary: one step away from where the reference rounded
        let step: i8 = if rounded > exact { -1 } else { 1 };
        let Ok(moved) = u8::try_from(i16::from(xq[k]) + i16::from(step)) else {
            continue;
        };
        let mut xm = xq.clone();
        xm[k] = moved;
        let mut y = conv2d_int8_image(&xm, (shape, out, win), &q, b, activation);
        let mut s = out;
        for (i, st) in spec.conv.iter().enumerate().skip(site + 1) {
            let o = output(st, i, s)?;
            y = run_step(weights, (i, *st), (s, o), y, &mut |_, _| {})?;
            s = o;
        }
        if accept(&y)? {
            return Ok(Some((k, step)));
        }
    }
    Ok(None)
}

/// Step `i`'s output shape, as a located error when it has none.
fn output(step: &ConvStep, i: usize, shape: ImageShape) -> Result<ImageShape> {
    step.output(shape)
        .map_err(|m| CoreError::Invalid(format!("conv[{i}] ({}): {m}", step.op())))
}
