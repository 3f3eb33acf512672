//! int8 quantization: symmetric or asymmetric weights per output channel or per tensor,
//! activations
//! dynamic (range per batch at run time) or static (range calibrated on training rows).

use kiln_core::forward::{
    dense_f32, kernel_activation, norm_and_activate, norm_params, quantize_weights_asymmetric,
    quantize_weights_symmetric, u8_params,
};
use kiln_core::{Dataset, LayerSpec, ModelSpec, NativeModel, Quantization, TensorStore};

use crate::{OptimizeError, Result};

pub use kiln_core::Scheme;

/// Quantizes `model`'s weights: every `layers.<i>.weight` becomes i8 with a
/// `layers.<i>.weight_scale`; biases and norm parameters stay f32. [`Scheme::Static`] also records each
/// layer's input range, seen on the first `calibration_rows` rows of `calibration`
/// through the fp32 model: `layers.<i>.input_scale` and `layers.<i>.input_zero_point`.
pub fn quantize(
    model: &NativeModel,
    scheme: Scheme,
    per_channel: bool,
    calibration: Option<(&Dataset, usize)>,
) -> Result<NativeModel> {
    quantize_with(model, scheme, per_channel, true, calibration)
}

/// [`quantize`] with a choice of symmetric weights (zero point 0, `scale = max|w| / 63`: 7-bit weights, `kiln_core::forward::WEIGHT_LO`)
/// or asymmetric ones (`layers.<i>.weight_zero_point` per scale, the full int8 range over
/// [min, max]: finer steps for skewed weight distributions).
pub fn quantize_with(
    model: &NativeModel,
    scheme: Scheme,
    per_channel: bool,
    symmetric: bool,
    calibration: Option<(&Dataset, usize)>,
) -> Result<NativeModel> {
    if model.spec.quantization.is_some() {
        return Err(OptimizeError::Config(
            "the input model is already quantized".into(),
        ));
    }
    let mut weights = TensorStore::default();
    for (i, l) in model.spec.layers.iter().enumerate() {
        let w = model.weights.f32(&format!("layers.{i}.weight"))?;
        let (wq, scales) = if symmetric {
            quantize_weights_symmetric(w, l.in_dim, l.out_dim, per_channel)
        } else {
            let (q, s, z) = quantize_weights_asymmetric(w, l.in_dim, l.out_dim, per_channel);
            weights.insert_f32(&format!("layers.{i}.weight_zero_point"), vec![z.len()], z);
            (q, s)
        };
        weights.insert_i8(&format!("layers.{i}.weight"), vec![l.in_dim, l.out_dim], wq);
        weights.insert_f32(
            &format!("layers.{i}.weight_scale"),
            vec![scales.len()],
            scales,
        );
        let b = model.weights.f32(&format!("layers.{i}.bias"))?;
        weights.insert_f32(&format!("layers.{i}.bias"), vec![l.out_dim], b.to_vec());
        copy_norm(&model.weights, &mut weights, i, l)?;
    }
    model.spec.copy_embeddings(&model.weights, &mut weights)?;
    model.spec.copy_conv(&model.weights, &mut weights)?;
    if scheme == Scheme::Static {
        let Some((data, rows)) = calibration else {
            return Err(OptimizeError::Config(
                "static quantization needs calibration rows (the training split)".into(),
            ));
        };
        quantize_convs(model, data, rows, &mut weights)?;
        for (i, (scale, zp)) in calibrate(model, data, rows)?.into_iter().enumerate() {
            weights.insert_f32(&format!("layers.{i}.input_scale"), vec![1], vec![scale]);
            weights.insert_f32(
                &format!("layers.{i}.input_zero_point"),
                vec![1],
                vec![f32::from(zp)],
            );
        }
    }
    let spec = ModelSpec {
        quantization: Some(Quantization {
            dtype: kiln_core::WeightType::Int8,
            scheme,
            per_channel,
        }),
        ..model.spec.clone()
    };
    Ok(NativeModel::new(spec, weights)?)
}

/// fp16 weights: every layer's weight matrix rounded to half precision (nearest even),
/// kept as its f32 value so kiln's forward pass computes exactly what ONNX Runtime does
/// with the float16 initializers cast to float. Biases and norm parameters are not
/// rounded: they stay f32 (float initializers in the graph). Roughly halves the ONNX
/// size; the arithmetic stays fp32.
pub fn fp16(model: &NativeModel) -> Result<NativeModel> {
    if model.spec.quantization.is_some() {
        return Err(OptimizeError::Config(
            "the input model is already quantized".into(),
        ));
    }
    let round =
        |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() };
    let mut weights = TensorStore::default();
    for (i, l) in model.spec.layers.iter().enumerate() {
        let w = model.weights.f32(&format!("layers.{i}.weight"))?;
        weights.insert_f32(
            &format!("layers.{i}.weight"),
            vec![l.in_dim, l.out_dim],
            round(w),
        );
        // biases stay f32 (they are few, and float initializers in the graph)
        let b = model.weights.f32(&format!("layers.{i}.bias"))?;
        weights.insert_f32(&format!("layers.{i}.bias"), vec![l.out_dim], b.to_vec());
        copy_norm(&model.weights, &mut weights, i, l)?;
    }
    model.spec.copy_embeddings(&model.weights, &mut weights)?;
    model.spec.copy_conv(&model.weights, &mut weights)?;
    let spec = ModelSpec {
        quantization: Some(Quantization {
            dtype: kiln_core::WeightType::Fp16,
            scheme: kiln_core::Scheme::Weights,
            per_channel: false,
        }),
        ..model.spec.clone()
    };
    Ok(NativeModel::new(spec, weights)?)
}

/// uint8 scale and zero point of each layer's input: the min / max over the first `rows`
/// rows of `data`, run through the fp32 layers before it.
pub fn calibrate(model: &NativeModel, data: &Dataset, rows: usize) -> Result<Vec<(f32, u8)>> {
    let n = rows.min(data.n_rows());
    if n == 0 {
        return Err(OptimizeError::Config(
            "static quantization needs at least one calibration row".into(),
        ));
    }
    let mut h = kiln_core::forward::dense_input(
        &model.spec,
        &model.weights,
        &data.features[..n * data.n_features()],
        n,
    )?;
    let mut out = Vec::new();
    for (i, l) in model.spec.layers.iter().enumerate() {
        let (lo, hi) = h
            .iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        out.push(u8_params(lo, hi));
        let w = model.weights.f32(&format!("layers.{i}.weight"))?;
        let b = model.weights.f32(&format!("layers.{i}.bias"))?;
        h = dense_f32(&h, n, w, b, l.in_dim, l.out_dim, kernel_activation(l));
        norm_and_activate(l, &model.weights, i, &mut h)?;
    }
    Ok(out)
}

/// Static int8 convolutions: each convolution reading at least
/// [`kiln_core::conv::INT8_MIN_IN_CHANNELS`] channels gets symmetric int8 weights with
/// one scale per output channel (`conv.<i>.weight`, `conv.<i>.weight_scale`), and the
/// uint8 scale and zero point of its input and of its output (`conv.<i>.input_*`,
/// `conv.<i>.output_*`), calibrated on the first `rows` rows of `data` through the fp32
/// model. A ReLU convolution's output range starts at 0, so the uint8 clamp is the ReLU.
/// Narrower convolutions stay fp32.
fn quantize_convs(
    model: &NativeModel,
    data: &Dataset,
    rows: usize,
    weights: &mut TensorStore,
) -> Result<()> {
    let spec = &model.spec;
    let Some(image) = spec.image else {
        return Ok(());
    };
    let shapes = spec
        .conv_shapes()
        .map_err(|(i, m)| OptimizeError::Config(format!("conv[{i}]: {m}")))?;
    let n = rows.min(data.n_rows());
    let mut seen = vec![None; spec.conv.len()];
    kiln_core::conv::conv_features_traced(
        spec,
        &model.weights,
        &data.features[..n * data.n_features()],
        n,
        &mut |i, s| seen[i] = Some(s),
    )?;
    let mut inp = image;
    for (i, (step, out)) in spec.conv.iter().zip(shapes).enumerate() {
        if let (kiln_core::ConvStep::Conv2d { activation, .. }, Some(s)) = (step, seen[i])
            && inp.channels >= kiln_core::conv::INT8_MIN_IN_CHANNELS
        {
            let k2 = inp.channels * step.window(inp).kh * step.window(inp).kw;
            let key = format!("conv.{i}.weight");
            let w = model.weights.f32(&key)?;
            let (wq, scales) = quantize_weights_symmetric(w, k2, out.channels, true);
            weights.insert_i8(&key, vec![k2, out.channels], wq);
            weights.insert_f32(
                &format!("conv.{i}.weight_scale"),
                vec![out.channels],
                scales,
            );
            let (lo, hi) = s.pre_activation;
            let lo = if *activation == kiln_core::Activation::Relu {
                0.0
            } else {
                lo
            };
            for (name, (scale, zp)) in [
                ("input", u8_params(s.input.0, s.input.1)),
                ("output", u8_params(lo, hi)),
            ] {
                weights.insert_f32(&format!("conv.{i}.{name}_scale"), vec![1], vec![scale]);
                weights.insert_f32(
                    &format!("conv.{i}.{name}_zero_point"),
                    vec![1],
                    vec![f32::from(zp)],
                );
            }
        }
        inp = out;
    }
    Ok(())
}

/// Copies layer `i`'s norm parameters, when it has a norm: they stay f32 in every
/// compressed form (two values per unit, applied in float after the dequantized product).
fn copy_norm(from: &TensorStore, to: &mut TensorStore, i: usize, l: &LayerSpec) -> Result<()> {
    if l.norm.is_some() {
        let (g, b) = norm_params(from, i, l.out_dim)?;
        to.insert_f32(
            &format!("layers.{i}.norm_weight"),
            vec![l.out_dim],
            g.to_vec(),
        );
        to.insert_f32(
            &format!("layers.{i}.norm_bias"),
            vec![l.out_dim],
            b.to_vec(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Activation, Predictor, Task};

    fn model() -> NativeModel {
        let spec = ModelSpec::mlp(3, &[4], Activation::Relu, Task::Classification, 2);
        let mut w = TensorStore::default();
        let w0: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let w1: Vec<f32> = (0..8).map(|i| (i as f32 * 0.71).cos()).collect();
        w.insert_f32("layers.0.weight", vec![3, 4], w0);
        w.insert_f32("layers.0.bias", vec![4], vec![0.1, -0.1, 0.0, 0.05]);
        w.insert_f32("layers.1.weight", vec![4, 2], w1);
        w.insert_f32("layers.1.bias", vec![2], vec![0.0, 0.0]);
        NativeModel::new(spec, w).unwrap()
    }

    fn data(n: usize) -> Dataset {
        Dataset {
            feature_names: vec!["a".into(), "b".into(), "c".into()],
            target: "y".into(),
            features: (0..n * 3)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
                .collect(),
            labels: vec![0; n],
            values: vec![],
        }
    }

    #[test]
    fn quantized_weights_are_int8_within_half_a_step() {
        let m = model();
        for per_channel in [true, false] {
            let q = quantize(&m, Scheme::Dynamic, per_channel, None).unwrap();
            let wq = q.weights.i8("layers.0.weight").unwrap();
            let s = q.weights.f32("layers.0.weight_scale").unwrap();
            assert_eq!(s.len(), if per_channel { 4 } else { 1 });
            for (i, w) in m.weights.f32("layers.0.weight").unwrap().iter().enumerate() {
                let sc = s[if per_channel { i % 4 } else { 0 }];
                assert!((wq[i] as f32 * sc - w).abs() <= sc / 2.0 + 1e-7);
            }
        }
        // int8 data is a quarter of fp32's weights plus the scales
        let q = quantize(&m, Scheme::Dynamic, true, None).unwrap();
        assert_eq!(q.weights.data_bytes(), 12 + 8 + 4 * (4 + 2) + 4 * (4 + 2));
        let e = quantize(&q, Scheme::Dynamic, true, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the input model is already quantized"), "{e}");
        let e = fp16(&q).unwrap_err().to_string();
        assert!(e.contains("the input model is already quantized"), "{e}");
    }

    /// A model with layer norm: int8 (dynamic and static) and fp16 keep gamma and beta as
    /// f32, the quantized outputs stay close to fp32's, and structured pruning refuses.
    #[test]
    fn norm_parameters_stay_float_through_quantization() {
        let mut m = model();
        m.spec = m.spec.clone().with_norm(Some(kiln_core::Norm::Layer));
        let (g, b) = (vec![1.5f32, 0.5, 1.0, 2.0], vec![0.1f32, -0.2, 0.0, 0.3]);
        m.weights
            .insert_f32("layers.0.norm_weight", vec![4], g.clone());
        m.weights
            .insert_f32("layers.0.norm_bias", vec![4], b.clone());
        let d = data(20);
        let mut fm = m.clone();
        let want = fm.predict(&d.features, 20).unwrap().logits;
        // largest logit error of each on these 20 rows: int8 with 7-bit weights (measured
        // 0.030 dynamic) and fp16 (0.0020, weights rounded to 11 significant bits)
        for (q, bound) in [
            (quantize(&m, Scheme::Dynamic, true, None).unwrap(), 0.06),
            (
                quantize(&m, Scheme::Static, true, Some((&d, 20))).unwrap(),
                0.06,
            ),
            (fp16(&m).unwrap(), 0.003),
        ] {
            assert_eq!(q.weights.f32("layers.0.norm_weight").unwrap(), &g[..]);
            assert_eq!(q.weights.f32("layers.0.norm_bias").unwrap(), &b[..]);
            let got = q.clone().predict(&d.features, 20).unwrap().logits;
            for (x, y) in got.iter().zip(&want) {
                assert!((x - y).abs() < bound, "{x} vs {y}");
            }
            // and they are not fp32 itself
            assert_ne!(got, want);
        }
        let e = crate::prune::units_to_keep(&m, &[2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer norm"), "{e}");
    }

    #[test]
    fn fp16_weights_are_the_nearest_half_values() {
        let m = model();
        let h = fp16(&m).unwrap();
        for (a, b) in m
            .weights
            .f32("layers.0.weight")
            .unwrap()
            .iter()
            .zip(h.weights.f32("layers.0.weight").unwrap())
        {
            // within half an f16 ulp (2^-11 relative), and exactly an f16 value
            assert!(
                (a - b).abs() <= a.abs() * 2f32.powi(-11) + 1e-8,
                "{a} vs {b}"
            );
            assert_eq!(half::f16::from_f32(*b).to_f32(), *b);
        }
        assert_eq!(
            h.spec.quantization.as_ref().unwrap().dtype,
            kiln_core::WeightType::Fp16
        );
    }

    #[test]
    fn static_calibration_records_each_layers_input_range() {
        let m = model();
        let mut d = data(20);
        // rows 10.. are 3 times larger: a calibration that reads past its 10 rows sees
        // another range
        for v in &mut d.features[30..] {
            *v *= 3.0;
        }
        let q = quantize(&m, Scheme::Static, true, Some((&d, 10))).unwrap();
        // layer 0 sees the raw features of the first 10 rows: min -1, max 1
        let (lo, hi) = (-1.0f32, 1.0f32);
        let s0 = q.weights.f32("layers.0.input_scale").unwrap()[0];
        let z0 = q.weights.f32("layers.0.input_zero_point").unwrap()[0];
        assert_eq!(s0, (hi - lo) / 255.0);
        assert_eq!(s0, 2.0 / 255.0);
        assert_eq!(z0, (1.0f32 / s0).round_ties_even());
        // layer 1 sees ReLU outputs of the first 10 rows: min 0 (zero point 0), max the
        // largest hidden activation, worked out here from the fp32 weights
        let (w0, b0) = (
            m.weights.f32("layers.0.weight").unwrap(),
            m.weights.f32("layers.0.bias").unwrap(),
        );
        let mut h_max = 0.0f32;
        for r in 0..10 {
            for j in 0..4 {
                let mut a = b0[j];
                for k in 0..3 {
                    a += d.features[r * 3 + k] * w0[k * 4 + j];
                }
                h_max = h_max.max(a.max(0.0));
            }
        }
        assert!(h_max > 0.0);
        let s1 = q.weights.f32("layers.1.input_scale").unwrap()[0];
        assert!(
            (s1 - h_max / 255.0).abs() <= 1e-6 * s1,
            "{s1} vs {}",
            h_max / 255.0
        );
        assert_eq!(q.weights.f32("layers.1.input_zero_point").unwrap()[0], 0.0);
        // on the calibration rows static and dynamic ranges agree for layer 0, so the
        // outputs are close to fp32
        let mut qm = q.clone();
        let mut fm = m.clone();
        let a = qm.predict(&d.features[..30], 10).unwrap();
        let b = fm.predict(&d.features[..30], 10).unwrap();
        for (x, y) in a.logits.iter().zip(&b.logits) {
            assert!((x - y).abs() < 0.05, "{x} vs {y}");
        }
        let e = quantize(&m, Scheme::Static, true, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("static quantization needs calibration rows (the training split)"),
            "{e}"
        );
    }
}
