//! The reference forward pass of convolutional steps on `[channels, height, width]`
//! images — conv2d (zero padding, stride), max and average pooling, global average
//! pooling — computing what ONNX `Conv`, `MaxPool`, `AveragePool` and `GlobalAveragePool`
//! compute (NCHW, floor mode). A convolution is an im2col of each image followed by
//! [`crate::forward::dense_f32`], so it shares the dense layers' vectorised loop and
//! summation order.

use crate::error::{CoreError, Result};
use crate::forward::dense_f32;
use crate::model::{ConvStep, ImageShape, ModelSpec, Window};
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
    let Some(mut shape) = spec.image else {
        return Ok(x.to_vec());
    };
    let shapes = spec
        .conv_shapes()
        .map_err(|(i, m)| CoreError::Invalid(format!("conv[{i}] ({}): {m}", spec.conv[i].op())))?;
    let mut h = x[..n * shape.len()].to_vec();
    for (i, (step, out)) in spec.conv.iter().zip(shapes).enumerate() {
        let win = step.window(shape);
        h = match *step {
            ConvStep::Conv2d { activation, .. } => {
                let (w, b) =
                    conv_params(weights, i, shape.channels * win.kh * win.kw, out.channels)?;
                let k2 = shape.channels * win.kh * win.kw;
                let mut y = Vec::with_capacity(n * out.len());
                for img in h.chunks_exact(shape.len()) {
                    let cols = im2col(img, shape, out, win);
                    // [positions, channels], then channel by channel
                    let hwc = dense_f32(
                        &cols,
                        out.height * out.width,
                        w,
                        b,
                        k2,
                        out.channels,
                        activation,
                    );
                    y.extend(to_chw(&hwc, out));
                }
                y
            }
            ConvStep::MaxPool { .. } => pool(&h, shape, out, win, Pool::Max),
            ConvStep::AvgPool { .. } | ConvStep::GlobalAvgPool => {
                pool(&h, shape, out, win, Pool::Mean)
            }
        };
        shape = out;
    }
    Ok(h)
}

/// Convolution `i`'s weight (`[k2, channels]`) and bias (`[channels]`), checked.
fn conv_params(
    weights: &TensorStore,
    i: usize,
    k2: usize,
    channels: usize,
) -> Result<(&[f32], &[f32])> {
    let (wk, bk) = (format!("conv.{i}.weight"), format!("conv.{i}.bias"));
    let (w, b) = (weights.f32(&wk)?, weights.f32(&bk)?);
    if w.len() != k2 * channels || b.len() != channels {
        return Err(CoreError::Invalid(format!(
            "{wk} / {bk} hold {} / {} values, the spec needs {k2} x {channels} / {channels}",
            w.len(),
            b.len()
        )));
    }
    Ok((w, b))
}

/// The windows of one image as rows: `[out positions, in channels · kh · kw]`, each row
/// ordered channel, kernel row, kernel column; zeros where a window reaches into the
/// padding.
pub fn im2col(img: &[f32], inp: ImageShape, out: ImageShape, win: Window) -> Vec<f32> {
    let k2 = inp.channels * win.kh * win.kw;
    let mut cols = vec![0.0f32; out.height * out.width * k2];
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
