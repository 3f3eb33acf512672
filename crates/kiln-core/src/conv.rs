//! Convolutional steps on `[channels, height, width]` images — conv2d (zero padding,
//! stride), max and average pooling, global average pooling: their description in a
//! spec (`ConvStep`, `ImageShape`), how each shrinks its input, and the reference forward
//! pass computing what ONNX `Conv`, `MaxPool`, `AveragePool` and `GlobalAveragePool`
//! compute (NCHW, floor mode). A convolution is an im2col of each image followed by
//! [`crate::forward::dense_f32`], so it shares the dense layers' vectorised loop and
//! summation order.

use crate::error::{CoreError, Result};
use crate::forward::dense_f32;
use crate::model::{Activation, ModelSpec};
use crate::tensors::TensorStore;
use serde::{Deserialize, Serialize};

/// The shape of an image input: the features are its values channel by channel, row by
/// row (`[channels, height, width]`, as ONNX's NCHW without the batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageShape {
    /// Channels (1 for grayscale, 3 for colour).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// Values in one image.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether the image holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} x {} x {}", self.channels, self.height, self.width)
    }
}

/// One step of a convolutional feature extractor on a `[channels, height, width]` image,
/// before the dense layers (which read its output flattened channel by channel, row by
/// row, as ONNX `Flatten` does). Sizes shrink as ONNX computes them (floor mode):
/// `out = (in + 2 padding - kernel) / stride + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConvStep {
    /// `channels` filters of `kernel` x `kernel` over every input channel, with zero
    /// padding, plus a bias, then the activation. Weights `conv.<i>.weight`
    /// (`[in_channels · kernel · kernel, channels]`, rows ordered channel, kernel row,
    /// kernel column) and `conv.<i>.bias` (`[channels]`).
    Conv2d {
        /// Output channels.
        channels: usize,
        /// Side of the square kernel.
        kernel: usize,
        /// Step between windows (default 1).
        #[serde(default = "one")]
        stride: usize,
        /// Zeros added on every side (default 0).
        #[serde(default)]
        padding: usize,
        /// Activation after the bias (default `relu`).
        #[serde(default = "relu")]
        activation: Activation,
    },
    /// The largest value of each `kernel` x `kernel` window, per channel.
    MaxPool {
        /// Side of the square window.
        kernel: usize,
        /// Step between windows (default: the kernel, so windows do not overlap).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// The mean of each `kernel` x `kernel` window, per channel.
    AvgPool {
        /// Side of the square window.
        kernel: usize,
        /// Step between windows (default: the kernel).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// The mean of each whole channel: `[channels, 1, 1]`.
    GlobalAvgPool,
    /// Batch normalization of each channel, then the activation: in training over the
    /// batch's values of the channel (every image and position; biased variance), at
    /// inference over the running statistics `conv.<i>.running_mean` / `running_var`:
    /// `(x - mean) / sqrt(var + 1e-5) · gamma + beta`. Gamma is `conv.<i>.weight`
    /// (`[1, channels]`), beta `conv.<i>.bias` (`[channels]`). Not the first step.
    BatchNorm {
        /// Activation after the normalization (default `relu`; give the convolution
        /// before it `activation = "identity"`).
        #[serde(default = "relu")]
        activation: Activation,
    },
    /// In training, each value is zeroed with probability `rate` and the others scaled by
    /// `1 / (1 - rate)`; at inference (the reference, ONNX) it passes values unchanged.
    Dropout {
        /// Share of values zeroed in training, in [0, 1).
        rate: f32,
    },
}

fn one() -> usize {
    1
}

fn relu() -> Activation {
    Activation::Relu
}

/// A convolutional step's window on its input: kernel rows and columns, stride, padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Window rows.
    pub kh: usize,
    /// Window columns.
    pub kw: usize,
    /// Step between windows, both ways.
    pub stride: usize,
    /// Zeros added on every side.
    pub padding: usize,
}

impl ConvStep {
    /// The step's name as written in a pipeline file (`op`).
    pub fn op(&self) -> &'static str {
        match self {
            ConvStep::Conv2d { .. } => "conv2d",
            ConvStep::MaxPool { .. } => "max_pool",
            ConvStep::AvgPool { .. } => "avg_pool",
            ConvStep::GlobalAvgPool => "global_avg_pool",
            ConvStep::Dropout { .. } => "dropout",
            ConvStep::BatchNorm { .. } => "batch_norm",
        }
    }

    /// The step's window on an input of `shape` (the global pool's is the whole image).
    pub fn window(&self, shape: ImageShape) -> Window {
        let square = |k, stride, padding| Window {
            kh: k,
            kw: k,
            stride,
            padding,
        };
        match *self {
            ConvStep::Conv2d {
                kernel,
                stride,
                padding,
                ..
            } => square(kernel, stride, padding),
            ConvStep::MaxPool { kernel, stride } | ConvStep::AvgPool { kernel, stride } => {
                square(kernel, stride.unwrap_or(kernel), 0)
            }
            ConvStep::GlobalAvgPool => Window {
                kh: shape.height,
                kw: shape.width,
                stride: 1,
                padding: 0,
            },
            ConvStep::Dropout { .. } | ConvStep::BatchNorm { .. } => square(1, 1, 0),
        }
    }

    /// Why the step cannot follow the steps `before` it, if it cannot: a batch norm needs
    /// a step before it other than dropout (the input it would normalize is the
    /// preprocessing's job).
    pub fn placement(&self, before: &[ConvStep]) -> std::result::Result<(), String> {
        if matches!(self, ConvStep::BatchNorm { .. })
            && before.iter().all(|s| matches!(s, ConvStep::Dropout { .. }))
        {
            return Err("a batch norm normalizes what a step before it computed; normalize the input with the preprocessing steps (`standardize`, `scale`) instead".into());
        }
        Ok(())
    }

    /// The output shape on an input of `shape`, or why the step does not fit it.
    pub fn output(&self, shape: ImageShape) -> std::result::Result<ImageShape, String> {
        match *self {
            ConvStep::Dropout { rate } if !(0.0..1.0).contains(&rate) => {
                return Err(format!("rate = {rate}: use a share in [0, 1)"));
            }
            ConvStep::Dropout { .. } | ConvStep::BatchNorm { .. } => return Ok(shape),
            _ => {}
        }
        let w = self.window(shape);
        if w.kh == 0 || w.kw == 0 || w.stride == 0 {
            return Err("kernel and stride must be at least 1".into());
        }
        if !matches!(self, ConvStep::GlobalAvgPool) && (w.kh > 64 || w.padding >= w.kh) {
            return Err(format!(
                "a {} x {} kernel with padding {}: kiln takes kernels up to 64 and padding below the kernel",
                w.kh, w.kw, w.padding
            ));
        }
        let (h, wd) = (shape.height + 2 * w.padding, shape.width + 2 * w.padding);
        if h < w.kh || wd < w.kw {
            return Err(format!(
                "its {} x {} window is larger than its {} x {} input{}; remove a pooling or strided step before it, or pad",
                w.kh,
                w.kw,
                shape.height,
                shape.width,
                if w.padding > 0 { " (padded)" } else { "" }
            ));
        }
        let channels = match *self {
            ConvStep::Conv2d { channels, .. } => channels,
            _ => shape.channels,
        };
        if channels == 0 {
            return Err("a convolution needs at least 1 output channel".into());
        }
        Ok(ImageShape {
            channels,
            height: (h - w.kh) / w.stride + 1,
            width: (wd - w.kw) / w.stride + 1,
        })
    }
}

/// The dense layers' input for `n` images `x` (the features, `[channels, height, width]`
/// each): the output of the spec's convolutional steps, flattened channel by channel.
/// `x` itself when the spec reads no image.
pub fn conv_features(
    spec: &ModelSpec,
    weights: &TensorStore,
    x: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    conv_features_traced(spec, weights, x, n, &mut |_, _| {})
}

/// What [`conv_features_traced`] saw at an fp32 convolution: the range of its input and
/// of its output before the activation (where static int8 quantization calibrates).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvSeen {
    /// Smallest and largest input value.
    pub input: (f32, f32),
    /// Smallest and largest value before the activation.
    pub pre_activation: (f32, f32),
}

/// [`conv_features`], telling `seen` what each fp32 convolution (by step index) saw.
pub fn conv_features_traced(
    spec: &ModelSpec,
    weights: &TensorStore,
    x: &[f32],
    n: usize,
    seen: &mut dyn FnMut(usize, ConvSeen),
) -> Result<Vec<f32>> {
    let Some(mut shape) = spec.image else {
        return Ok(x.to_vec());
    };
    let shapes = spec
        .conv_shapes()
        .map_err(|(i, m)| CoreError::Invalid(format!("conv[{i}] ({}): {m}", spec.conv[i].op())))?;
    if x.len() != n * shape.len() {
        return Err(CoreError::Invalid(format!(
            "got {} feature values for {n} images of {shape} = {} values",
            x.len(),
            shape.len()
        )));
    }
    let mut h = x.to_vec();
    for (i, (step, out)) in spec.conv.iter().zip(shapes).enumerate() {
        let win = step.window(shape);
        h = match *step {
            ConvStep::Conv2d { activation, .. } => {
                let k2 = shape.channels * win.kh * win.kw;
                let b = conv_bias(weights, i, out.channels)?;
                match conv_int8(weights, i, k2, out.channels)? {
                    Some(q) => conv2d_int8(&h, shape, out, win, &q, b, activation),
                    None => {
                        let w = conv_weight(weights, i, k2, out.channels)?;
                        let mut y = conv2d_f32(&h, shape, out, win, w, b);
                        seen(
                            i,
                            ConvSeen {
                                input: range(&h),
                                pre_activation: range(&y),
                            },
                        );
                        y.iter_mut().for_each(|v| *v = activation.apply(*v));
                        y
                    }
                }
            }
            ConvStep::MaxPool { .. } => pool(&h, shape, out, win, Pool::Max),
            ConvStep::AvgPool { .. } | ConvStep::GlobalAvgPool => {
                pool(&h, shape, out, win, Pool::Mean)
            }
            // inference: values pass unchanged
            ConvStep::Dropout { .. } => h,
            ConvStep::BatchNorm { activation } => {
                let (mean, var) = running_stats(weights, i, shape.channels)?;
                batch_norm(&mut h, shape, (mean, var), weights, i, activation)?;
                h
            }
        };
        shape = out;
    }
    Ok(h)
}

/// Batch normalization's epsilon (PyTorch's and ONNX's default).
pub const BATCH_NORM_EPS: f32 = 1e-5;

/// Batch normalization `i`'s running mean and variance (`[channels]` each), checked.
fn running_stats(weights: &TensorStore, i: usize, channels: usize) -> Result<(&[f32], &[f32])> {
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
fn batch_norm(
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
    // the steps before each batch norm, run as inference (running statistics only matter
    // at batch norms, whose statistics are computed here)
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
            let mut one = spec.clone();
            one.image = Some(shape);
            one.conv = vec![*step];
            let mut w = TensorStore::default();
            for name in ["weight", "bias", "weight_scale"] {
                if let Some(t) = weights.tensors.get(&format!("conv.{i}.{name}")) {
                    w.tensors.insert(format!("conv.0.{name}"), t.clone());
                }
            }
            h = conv_features(&one, &w, &h, n)?;
        }
        shape = out;
    }
    Ok(stats)
}

/// The smallest and largest of `v` (`(0, 0)` when empty).
fn range(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((0.0f32, 0.0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// A convolution of every image of `x` with weight `w` (`[k2, channels]`) plus bias `b`,
/// before the activation, channel by channel.
fn conv2d_f32(
    x: &[f32],
    inp: ImageShape,
    out: ImageShape,
    win: Window,
    w: &[f32],
    b: &[f32],
) -> Vec<f32> {
    let k2 = inp.channels * win.kh * win.kw;
    let mut y = Vec::with_capacity(x.len() / inp.len().max(1) * out.len());
    for img in x.chunks_exact(inp.len()) {
        let cols = im2col(img, inp, out, win);
        // [positions, channels], then channel by channel
        let hwc = dense_f32(
            &cols,
            out.height * out.width,
            w,
            b,
            k2,
            out.channels,
            Activation::Identity,
        );
        y.extend(to_chw(&hwc, out));
    }
    y
}

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
fn conv2d_int8(
    x: &[f32],
    inp: ImageShape,
    out: ImageShape,
    win: Window,
    q: &ConvInt8,
    b: &[f32],
    act: Activation,
) -> Vec<f32> {
    let k2 = inp.channels * win.kh * win.kw;
    let (xs, xz) = q.input;
    let (ys, yz) = q.output;
    let bias = q.bias_i32(b);
    let mult = q.multipliers();
    let (lo, hi) = (-f32::from(yz), 255.0 - f32::from(yz));
    let positions = out.height * out.width;
    let mut y = Vec::with_capacity(x.len() / inp.len().max(1) * out.len());
    let mut acc = vec![0i32; out.channels];
    for img in x.chunks_exact(inp.len()) {
        let xq = crate::forward::quantize_u8(img, xs, xz);
        let cols = im2col_with(&xq, inp, out, win, xz);
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
        y.extend(chw);
    }
    y
}

/// Convolution `i`'s fp32 weight (`[k2, channels]`), checked.
fn conv_weight(weights: &TensorStore, i: usize, k2: usize, channels: usize) -> Result<&[f32]> {
    let wk = format!("conv.{i}.weight");
    let w = weights.f32(&wk)?;
    if w.len() != k2 * channels {
        return Err(CoreError::Invalid(format!(
            "{wk} holds {} values, the spec needs {k2} x {channels}",
            w.len()
        )));
    }
    Ok(w)
}

/// Convolution `i`'s bias (`[channels]`), checked.
fn conv_bias(weights: &TensorStore, i: usize, channels: usize) -> Result<&[f32]> {
    let bk = format!("conv.{i}.bias");
    let b = weights.f32(&bk)?;
    if b.len() != channels {
        return Err(CoreError::Invalid(format!(
            "{bk} holds {} values, the spec needs {channels}",
            b.len()
        )));
    }
    Ok(b)
}

/// The windows of one image as rows: `[out positions, in channels · kh · kw]`, each row
/// ordered channel, kernel row, kernel column; zeros where a window reaches into the
/// padding.
pub fn im2col(img: &[f32], inp: ImageShape, out: ImageShape, win: Window) -> Vec<f32> {
    im2col_with(img, inp, out, win, 0.0)
}

/// [`im2col`] of any values, `pad` where a window reaches into the padding.
fn im2col_with<T: Copy>(
    img: &[T],
    inp: ImageShape,
    out: ImageShape,
    win: Window,
    pad: T,
) -> Vec<T> {
    let k2 = inp.channels * win.kh * win.kw;
    let mut cols = vec![pad; out.height * out.width * k2];
    for oy in 0..out.height {
        for ox in 0..out.width {
            let row = &mut cols[(oy * out.width + ox) * k2..][..k2];
            for c in 0..inp.channels {
                let plane = &img[c * inp.height * inp.width..][..inp.height * inp.width];
                for ky in 0..win.kh {
                    let Some(iy) = (oy * win.stride + ky).checked_sub(win.padding) else {
                        continue;
                    };
                    if iy >= inp.height {
                        continue;
                    }
                    for kx in 0..win.kw {
                        let Some(ix) = (ox * win.stride + kx).checked_sub(win.padding) else {
                            continue;
                        };
                        if ix < inp.width {
                            row[(c * win.kh + ky) * win.kw + kx] = plane[iy * inp.width + ix];
                        }
                    }
                }
            }
        }
    }
    cols
}

/// `[positions, channels]` values as `[channels, positions]`.
fn to_chw(hwc: &[f32], out: ImageShape) -> Vec<f32> {
    let p = out.height * out.width;
    let mut chw = vec![0.0f32; hwc.len()];
    for (pos, row) in hwc.chunks_exact(out.channels).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            chw[c * p + pos] = v;
        }
    }
    chw
}

/// How a pooling window is reduced.
#[derive(Clone, Copy)]
enum Pool {
    Max,
    Mean,
}

/// Pooling of every image of `x` (no padding, so every window lies inside the image).
fn pool(x: &[f32], inp: ImageShape, out: ImageShape, win: Window, how: Pool) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len() / inp.len().max(1) * out.len());
    let area = (win.kh * win.kw) as f32;
    for img in x.chunks_exact(inp.len()) {
        for c in 0..inp.channels {
            let plane = &img[c * inp.height * inp.width..][..inp.height * inp.width];
            for oy in 0..out.height {
                for ox in 0..out.width {
                    let cells = (0..win.kh).flat_map(|ky| {
                        let row = (oy * win.stride + ky) * inp.width + ox * win.stride;
                        plane[row..row + win.kw].iter().copied()
                    });
                    y.push(match how {
                        Pool::Max => cells.fold(f32::NEG_INFINITY, f32::max),
                        Pool::Mean => cells.sum::<f32>() / area,
                    });
                }
            }
        }
    }
    y
}
