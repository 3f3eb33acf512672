//! The reference forward pass in plain Rust: embedding lookups, fp32 dense layers, softmax, and kiln's int8
//! simulation of ONNX `DynamicQuantizeLinear` (or `QuantizeLinear`) + `MatMulInteger`, written to reproduce what
//! ONNX Runtime computes. Parity checks always compare ONNX Runtime against this code.
//!
//! The loops are hand-written (row × k × column, auto-vectorised at opt-level 3) instead of
//! calling a BLAS: it keeps kiln-core free of `unsafe` and of C libraries, and a fixed
//! summation order makes the results reproducible bit for bit.
//!
//! Over 600 lines with its tests: the ONNX operator golden cases stay beside the kernels
//! they check.

use crate::error::{CoreError, Result};
use crate::model::{Activation, LAYER_NORM_EPS, LayerSpec, ModelSpec, Norm};
use crate::schema::Task;
use crate::tensors::TensorStore;

/// `x[n, in] @ w[in, out] + b[out]`, then the activation.
pub fn dense_f32(
    x: &[f32],
    n: usize,
    w: &[f32],
    b: &[f32],
    in_dim: usize,
    out_dim: usize,
    act: Activation,
) -> Vec<f32> {
    let mut out = vec![0.0f32; n * out_dim];
    for (xr, or) in x.chunks_exact(in_dim).zip(out.chunks_exact_mut(out_dim)) {
        for (k, &xv) in xr.iter().enumerate() {
            if xv == 0.0 {
                continue;
            }
            let wr = &w[k * out_dim..(k + 1) * out_dim];
            for (o, &wv) in or.iter_mut().zip(wr) {
                *o += xv * wv;
            }
        }
        for (o, &bv) in or.iter_mut().zip(b) {
            *o = act.apply(*o + bv);
        }
    }
    out
}

/// Layer normalization of each row of `h` (`width` values): `(z - mean) / sqrt(var +
/// 1e-5) * gamma + beta`, mean and biased variance over the row, as PyTorch's
/// `LayerNorm` and ONNX `LayerNormalization` compute them. Returns the smallest
/// `sqrt(var + 1e-5)` it divided by (infinity for no rows).
pub fn layer_norm_rows(h: &mut [f32], width: usize, gamma: &[f32], beta: &[f32]) -> f32 {
    let n = width as f32;
    let mut sigma_min = f32::INFINITY;
    for row in h.chunks_exact_mut(width) {
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let sigma = (var + LAYER_NORM_EPS).sqrt();
        sigma_min = sigma_min.min(sigma);
        let inv = 1.0 / sigma;
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
    sigma_min
}

/// The activation the dense kernels apply for layer `l`: its own, or the identity when a
/// norm comes between (then [`norm_and_activate`] applies both).
pub fn kernel_activation(l: &LayerSpec) -> Activation {
    if l.norm.is_some() {
        Activation::Identity
    } else {
        l.activation
    }
}

/// The norm and then the activation of layer `i` on its affine output `h` (rows ×
/// `out_dim`), when the layer has a norm; nothing otherwise. Returns the smallest row
/// standard deviation the norm divided by (None without a norm).
pub fn norm_and_activate(
    l: &LayerSpec,
    weights: &TensorStore,
    i: usize,
    h: &mut [f32],
) -> Result<Option<f32>> {
    let Some(Norm::Layer) = l.norm else {
        return Ok(None);
    };
    let (gamma, beta) = norm_params(weights, i, l.out_dim)?;
    let sigma_min = layer_norm_rows(h, l.out_dim, gamma, beta);
    for v in h.iter_mut() {
        *v = l.activation.apply(*v);
    }
    Ok(Some(sigma_min))
}

/// Gamma and beta of layer `i`'s norm (`layers.<i>.norm_weight`, `layers.<i>.norm_bias`),
/// `width` values each.
pub fn norm_params(weights: &TensorStore, i: usize, width: usize) -> Result<(&[f32], &[f32])> {
    let g = weights.f32(&format!("layers.{i}.norm_weight"))?;
    let b = weights.f32(&format!("layers.{i}.norm_bias"))?;
    if g.len() != width || b.len() != width {
        return Err(CoreError::Invalid(format!(
            "layers.{i}.norm_weight / norm_bias hold {} / {} values, the layer has {width} units",
            g.len(),
            b.len()
        )));
    }
    Ok((g, b))
}

/// Row-wise softmax as ONNX Runtime computes it: `exp(x - max) / sum`.
pub fn softmax_rows(logits: &[f32], k: usize) -> Vec<f32> {
    let mut out = logits.to_vec();
    for row in out.chunks_exact_mut(k) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0f32;
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            s += *v;
        }
        for v in row.iter_mut() {
            *v /= s;
        }
    }
    out
}

/// Quantization parameters of ONNX `DynamicQuantizeLinear` for values in `[lo, hi]`:
/// range widened to include 0, `scale = (max - min) / 255`,
/// `zero_point = round_half_even(clamp(-min / scale, 0, 255))`. Static quantization uses
/// the same formula on the range seen in calibration.
pub fn u8_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
    let zp = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even() as u8;
    (scale, zp)
}

/// ONNX `QuantizeLinear` to uint8 with a given scale and zero point:
/// `q = clamp(round_half_even(x / scale) + zero_point, 0, 255)`.
pub fn quantize_u8(x: &[f32], scale: f32, zp: u8) -> Vec<u8> {
    let (qmin, qmax) = (0.0 - zp as f32, 255.0 - zp as f32);
    x.iter()
        .map(|&v| {
            let r = (v / scale).clamp(qmin, qmax).round_ties_even() as i32 + zp as i32;
            r.clamp(0, 255) as u8
        })
        .collect()
}

/// Quantization parameters and values of ONNX `DynamicQuantizeLinear` on a whole tensor
/// (see [`u8_params`] and [`quantize_u8`]).
pub fn dynamic_quantize_u8(x: &[f32]) -> (Vec<u8>, f32, u8) {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (scale, zp) = u8_params(lo, hi);
    (quantize_u8(x, scale, zp), scale, zp)
}

/// The int8 weights' range: 7 bits ([-64, 63]; symmetric ±63), ONNX Runtime's
/// `reduce_range`. On CPUs without VNNI (AVX2 only), ONNX Runtime's u8 × s8 kernels add
/// products in pairs in 16 bits and saturate once `2 · 255 · |w|` passes 32,767; with
/// |w| ≤ 64 they never do, so ONNX Runtime's result is the exact one on every CPU.
pub const WEIGHT_LO: f32 = -64.0;
/// The top of [`WEIGHT_LO`]'s range.
pub const WEIGHT_HI: f32 = 63.0;
/// The symmetric bound, `|q| ≤ 63`.
pub const WEIGHT_MAX: f32 = 63.0;

/// Symmetric int8 weight quantization of `w[in, out]`: per output column when
/// `per_channel`, else one scale; `scale = max|w| / 63`, `q = round_half_even(w / scale)`
/// (7 bits: [`WEIGHT_LO`]).
pub fn quantize_weights_symmetric(
    w: &[f32],
    in_dim: usize,
    out_dim: usize,
    per_channel: bool,
) -> (Vec<i8>, Vec<f32>) {
    let mut max_abs = vec![0.0f32; if per_channel { out_dim } else { 1 }];
    for row in w.chunks_exact(out_dim) {
        for (j, &v) in row.iter().enumerate() {
            let m = &mut max_abs[if per_channel { j } else { 0 }];
            *m = m.max(v.abs());
        }
    }
    let scales: Vec<f32> = max_abs
        .iter()
        .map(|&m| if m == 0.0 { 1.0 } else { m / WEIGHT_MAX })
        .collect();
    let mut q = Vec::with_capacity(in_dim * out_dim);
    for row in w.chunks_exact(out_dim) {
        for (j, &v) in row.iter().enumerate() {
            let s = scales[if per_channel { j } else { 0 }];
            q.push((v / s).round_ties_even().clamp(-WEIGHT_MAX, WEIGHT_MAX) as i8);
        }
    }
    (q, scales)
}

/// Asymmetric int8 weight quantization of `w[in, out]`: per output column when
/// `per_channel`, else one range; the range widened to include 0, `scale = (max - min) /
/// 127`, `zero_point = clamp(round_half_even(-64 - min / scale), -64, 63)`,
/// `q = clamp(round_half_even(w / scale) + zero_point, -64, 63)` (7 bits: [`WEIGHT_LO`]).
/// Returns (q, scales, zero points as f32).
pub fn quantize_weights_asymmetric(
    w: &[f32],
    in_dim: usize,
    out_dim: usize,
    per_channel: bool,
) -> (Vec<i8>, Vec<f32>, Vec<f32>) {
    let k = if per_channel { out_dim } else { 1 };
    let (mut lo, mut hi) = (vec![0.0f32; k], vec![0.0f32; k]);
    for row in w.chunks_exact(out_dim) {
        for (j, &v) in row.iter().enumerate() {
            let c = if per_channel { j } else { 0 };
            lo[c] = lo[c].min(v);
            hi[c] = hi[c].max(v);
        }
    }
    let scales: Vec<f32> = lo
        .iter()
        .zip(&hi)
        .map(|(&l, &h)| {
            if h == l {
                1.0
            } else {
                (h - l) / (WEIGHT_HI - WEIGHT_LO)
            }
        })
        .collect();
    let zps: Vec<f32> = lo
        .iter()
        .zip(&scales)
        .map(|(&l, &s)| {
            (WEIGHT_LO - l / s)
                .round_ties_even()
                .clamp(WEIGHT_LO, WEIGHT_HI)
        })
        .collect();
    let mut q = Vec::with_capacity(in_dim * out_dim);
    for row in w.chunks_exact(out_dim) {
        for (j, &v) in row.iter().enumerate() {
            let c = if per_channel { j } else { 0 };
            q.push(((v / scales[c]).round_ties_even() + zps[c]).clamp(WEIGHT_LO, WEIGHT_HI) as i8);
        }
    }
    (q, scales, zps)
}

/// Dense layer with dynamic uint8 activations and int8 weights, as ONNX Runtime runs
/// `DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(x_scale * w_scale) -> Add(b)`.
#[allow(clippy::too_many_arguments)]
pub fn dense_int8_dynamic(
    x: &[f32],
    n: usize,
    wq: &[i8],
    w_scale: &[f32],
    b: &[f32],
    in_dim: usize,
    out_dim: usize,
    act: Activation,
) -> Vec<f32> {
    let (xq, x_scale, zp) = dynamic_quantize_u8(x);
    dense_u8_i8(
        &xq,
        n,
        x_scale,
        zp,
        (wq, w_scale, &[]),
        b,
        in_dim,
        out_dim,
        act,
    )
}

/// Dense layer with statically quantized activations (scale and zero point fixed by
/// calibration), as ONNX Runtime runs `QuantizeLinear -> MatMulInteger -> Cast ->
/// Mul(x_scale * w_scale) -> Add(b)`. Values outside the calibrated range saturate.
#[allow(clippy::too_many_arguments)]
pub fn dense_int8_static(
    x: &[f32],
    n: usize,
    (x_scale, zp): (f32, u8),
    wq: &[i8],
    w_scale: &[f32],
    b: &[f32],
    in_dim: usize,
    out_dim: usize,
    act: Activation,
) -> Vec<f32> {
    let xq = quantize_u8(x, x_scale, zp);
    dense_u8_i8(
        &xq,
        n,
        x_scale,
        zp,
        (wq, w_scale, &[]),
        b,
        in_dim,
        out_dim,
        act,
    )
}

/// An int8 weight matrix: values, scales (1 or per column) and zero points (none for
/// symmetric weights, else 1 or per column, integers held as f32).
pub type QuantWeights<'a> = (&'a [i8], &'a [f32], &'a [f32]);

/// `(u8 x - zp) . (i8 w - w_zp)` accumulated in i32, as f32, times `x_scale *
/// w_scale[j]`, plus `b[j]`, then the activation — ONNX `MatMulInteger` with its optional
/// `b_zero_point`, then the float rescaling.
#[allow(clippy::too_many_arguments)]
pub fn dense_u8_i8(
    xq: &[u8],
    n: usize,
    x_scale: f32,
    zp: u8,
    (wq, w_scale, w_zp): QuantWeights,
    b: &[f32],
    in_dim: usize,
    out_dim: usize,
    act: Activation,
) -> Vec<f32> {
    let wz: Vec<i32> = (0..out_dim)
        .map(|j| match w_zp.len() {
            0 => 0,
            1 => w_zp[0] as i32,
            _ => w_zp[j] as i32,
        })
        .collect();
    let combined: Vec<f32> = (0..out_dim)
        .map(|j| x_scale * w_scale[if w_scale.len() == 1 { 0 } else { j }])
        .collect();
    let mut out = vec![0.0f32; n * out_dim];
    let mut acc = vec![0i32; out_dim];
    for (xr, or) in xq.chunks_exact(in_dim).zip(out.chunks_exact_mut(out_dim)) {
        acc.iter_mut().for_each(|a| *a = 0);
        let mut x_sum = 0i32;
        for (k, &xv) in xr.iter().enumerate() {
            let xv = xv as i32 - zp as i32;
            if xv == 0 {
                continue;
            }
            let wr = &wq[k * out_dim..(k + 1) * out_dim];
            for (a, &wv) in acc.iter_mut().zip(wr) {
                *a += xv * wv as i32;
            }
            x_sum += xv;
        }
        for j in 0..out_dim {
            // sum_k x_k (w_kj - z_j) = sum_k x_k w_kj - z_j sum_k x_k, exactly, in i32
            let a = acc[j] - wz[j] * x_sum;
            or[j] = act.apply(a as f32 * combined[j] + b[j]);
        }
    }
    out
}

/// Static activation quantization parameters of layer `i` (`layers.<i>.input_scale`,
/// `layers.<i>.input_zero_point`, one value each).
pub fn static_params(weights: &TensorStore, i: usize) -> Result<(f32, u8)> {
    u8_params_named(weights, &format!("layers.{i}.input"))
}

/// A stored uint8 scale and zero point: `<prefix>_scale` and `<prefix>_zero_point`, one
/// value each, checked (a positive finite scale, a whole zero point in 0..=255).
pub fn u8_params_named(weights: &TensorStore, prefix: &str) -> Result<(f32, u8)> {
    let s = weights.f32(&format!("{prefix}_scale"))?;
    let z = weights.f32(&format!("{prefix}_zero_point"))?;
    match (s, z) {
        ([s], [z])
            if *s > 0.0 && s.is_finite() && (0.0..=255.0).contains(z) && z.fract() == 0.0 =>
        {
            Ok((*s, *z as u8))
        }
        _ => Err(CoreError::Invalid(format!(
            "{prefix}_scale / {prefix}_zero_point must hold one positive scale and one zero point in 0..=255"
        ))),
    }
}

/// Runs the network on `n` rows and returns its raw outputs (logits for classification,
/// predictions for regression). A quantized spec runs kiln's int8 simulation; note that
/// dynamic quantization takes its range from the whole batch, so batch composition
/// matters exactly as it does in ONNX Runtime.
pub fn forward(spec: &ModelSpec, weights: &TensorStore, x: &[f32], n: usize) -> Result<Vec<f32>> {
    if x.len() != n * spec.input_dim {
        return Err(CoreError::Invalid(format!(
            "got {} feature values for {n} rows, expected {} per row",
            x.len(),
            spec.input_dim
        )));
    }
    // Rows are independent unless activations are quantized dynamically (their range
    // comes from the whole batch): large inputs go through in one slice of rows per core,
    // each row's arithmetic the same either way, so the outputs are too.
    let dynamic = spec
        .quantization
        .as_ref()
        .is_some_and(|q| q.scheme == crate::model::Scheme::Dynamic);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n / PARALLEL_ROWS);
    if threads > 1 && spec.input_dim > 0 && !dynamic {
        let per = n.div_ceil(threads);
        let parts: Vec<Result<Vec<f32>>> = std::thread::scope(|s| {
            let handles: Vec<_> = x
                .chunks(per * spec.input_dim)
                .map(|c| s.spawn(move || forward_rows(spec, weights, c, c.len() / spec.input_dim)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(CoreError::Invalid("a forward-pass thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut out = Vec::with_capacity(n * spec.output_dim());
        for p in parts {
            out.extend(p?);
        }
        return Ok(out);
    }
    forward_rows(spec, weights, x, n)
}

/// Inputs of at least twice this many rows are split over the cores.
const PARALLEL_ROWS: usize = 512;

/// [`forward`] on one thread.
fn forward_rows(spec: &ModelSpec, weights: &TensorStore, x: &[f32], n: usize) -> Result<Vec<f32>> {
    forward_traced(spec, weights, x, n, &mut |_, _| {})
}

/// The first dense layer's input for `n` rows of features `x`: the features that are
/// not embedded, in their order, then per embedding of `spec` the table row its code
/// looks up (see [`crate::EmbeddingSpec`]). `x` itself when the spec has no embeddings.
pub fn embed_input(
    spec: &ModelSpec,
    weights: &TensorStore,
    x: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    if spec.embeddings.is_empty() {
        return Ok(x.to_vec());
    }
    let d = spec.input_dim;
    let tables = spec
        .embeddings
        .iter()
        .enumerate()
        .map(|(j, e)| {
            let key = ModelSpec::embedding_key(j);
            let t = weights.f32(&key)?;
            if t.len() != e.rows * e.dim {
                return Err(CoreError::Invalid(format!(
                    "{key} holds {} values, the spec needs {} x {}",
                    t.len(),
                    e.rows,
                    e.dim
                )));
            }
            Ok(t)
        })
        .collect::<Result<Vec<_>>>()?;
    if x.len() != n * d || spec.embeddings.iter().any(|e| e.feature >= d) {
        return Err(CoreError::Invalid(format!(
            "got {} feature values for {n} rows of {d}, or an embedding of a feature past {d}",
            x.len()
        )));
    }
    let kept: Vec<usize> = (0..d).filter(|&i| !spec.is_embedded(i)).collect();
    let mut out = Vec::with_capacity(n * spec.first_input_dim());
    for row in x.chunks_exact(d).take(n) {
        out.extend(kept.iter().map(|&i| row[i]));
        for (e, t) in spec.embeddings.iter().zip(&tables) {
            let r = e.row(row[e.feature]);
            out.extend_from_slice(&t[r * e.dim..(r + 1) * e.dim]);
        }
    }
    Ok(out)
}

/// The first dense layer's input for `n` rows of features `x`: the convolutional steps'
/// output for a model that reads an image ([`crate::conv::conv_features`]), else
/// [`embed_input`].
pub fn dense_input(
    spec: &ModelSpec,
    weights: &TensorStore,
    x: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    if spec.image.is_some() {
        crate::conv::conv_features(spec, weights, x, n)
    } else {
        embed_input(spec, weights, x, n)
    }
}

/// What the forward pass saw at one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSeen {
    /// The activation quantization scale and zero point of the layer's input (int8
    /// specs; the batch's own for dynamic quantization, the calibrated ones for static).
    pub input_quant: Option<(f32, u8)>,
    /// The smallest row standard deviation the layer's norm divided by (layers with a
    /// norm).
    pub norm_sigma_min: Option<f32>,
}

/// The forward pass on one thread, telling `seen` what it saw at each layer (by index).
pub fn forward_traced(
    spec: &ModelSpec,
    weights: &TensorStore,
    x: &[f32],
    n: usize,
    seen: &mut dyn FnMut(usize, LayerSeen),
) -> Result<Vec<f32>> {
    let mut h = dense_input(spec, weights, x, n)?;
    for (i, l) in spec.layers.iter().enumerate() {
        let b = weights.f32(&format!("layers.{i}.bias"))?;
        if b.len() != l.out_dim {
            return Err(CoreError::Invalid(format!(
                "layers.{i}.bias holds {} values, the spec needs {}",
                b.len(),
                l.out_dim
            )));
        }
        let mut input_quant = None;
        h = match &spec.quantization {
            // fp16 weights are stored as the f32 values of their f16 rounding: the
            // arithmetic is fp32 (ONNX Runtime casts them to float once, at load)
            Some(q) if q.dtype != crate::model::WeightType::Fp16 => {
                let (w, s, z) = int8_weights(weights, i, l)?;
                let (xq, xs, xz) = if q.scheme == crate::model::Scheme::Static {
                    let (xs, xz) = static_params(weights, i)?;
                    (quantize_u8(&h, xs, xz), xs, xz)
                } else {
                    dynamic_quantize_u8(&h)
                };
                input_quant = Some((xs, xz));
                let (ind, outd, act) = (l.in_dim, l.out_dim, kernel_activation(l));
                dense_u8_i8(&xq, n, xs, xz, (w, s, z), b, ind, outd, act)
            }
            _ => {
                let w = weights.f32(&format!("layers.{i}.weight"))?;
                check_len(i, w.len(), l.in_dim * l.out_dim)?;
                dense_f32(&h, n, w, b, l.in_dim, l.out_dim, kernel_activation(l))
            }
        };
        let norm_sigma_min = norm_and_activate(l, weights, i, &mut h)?;
        seen(
            i,
            LayerSeen {
                input_quant,
                norm_sigma_min,
            },
        );
    }
    Ok(h)
}

/// Layer `i`'s int8 weights: values, scales (1 or per column) and zero points (empty for
/// symmetric weights), their sizes checked against the layer.
pub fn int8_weights<'a>(
    weights: &'a TensorStore,
    i: usize,
    l: &LayerSpec,
) -> Result<QuantWeights<'a>> {
    let w = weights.i8(&format!("layers.{i}.weight"))?;
    let s = weights.f32(&format!("layers.{i}.weight_scale"))?;
    if s.len() != 1 && s.len() != l.out_dim {
        return Err(CoreError::Invalid(format!(
            "layers.{i}.weight_scale holds {} values; expected 1 or {}",
            s.len(),
            l.out_dim
        )));
    }
    check_len(i, w.len(), l.in_dim * l.out_dim)?;
    // asymmetric weights carry zero points, one per scale
    let z = weights
        .f32(&format!("layers.{i}.weight_zero_point"))
        .unwrap_or(&[]);
    if !z.is_empty() && z.len() != s.len() {
        return Err(CoreError::Invalid(format!(
            "layers.{i}.weight_zero_point holds {} values; expected {} (one per scale)",
            z.len(),
            s.len()
        )));
    }
    Ok((w, s, z))
}

fn check_len(layer: usize, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "layers.{layer}.weight holds {got} values, the spec needs {want}"
        )))
    }
}

/// Probabilities from raw outputs: softmax for classification, nothing for regression.
pub fn probabilities(spec: &ModelSpec, outputs: &[f32]) -> Vec<f32> {
    match spec.task {
        Task::Classification => softmax_rows(outputs, spec.output_dim()),
        Task::Regression => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_matches_hand_computation() {
        // x = [1, 2], W = [[1, -1], [0.5, 2]], b = [0.1, -5]
        let y = dense_f32(
            &[1.0, 2.0],
            1,
            &[1.0, -1.0, 0.5, 2.0],
            &[0.1, -5.0],
            2,
            2,
            Activation::Relu,
        );
        assert_eq!(y, vec![2.1, 0.0]);
    }

    /// Embedded codes look up their table rows (code + 1; row 0 for -1, fractions, NaN,
    /// infinities and codes past the table), after the other features in their order,
    /// and the first layer reads that vector: a forward pass worked by hand.
    #[test]
    fn embeddings_look_up_rows_after_the_plain_features() {
        use crate::model::EmbeddingSpec;
        // features: [a, code, b]; the code column has 2 categories: table rows 0..3
        let e = EmbeddingSpec {
            feature: 1,
            rows: 3,
            dim: 2,
        };
        let spec = ModelSpec::mlp(3, &[], Activation::Identity, Task::Regression, 1)
            .with_embeddings(vec![e.clone()]);
        assert_eq!((spec.first_input_dim(), spec.layers[0].in_dim), (4, 4));
        spec.validate().unwrap();
        let mut w = TensorStore::default();
        w.insert_f32(
            "embeddings.0.weight",
            vec![3, 2],
            vec![0.5, -0.5, 10.0, 20.0, 30.0, 40.0],
        );
        w.insert_f32("layers.0.weight", vec![4, 1], vec![1.0, 2.0, 0.1, 0.01]);
        w.insert_f32("layers.0.bias", vec![1], vec![0.0]);
        let codes = [0.0, 1.0, -1.0, 0.5, f32::NAN, f32::INFINITY, 2.0, -2.0, 1e9];
        let rows: Vec<usize> = codes.iter().map(|&c| e.row(c)).collect();
        assert_eq!(rows, [1, 2, 0, 0, 0, 0, 0, 0, 0]);
        let x: Vec<f32> = codes.iter().flat_map(|&c| [1.0, c, 3.0]).collect();
        let first = embed_input(&spec, &w, &x, codes.len()).unwrap();
        assert_eq!(&first[..8], &[1.0, 3.0, 10.0, 20.0, 1.0, 3.0, 30.0, 40.0]);
        let y = forward(&spec, &w, &x, codes.len()).unwrap();
        // a + 2 b + 0.1 e0 + 0.01 e1
        let want = |e0: f32, e1: f32| 1.0 + 6.0 + 0.1 * e0 + 0.01 * e1;
        assert_eq!(y[0], want(10.0, 20.0));
        assert_eq!(y[1], want(30.0, 40.0));
        for (i, v) in y.iter().enumerate().skip(2) {
            assert_eq!(*v, want(0.5, -0.5), "code {} takes row 0", codes[i]);
        }
        // a table of the wrong size is an error naming it
        w.insert_f32("embeddings.0.weight", vec![2, 2], vec![0.0; 4]);
        let err = forward(&spec, &w, &x, codes.len()).unwrap_err().to_string();
        assert!(
            err.contains("embeddings.0.weight holds 4 values, the spec needs 3 x 2"),
            "{err}"
        );
    }

    /// A spec whose embeddings do not fit its features is refused.
    #[test]
    fn embeddings_that_do_not_fit_are_refused() {
        use crate::model::EmbeddingSpec;
        let e = |feature, rows, dim| EmbeddingSpec { feature, rows, dim };
        let base = ModelSpec::mlp(2, &[3], Activation::Relu, Task::Classification, 2);
        for (embeddings, want) in [
            (vec![e(2, 3, 2)], "embedding 0 reads feature 2 of 2"),
            (vec![e(0, 0, 2)], "a table of at least 1 x 1"),
            (vec![e(0, 3, 2), e(0, 4, 2)], "feature 0 is embedded twice"),
        ] {
            let err = base
                .clone()
                .with_embeddings(embeddings)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        // layer 0 not widened to the embeddings: the widths do not chain
        let mut s = base.clone();
        s.embeddings = vec![e(0, 3, 4)];
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("layer 0 takes 2 inputs but receives 5"),
            "{err}"
        );
        // fastai's rule, clamped to 2..=16
        let dims: Vec<usize> = [2, 10, 52, 1000, 100_000]
            .iter()
            .map(|&r| EmbeddingSpec::default_dim(r))
            .collect();
        assert_eq!(dims, [2, 6, 15, 16, 16]);
    }

    /// A batch large enough to be split over the cores gives, row for row, the bits that
    /// one row at a time gives.
    #[test]
    fn split_batches_give_the_bits_of_single_rows() {
        let spec = ModelSpec::mlp(3, &[5], Activation::Tanh, Task::Classification, 2);
        let mut w = TensorStore::default();
        let wave = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
        w.insert_f32("layers.0.weight", vec![3, 5], wave(15, 0.7));
        w.insert_f32("layers.0.bias", vec![5], wave(5, 1.3));
        w.insert_f32("layers.1.weight", vec![5, 2], wave(10, 0.9));
        w.insert_f32("layers.1.bias", vec![2], wave(2, 2.1));
        let n = 4 * PARALLEL_ROWS + 3;
        let x = wave(n * 3, 0.013);
        let all = forward(&spec, &w, &x, n).unwrap();
        assert_eq!(all.len(), n * 2);
        for (r, row) in x.chunks(3).enumerate() {
            let one = forward(&spec, &w, row, 1).unwrap();
            assert_eq!(one[..], all[r * 2..r * 2 + 2], "row {r}");
        }
    }

    /// Row [1, 2, 3, 6]: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5, so
    /// z = [-2, -1, 0, 3] / sqrt(3.5 + 1e-5); then times gamma plus beta.
    #[test]
    fn layer_norm_matches_hand_computation() {
        let mut h = vec![1.0f32, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0];
        layer_norm_rows(&mut h, 4, &[1.0, 2.0, 1.0, 0.5], &[0.0, 0.0, 0.1, -1.0]);
        let s = (3.5f32 + 1e-5).sqrt();
        let want = [-2.0 / s, -2.0 / s, 0.1, 1.5 / s - 1.0];
        for (a, b) in h[..4].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{h:?}");
        }
        // a constant row has variance 0: every value becomes beta
        assert_eq!(&h[4..], &[0.0, 0.0, 0.1, -1.0]);
        assert!((want[0] - -1.0690435).abs() < 1e-6);

        // through the whole forward pass: norm before the ReLU of the hidden layer
        let spec = ModelSpec::mlp(1, &[4], Activation::Relu, Task::Regression, 1)
            .with_norm(Some(Norm::Layer));
        let mut w = TensorStore::default();
        w.insert_f32("layers.0.weight", vec![1, 4], vec![1.0, 2.0, 3.0, 6.0]);
        w.insert_f32("layers.0.bias", vec![4], vec![0.0; 4]);
        w.insert_f32("layers.0.norm_weight", vec![4], vec![1.0; 4]);
        w.insert_f32("layers.0.norm_bias", vec![4], vec![0.0; 4]);
        w.insert_f32("layers.1.weight", vec![4, 1], vec![1.0; 4]);
        w.insert_f32("layers.1.bias", vec![1], vec![0.0]);
        // x = 1 and x = 2 give the same normalized row: relu([-2, -1, 0, 3] / s) sums to 3 / s
        let y = forward(&spec, &w, &[1.0, 2.0], 2).unwrap();
        for v in y {
            assert!((v - 3.0 / s).abs() < 1e-5, "{v}");
        }
        assert_eq!(spec.n_params(), 4 + 4 + 8 + 4 + 1);
        w.insert_f32("layers.0.norm_bias", vec![3], vec![0.0; 3]);
        assert!(forward(&spec, &w, &[1.0], 1).is_err());
        // spec.json: the key only where a layer has a norm; files without it still load
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json.matches("\"norm\":\"layer\"").count(), 1, "{json}");
        let old: LayerSpec =
            serde_json::from_str(r#"{"in_dim": 1, "out_dim": 2, "activation": "relu"}"#).unwrap();
        assert_eq!(old.norm, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("norm"));
    }

    #[test]
    fn leaky_relu_and_gelu_match_their_definitions() {
        assert_eq!(Activation::LeakyRelu.apply(2.0), 2.0);
        assert_eq!(Activation::LeakyRelu.apply(-2.0), -0.02);
        // GELU(1) = 0.5 (1 + erf(1/sqrt 2)) = 0.8413447; GELU(-1) = -0.15865526
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((Activation::Gelu.apply(-1.0) + 0.158_655_26).abs() < 1e-6);
        assert_eq!(Activation::Gelu.apply(0.0), 0.0);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let p = softmax_rows(&[0.0, 0.0, 1000.0, 0.0], 2);
        assert_eq!(p, vec![0.5, 0.5, 1.0, 0.0]);
    }

    #[test]
    fn dynamic_quantize_matches_onnx_definition() {
        // ONNX operator docs example: x = [0, 2, -3, -2.5, 1.34, 0.5]
        let (q, s, zp) = dynamic_quantize_u8(&[0.0, 2.0, -3.0, -2.5, 1.34, 0.5]);
        assert!((s - 0.019_607_844).abs() < 1e-9);
        assert_eq!(zp, 153);
        assert_eq!(q, vec![153, 255, 0, 26, 221, 179]);
    }

    #[test]
    fn asymmetric_weights_dequantize_within_half_scale() {
        // a skewed column: asymmetric uses all 256 levels on [-0.1, 1.0]
        let w: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 23) as f32) * 0.05 - 0.1)
            .collect();
        for per_channel in [true, false] {
            let (q, s, z) = quantize_weights_asymmetric(&w, 12, 5, per_channel);
            for (i, (&qv, &wv)) in q.iter().zip(&w).enumerate() {
                let c = if per_channel { i % 5 } else { 0 };
                let back = (qv as f32 - z[c]) * s[c];
                assert!((back - wv).abs() <= s[c] / 2.0 + 1e-6, "{back} vs {wv}");
            }
        }
        // the integer identity used by dense_u8_i8 equals the direct sum
        let (q, s, z) = quantize_weights_asymmetric(&w, 12, 5, true);
        let x: Vec<u8> = (0..24).map(|i| (i * 11 % 256) as u8).collect();
        let y = dense_u8_i8(
            &x,
            2,
            0.5,
            7,
            (&q, &s, &z),
            &[0.0; 5],
            12,
            5,
            Activation::Identity,
        );
        for r in 0..2 {
            for j in 0..5 {
                let direct: i32 = (0..12)
                    .map(|k| (x[r * 12 + k] as i32 - 7) * (q[k * 5 + j] as i32 - z[j] as i32))
                    .sum();
                assert_eq!(y[r * 5 + j], direct as f32 * (0.5 * s[j]));
            }
        }
    }

    #[test]
    fn symmetric_weights_dequantize_within_half_scale() {
        let w: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013)
            .collect();
        for per_channel in [true, false] {
            let (q, s) = quantize_weights_symmetric(&w, 12, 5, per_channel);
            for (i, (&qv, &wv)) in q.iter().zip(&w).enumerate() {
                let sc = if per_channel { s[i % 5] } else { s[0] };
                assert!((qv as f32 * sc - wv).abs() <= sc / 2.0 + 1e-7);
            }
        }
    }
}
