//! Static int8 convolutions as ONNX `QLinearConv` runs them: which convolutions are
//! quantized, their stored parameters, and the reference computation.

use super::forward::im2col_with;
use super::{ImageShape, Window};
use crate::error::{CoreError, Result};
use crate::model::Activation;
use crate::tensors::TensorStore;

/// Convolutions that read at least this many channels are quantized by static int8
/// quantization; narrower ones stay fp32, because ONNX Runtime's int8 convolution is
/// slower than its fp32 one there (1 input channel: 0.28x, 4: 0.87x, 8: 1.39x, 16:
/// 2.7x; docs/benchmarks.md).
pub const INT8_MIN_IN_CHANNELS: usize = 8;

/// A convolution in static int8 form, as ONNX `QLinearConv` runs it: the input quantized
/// to uint8 with a calibrated scale and zero point, int8 weights with one scale per
/// output channel (zero point 0), an int32 bias, and the int32 sum requantized to uint8
/// with a calibrated output scale and zero point.
#[derive(Debug, Clone, Copy)]
pub struct ConvInt8<'a> {
    /// `conv.<i>.weight`: `[k2, channels]`, as the fp32 weight.
    pub weight: &'a [i8],
    /// `conv.<i>.weight_scale`: one per output channel.
    pub weight_scale: &'a [f32],
    /// `conv.<i>.input_scale` and `input_zero_point`.
    pub input: (f32, u8),
    /// `conv.<i>.output_scale` and `output_zero_point`.
    pub output: (f32, u8),
}

impl ConvInt8<'_> {
    /// The bias as `QLinearConv` takes it: `round_half_even(b / (x_scale · w_scale))`
    /// per channel, in int32.
    pub fn bias_i32(&self, b: &[f32]) -> Vec<i32> {
        b.iter()
            .zip(self.weight_scale)
            .map(|(&b, &ws)| {
                (b / (self.input.0 * ws))
                    .round_ties_even()
                    .clamp(i32::MIN as f32, i32::MAX as f32) as i32
            })
            .collect()
    }

    /// Per channel, what an int32 sum is multiplied by before rounding to the output's
    /// uint8: `x_scale · w_scale / y_scale`, as ONNX Runtime computes it.
    pub fn multipliers(&self) -> Vec<f32> {
        self.weight_scale
            .iter()
            .map(|&ws| self.input.0 * ws / self.output.0)
            .collect()
    }
}

/// Convolution `i`'s static int8 form, when its weight is int8 (`None` when it is f32);
/// sizes and parameters checked.
pub fn conv_int8(
    weights: &TensorStore,
    i: usize,
    k2: usize,
    channels: usize,
) -> Result<Option<ConvInt8<'_>>> {
    let wk = format!("conv.{i}.weight");
    if !matches!(
        weights.tensors.get(&wk).map(|t| &t.data),
        Some(crate::tensors::TensorData::I8(_))
    ) {
        return Ok(None);
    }
    let weight = weights.i8(&wk)?;
    let weight_scale = weights.f32(&format!("conv.{i}.weight_scale"))?;
    if weight.len() != k2 * channels || weight_scale.len() != channels {
        return Err(CoreError::Invalid(format!(
            "{wk} / conv.{i}.weight_scale hold {} / {} values, the spec needs {k2} x {channels} / {channels}",
            weight.len(),
            weight_scale.len()
        )));
    }
    if weight_scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(CoreError::Invalid(format!(
            "conv.{i}.weight_scale must hold positive finite scales"
        )));
    }
    Ok(Some(ConvInt8 {
        weight,
        weight_scale,
        input: crate::forward::u8_params_named(weights, &format!("conv.{i}.input"))?,
        output: crate::forward::u8_params_named(weights, &format!("conv.{i}.output"))?,
    }))
}

/// A static int8 convolution of every image of `x`, as ONNX Runtime runs `QuantizeLinear
/// -> QLinearConv -> DequantizeLinear -> activation`: the padding holds the input's zero
/// point (a real 0), each int32 sum plus the int32 bias is scaled by
/// [`ConvInt8::multipliers`], clamped to the uint8 range, rounded half to even, and
/// dequantized.
pub(super) fn conv2d_int8(
    x: &[f32],
    inp: ImageShape,
    out: ImageShape,
    win: Window,
    q: &ConvInt8,
    b: &[f32],
    act: Activation,
) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len() / inp.len().max(1) * out.len());
    for img in x.chunks_exact(inp.len()) {
        let xq = crate::forward::quantize_u8(img, q.input.0, q.input.1);
        y.extend(conv2d_int8_image(&xq, (inp, out, win), q, b, act));
    }
    y
}

/// [`conv2d_int8`] of one image already quantized to `xq` (the `QLinearConv` and what
/// follows it), channel by channel.
pub(crate) fn conv2d_int8_image(
    xq: &[u8],
    (inp, out, win): (ImageShape, ImageShape, Window),
    q: &ConvInt8,
    b: &[f32],
    act: Activation,
) -> Vec<f32> {
    let k2 = inp.channels * win.kh * win.kw;
    let (_, xz) = q.input;
    let (ys, yz) = q.output;
    let bias = q.bias_i32(b);
    let mult = q.multipliers();
    let (lo, hi) = (-f32::from(yz), 255.0 - f32::from(yz));
    let positions = out.height * out.width;
    let mut acc = vec![0i32; out.channels];
    let cols = im2col_with(xq, inp, out, win, xz);
    let mut chw = vec![0.0f32; out.len()];
    for (pos, row) in cols.chunks_exact(k2).enumerate() {
        acc.copy_from_slice(&bias);
        for (k, &xv) in row.iter().enumerate() {
            let xv = i32::from(xv) - i32::from(xz);
            if xv == 0 {
                continue;
            }
            let wr = &q.weight[k * out.channels..(k + 1) * out.channels];
            for (a, &wv) in acc.iter_mut().zip(wr) {
                *a += xv * i32::from(wv);
            }
        }
        for (c, (&a, &m)) in acc.iter().zip(&mult).enumerate() {
            let yq = (a as f32 * m).clamp(lo, hi).round_ties_even() + f32::from(yz);
            chw[c * positions + pos] = act.apply((yq - f32::from(yz)) * ys);
        }
    }
    chw
}
