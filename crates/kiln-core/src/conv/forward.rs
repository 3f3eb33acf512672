//! The fp32 reference pass of the convolutional steps: im2col into the dense kernel for a
//! convolution, window reductions for the pools, batch norms over their running
//! statistics, dropout as the identity.

use super::batch_norm::{batch_norm, running_stats};
use super::int8::{conv_int8, conv2d_int8};
use super::{ConvStep, ImageShape, Window};
use crate::error::{CoreError, Result};
use crate::forward::dense_f32;
use crate::model::{Activation, ModelSpec};
use crate::tensors::TensorStore;

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
        h = run_step(weights, (i, *step), (shape, out), h, seen)?;
        shape = out;
    }
    Ok(h)
}

/// Step `i` of `n` images `h` of `shape` (giving `out`), at inference: what
/// [`conv_features_traced`] runs for each step.
pub(super) fn run_step(
    weights: &TensorStore,
    (i, step): (usize, ConvStep),
    (shape, out): (ImageShape, ImageShape),
    mut h: Vec<f32>,
    seen: &mut dyn FnMut(usize, ConvSeen),
) -> Result<Vec<f32>> {
    let win = step.window(shape);
    Ok(match step {
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
        ConvStep::AvgPool { .. } | ConvStep::GlobalAvgPool => pool(&h, shape, out, win, Pool::Mean),
        // inference: values pass unchanged
        ConvStep::Dropout { .. } => h,
        ConvStep::BatchNorm { activation } => {
            let (mean, var) = running_stats(weights, i, shape.channels)?;
            batch_norm(&mut h, shape, (mean, var), weights, i, activation)?;
            h
        }
    })
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
pub(super) fn conv_bias(weights: &TensorStore, i: usize, channels: usize) -> Result<&[f32]> {
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
pub(super) fn im2col_with<T: Copy>(
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
