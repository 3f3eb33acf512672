//! Structured pruning of convolutions: whole output channels removed, so the file and
//! the compute shrink. A channel goes with its filter and bias, with its entries in the
//! batch norms between it and its reader (gamma, beta, running statistics), and with
//! every weight that reads it downstream — the next convolution's input rows for that
//! channel, or, after the last convolution, the first dense layer's rows of that
//! channel's positions.

#[cfg(test)]
use kiln_core::TensorStore;
use kiln_core::{ConvStep, ImageShape, ModelSpec, NativeModel};

use crate::{OptimizeError, Result};

/// What reads convolution `i`'s output channels: the next convolution (by step index),
/// or the first dense layer with the image's shape after the last step.
enum Reader {
    Conv(usize),
    Dense(ImageShape),
}

/// For each step, its input shape; and for each convolution, what reads its channels.
fn readers(spec: &ModelSpec) -> Result<Vec<Option<Reader>>> {
    let shapes = spec
        .conv_shapes()
        .map_err(|(i, m)| OptimizeError::Config(format!("conv[{i}]: {m}")))?;
    let last = shapes.last().copied();
    Ok((0..spec.conv.len())
        .map(|i| {
            if !matches!(spec.conv[i], ConvStep::Conv2d { .. }) {
                return None;
            }
            let next =
                (i + 1..spec.conv.len()).find(|&j| matches!(spec.conv[j], ConvStep::Conv2d { .. }));
            Some(match next {
                Some(j) => Reader::Conv(j),
                None => Reader::Dense(last.unwrap_or(ImageShape {
                    channels: 0,
                    height: 0,
                    width: 0,
                })),
            })
        })
        .collect())
}

/// The input shape of each convolutional step.
fn input_shapes(spec: &ModelSpec) -> Result<Vec<ImageShape>> {
    let shapes = spec
        .conv_shapes()
        .map_err(|(i, m)| OptimizeError::Config(format!("conv[{i}]: {m}")))?;
    Ok(spec
        .image
        .into_iter()
        .chain(shapes)
        .take(spec.conv.len())
        .collect())
}

/// The batch norm steps between convolution `i` and what reads its channels (the next
/// convolution, or the end of the steps).
fn batch_norms_after(spec: &ModelSpec, i: usize) -> Vec<usize> {
    spec.conv
        .iter()
        .enumerate()
        .skip(i + 1)
        .take_while(|(_, s)| !matches!(s, ConvStep::Conv2d { .. }))
        .filter(|(_, s)| matches!(s, ConvStep::BatchNorm { .. }))
        .map(|(j, _)| j)
        .collect()
}

/// What batch norm `j` does to each channel's values at inference: the factor it scales
/// them by (`gamma / sqrt(var + eps)`) and its shift `beta`.
fn batch_norm_gain(model: &NativeModel, j: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let gamma = model.weights.f32(&format!("conv.{j}.weight"))?;
    let beta = model.weights.f32(&format!("conv.{j}.bias"))?;
    let var = model.weights.f32(&format!("conv.{j}.running_var"))?;
    let eps = f64::from(kiln_core::conv::BATCH_NORM_EPS);
    Ok((
        gamma
            .iter()
            .zip(var)
            .map(|(&g, &v)| f64::from(g) / (f64::from(v) + eps).sqrt())
            .collect(),
        beta.iter().map(|&b| f64::from(b)).collect(),
    ))
}

/// Per convolution (by step index; `None` for the other steps), the score of each output
/// channel: the norm of its filter and bias — scaled by the gain of any batch norm after
/// it, plus that batch norm's shift — times the norm of the weights reading it.
pub fn channel_scores(model: &NativeModel) -> Result<Vec<Option<Vec<f64>>>> {
    let spec = &model.spec;
    let inputs = input_shapes(spec)?;
    let readers = readers(spec)?;
    let mut out = Vec::with_capacity(spec.conv.len());
    for (i, reader) in readers.iter().enumerate() {
        let (Some(reader), ConvStep::Conv2d { channels, .. }) = (reader, spec.conv[i]) else {
            out.push(None);
            continue;
        };
        let w = model.weights.f32(&format!("conv.{i}.weight"))?;
        let b = model.weights.f32(&format!("conv.{i}.bias"))?;
        let k2 = w.len() / channels.max(1);
        let (rw, per_channel, width) = reads(model, reader, &inputs)?;
        let norms = batch_norms_after(spec, i)
            .into_iter()
            .map(|j| batch_norm_gain(model, j))
            .collect::<Result<Vec<_>>>()?;
        let scores = (0..channels)
            .map(|c| {
                let inc: f64 = (0..k2)
                    .map(|r| f64::from(w[r * channels + c]).powi(2))
                    .sum::<f64>()
                    + f64::from(b[c]).powi(2);
                let size = norms.iter().fold(inc.sqrt(), |size, (gain, shift)| {
                    gain.get(c).map_or(size, |g| size * g.abs())
                        + shift.get(c).map_or(0.0, |b| b.abs())
                });
                let out: f64 = rw[c * per_channel * width..(c + 1) * per_channel * width]
                    .iter()
                    .map(|&v| f64::from(v).powi(2))
                    .sum();
                size * out.sqrt()
            })
            .collect();
        out.push(Some(scores));
    }
    Ok(out)
}

/// The weight that reads a convolution's channels, how many of its rows each channel
/// owns, and its row width.
fn reads<'a>(
    model: &'a NativeModel,
    reader: &Reader,
    inputs: &[ImageShape],
) -> Result<(&'a [f32], usize, usize)> {
    Ok(match *reader {
        Reader::Conv(j) => {
            let ConvStep::Conv2d { channels, .. } = model.spec.conv[j] else {
                return Err(OptimizeError::Config(format!(
                    "conv[{j}] is not a convolution"
                )));
            };
            let win = model.spec.conv[j].window(inputs[j]);
            (
                model.weights.f32(&format!("conv.{j}.weight"))?,
                win.kh * win.kw,
                channels,
            )
        }
        Reader::Dense(shape) => {
            let out = model.spec.layers[0].out_dim;
            (
                model.weights.f32("layers.0.weight")?,
                shape.height * shape.width,
                out,
            )
        }
    })
}

/// Each convolution's output channels (`None` for the other steps).
pub fn conv_widths(spec: &ModelSpec) -> Vec<Option<usize>> {
    spec.conv
        .iter()
        .map(|s| match *s {
            ConvStep::Conv2d { channels, .. } => Some(channels),
            _ => None,
        })
        .collect()
}

/// The channels of each convolution to keep so that `keep[i]` remain (at least one):
/// the highest scores, in their original order (ties: the lower index stays). `None` for
/// the other steps.
pub fn channels_to_keep(
    model: &NativeModel,
    keep: &[Option<usize>],
) -> Result<Vec<Option<Vec<usize>>>> {
    let scores = channel_scores(model)?;
    if keep.len() != scores.len() {
        return Err(OptimizeError::Config(format!(
            "{} channel counts given for {} convolutional steps",
            keep.len(),
            scores.len()
        )));
    }
    Ok(scores
        .into_iter()
        .zip(keep)
        .map(|(scores, keep)| {
            scores.map(|s| {
                let n = keep.unwrap_or(s.len()).clamp(1, s.len());
                let mut order: Vec<usize> = (0..s.len()).collect();
                order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
                let mut kept = order[..n].to_vec();
                kept.sort_unstable();
                kept
            })
        })
        .collect())
}

/// Removes every output channel of each convolution not in `kept[i]`: its filter column
/// and bias, its batch norm entries, and the rows that read it downstream. The result
/// computes what the model computes with those channels' filters, biases and outgoing
/// weights set to zero (whatever a removed channel then holds, nothing reads it).
pub fn remove_channels(model: &NativeModel, kept: &[Option<Vec<usize>>]) -> Result<NativeModel> {
    let spec = &model.spec;
    if kept.len() != spec.conv.len() {
        return Err(OptimizeError::Config(format!(
            "{} channel lists given for {} convolutional steps",
            kept.len(),
            spec.conv.len()
        )));
    }
    let inputs = input_shapes(spec)?;
    let readers = readers(spec)?;
    let mut store = model.weights.clone();
    let mut new = spec.clone();
    for (i, keep) in kept.iter().enumerate() {
        let (Some(keep), ConvStep::Conv2d { channels, .. }, Some(reader)) =
            (keep, spec.conv[i], &readers[i])
        else {
            continue;
        };
        if keep.is_empty() || keep.iter().any(|&c| c >= channels) {
            return Err(OptimizeError::Config(format!(
                "conv[{i}]: keep 1 to {channels} of its channels, each below {channels}"
            )));
        }
        // the filters: columns of [k2, channels], read from the store (an earlier
        // convolution may already have removed rows of this one)
        let wk = format!("conv.{i}.weight");
        let w = store.f32(&wk)?.to_vec();
        let k2 = w.len() / channels;
        let nw: Vec<f32> = (0..k2)
            .flat_map(|r| keep.iter().map(move |&c| (r, c)))
            .map(|(r, c)| w[r * channels + c])
            .collect();
        store.insert_f32(&wk, vec![k2, keep.len()], nw);
        let bk = format!("conv.{i}.bias");
        let b = store.f32(&bk)?.to_vec();
        store.insert_f32(&bk, vec![keep.len()], keep.iter().map(|&c| b[c]).collect());
        if let ConvStep::Conv2d { channels, .. } = &mut new.conv[i] {
            *channels = keep.len();
        }
        // the channel's entries in the batch norms before its reader
        for j in batch_norms_after(spec, i) {
            for name in ["weight", "bias", "running_mean", "running_var"] {
                let key = format!("conv.{j}.{name}");
                let v = store.f32(&key)?.to_vec();
                if v.len() != channels {
                    return Err(OptimizeError::Config(format!(
                        "{key} holds {} values for {channels} channels",
                        v.len()
                    )));
                }
                store.insert_f32(&key, vec![keep.len()], keep.iter().map(|&c| v[c]).collect());
            }
        }
        // the rows reading the channel downstream
        let (key, per_channel) = match *reader {
            Reader::Conv(j) => {
                let win = spec.conv[j].window(inputs[j]);
                (format!("conv.{j}.weight"), win.kh * win.kw)
            }
            Reader::Dense(shape) => ("layers.0.weight".to_string(), shape.height * shape.width),
        };
        let r = store.f32(&key)?.to_vec();
        let width = r.len() / (channels * per_channel).max(1);
        let mut nr = Vec::with_capacity(keep.len() * per_channel * width);
        for &c in keep {
            nr.extend_from_slice(&r[c * per_channel * width..(c + 1) * per_channel * width]);
        }
        store.insert_f32(&key, vec![keep.len() * per_channel, width], nr);
    }
    let image = new
        .image
        .ok_or_else(|| OptimizeError::Config("the model reads no image".into()))?;
    let conv = new.conv.clone();
    new = new.with_conv(image, conv);
    new.validate()?;
    Ok(NativeModel::new(new, store)?)
}

/// The store with removed channels' filters, biases and outgoing weights zeroed (shapes
/// unchanged): what [`remove_channels`] computes, for tests.
#[cfg(test)]
pub(crate) fn zero_channels(
    model: &NativeModel,
    kept: &[Option<Vec<usize>>],
) -> Result<TensorStore> {
    let spec = &model.spec;
    let inputs = input_shapes(spec)?;
    let readers = readers(spec)?;
    let mut store = model.weights.clone();
    for (i, keep) in kept.iter().enumerate() {
        let (Some(keep), ConvStep::Conv2d { channels, .. }, Some(reader)) =
            (keep, spec.conv[i], &readers[i])
        else {
            continue;
        };
        for c in (0..channels).filter(|c| !keep.contains(c)) {
            let w = store.f32_mut(&format!("conv.{i}.weight"))?;
            let k2 = w.len() / channels;
            for r in 0..k2 {
                w[r * channels + c] = 0.0;
            }
            store.f32_mut(&format!("conv.{i}.bias"))?[c] = 0.0;
            let (key, per_channel) = match *reader {
                Reader::Conv(j) => {
                    let win = spec.conv[j].window(inputs[j]);
                    (format!("conv.{j}.weight"), win.kh * win.kw)
                }
                Reader::Dense(shape) => ("layers.0.weight".to_string(), shape.height * shape.width),
            };
            let r = store.f32_mut(&key)?;
            let width = r.len() / (channels * per_channel);
            r[c * per_channel * width..(c + 1) * per_channel * width]
                .iter_mut()
                .for_each(|v| *v = 0.0);
        }
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Activation, Predictor, Task};

    /// A 2 x 8 x 8 image: a padded ReLU convolution to 6, a max pool, a strided GELU
    /// convolution to 5, a dropout, an average pool and a 1 x 1 sigmoid convolution to 4,
    /// then 3 units and 3 classes.
    fn model() -> NativeModel {
        model_with(false)
    }

    /// [`model`], or with `batch_norm` the first convolution without its ReLU and a batch
    /// norm (ReLU) after it, and a batch norm (identity) after the last one.
    fn model_with(batch_norm: bool) -> NativeModel {
        let conv = |channels, kernel, stride, padding, activation| ConvStep::Conv2d {
            channels,
            kernel,
            stride,
            padding,
            activation,
        };
        let image = ImageShape {
            channels: 2,
            height: 8,
            width: 8,
        };
        let first = if batch_norm {
            Activation::Identity
        } else {
            Activation::Relu
        };
        let mut steps = vec![
            conv(6, 3, 1, 1, first),
            ConvStep::MaxPool {
                kernel: 2,
                stride: None,
            },
            conv(5, 3, 2, 1, Activation::Gelu),
            ConvStep::Dropout { rate: 0.2 },
            ConvStep::AvgPool {
                kernel: 2,
                stride: Some(1),
            },
            conv(4, 1, 1, 0, Activation::Sigmoid),
        ];
        if batch_norm {
            steps.insert(
                1,
                ConvStep::BatchNorm {
                    activation: Activation::Relu,
                },
            );
            steps.push(ConvStep::BatchNorm {
                activation: Activation::Identity,
            });
        }
        let spec = ModelSpec::mlp(128, &[3], Activation::Relu, Task::Classification, 3)
            .with_conv(image, steps);
        spec.validate().unwrap();
        let mut w = TensorStore::default();
        let mut k = 0u32;
        let mut next = || {
            k += 1;
            (k.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0 - 1.0
        };
        let mut channels = 2;
        for (i, step) in spec.conv.iter().enumerate() {
            if let ConvStep::Conv2d {
                channels: out,
                kernel,
                ..
            } = *step
            {
                let k2 = channels * kernel * kernel;
                w.insert_f32(
                    &format!("conv.{i}.weight"),
                    vec![k2, out],
                    (0..k2 * out).map(|_| next()).collect(),
                );
                w.insert_f32(
                    &format!("conv.{i}.bias"),
                    vec![out],
                    (0..out).map(|_| next() * 0.1).collect(),
                );
                channels = out;
            }
            if let ConvStep::BatchNorm { .. } = *step {
                let c = channels;
                let mut v =
                    |scale: f32, shift: f32| (0..c).map(|_| next() * scale + shift).collect();
                let (gamma, beta) = (v(0.5, 1.0), v(0.2, 0.0));
                let (mean, var) = (v(0.3, 0.0), v(0.4, 1.0));
                for (name, values) in [
                    ("weight", gamma),
                    ("bias", beta),
                    ("running_mean", mean),
                    ("running_var", var),
                ] {
                    w.insert_f32(&format!("conv.{i}.{name}"), vec![c], values);
                }
            }
        }
        for (i, l) in spec.layers.iter().enumerate() {
            w.insert_f32(
                &format!("layers.{i}.weight"),
                vec![l.in_dim, l.out_dim],
                (0..l.in_dim * l.out_dim).map(|_| next() * 0.3).collect(),
            );
            w.insert_f32(
                &format!("layers.{i}.bias"),
                vec![l.out_dim],
                vec![0.05; l.out_dim],
            );
        }
        NativeModel::new(spec, w).unwrap()
    }

    /// Removing half of every convolution's channels gives a smaller network that
    /// computes exactly what the full one computes with those channels' filters, biases
    /// and outgoing weights zeroed; the highest-scoring channels stay, in order.
    #[test]
    fn removed_channels_compute_the_zeroed_model() {
        let m = model();
        let half: Vec<Option<usize>> = conv_widths(&m.spec)
            .iter()
            .map(|w| w.map(|w| w - w / 2))
            .collect();
        assert_eq!(half, [Some(3), None, Some(3), None, None, Some(2)]);
        let kept = channels_to_keep(&m, &half).unwrap();
        assert_eq!(
            kept.iter()
                .map(|k| k.as_ref().map(Vec::len))
                .collect::<Vec<_>>(),
            [Some(3), None, Some(3), None, None, Some(2)]
        );
        let scores = channel_scores(&m).unwrap();
        for (k, s) in kept.iter().zip(&scores) {
            if let (Some(k), Some(s)) = (k, s) {
                let lowest_kept = k.iter().map(|&c| s[c]).fold(f64::INFINITY, f64::min);
                for c in (0..s.len()).filter(|c| !k.contains(c)) {
                    assert!(s[c] <= lowest_kept, "{s:?} {k:?}");
                }
            }
        }
        let small = remove_channels(&m, &kept).unwrap();
        assert!(small.spec.n_params() < m.spec.n_params());
        // the last step is 1 x 1: the dense layer reads 4 channels, now 2
        assert_eq!(
            (m.spec.layers[0].in_dim, small.spec.layers[0].in_dim),
            (4, 2)
        );
        assert_eq!(
            conv_widths(&small.spec),
            [Some(3), None, Some(3), None, None, Some(2)]
        );
        computes_the_zeroed_model(&m, &kept, &small);
        let e = remove_channels(&m, &[None]).unwrap_err().to_string();
        assert!(
            e.contains("1 channel lists given for 6 convolutional steps"),
            "{e}"
        );
    }

    /// With batch norms after the first and the last convolution, a removed channel's
    /// batch norm entries go with it: the smaller network still computes the zeroed one,
    /// and each batch norm holds as many channels as the convolution before it.
    #[test]
    fn batch_norm_channels_go_with_their_convolution() {
        let m = model_with(true);
        let half: Vec<Option<usize>> = conv_widths(&m.spec)
            .iter()
            .map(|w| w.map(|w| w - w / 2))
            .collect();
        let kept = channels_to_keep(&m, &half).unwrap();
        let small = remove_channels(&m, &kept).unwrap();
        for (j, c) in [(1, 3), (7, 2)] {
            for name in ["weight", "bias", "running_mean", "running_var"] {
                let v = small.weights.f32(&format!("conv.{j}.{name}")).unwrap();
                assert_eq!(v.len(), c, "conv.{j}.{name}");
            }
        }
        // the kept entries are the kept channels' own
        let k0 = kept[0].as_ref().unwrap();
        let gamma = m.weights.f32("conv.1.weight").unwrap();
        assert_eq!(
            small.weights.f32("conv.1.weight").unwrap(),
            k0.iter().map(|&c| gamma[c]).collect::<Vec<_>>()
        );
        computes_the_zeroed_model(&m, &kept, &small);
    }

    /// `small` (`m` with the channels not in `kept` removed) gives the outputs of `m`
    /// with those channels' filters, biases and outgoing weights zeroed, and pruning
    /// changed the outputs (the removed channels mattered).
    fn computes_the_zeroed_model(
        m: &NativeModel,
        kept: &[Option<Vec<usize>>],
        small: &NativeModel,
    ) {
        let mut zeroed = NativeModel::new(m.spec.clone(), zero_channels(m, kept).unwrap()).unwrap();
        let x: Vec<f32> = (0..5 * 128)
            .map(|i| ((i * 37 % 101) as f32) / 101.0)
            .collect();
        let a = small.clone().predict(&x, 5).unwrap().logits;
        let b = zeroed.predict(&x, 5).unwrap().logits;
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        let full = m.clone().predict(&x, 5).unwrap().logits;
        assert!(full.iter().zip(&a).any(|(p, q)| (p - q).abs() > 1e-3));
    }
}
