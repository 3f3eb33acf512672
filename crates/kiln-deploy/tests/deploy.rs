//! Tests of kiln-deploy against the real ONNX Runtime: the writer reproduces a forward pass
//! worked by hand, fp32 and int8 exports match kiln's reference within 1e-5, a perturbed
//! weight fails the parity gate and the stage, the stage writes a reproducible bundle, and
//! the official onnx checker and Python onnxruntime accept every kind of file (fp32, int8
//! dynamic, int8 static, int8 with asymmetric weights, fp16 weights).

use kiln_core::forward::quantize_weights_symmetric;
use kiln_core::{
    Activation, Dataset, ModelSpec, NativeModel, Predictor, Quantization, Schema, Task, TensorStore,
};
use kiln_deploy::onnx::{ModelProto, dtype};
use kiln_deploy::{
    Config, DeployError, ExportMeta, OrtModel, Parity, Variant, check_model_parity, check_parity,
    decode, export,
};
use prost::Message;
use std::path::Path;

fn meta(k: usize) -> ExportMeta {
    ExportMeta {
        class_labels: (0..k).map(|i| format!("c{i}")).collect(),
        ..Default::default()
    }
}

/// 3 -> 4 (relu) -> 2 with small weights, so the forward pass can be worked by hand.
fn small() -> NativeModel {
    let spec = ModelSpec::mlp(3, &[4], Activation::Relu, Task::Classification, 2);
    let mut w = TensorStore::default();
    #[rustfmt::skip]
    w.insert_f32("layers.0.weight", vec![3, 4], vec![
        1.0, -1.0,  0.5,  0.0,
        0.0,  2.0, -0.5,  1.0,
        1.0,  0.0,  0.0, -1.0,
    ]);
    w.insert_f32("layers.0.bias", vec![4], vec![0.0, 0.5, 0.0, 0.25]);
    #[rustfmt::skip]
    w.insert_f32("layers.1.weight", vec![4, 2], vec![
        1.0,  0.0,
        0.0,  1.0,
        2.0, -1.0,
       -1.0,  0.5,
    ]);
    w.insert_f32("layers.1.bias", vec![2], vec![0.1, -0.1]);
    NativeModel::new(spec, w).unwrap()
}

/// xorshift64 values in [-1, 1).
fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A deterministic pseudo-random MLP and `rows` rows of data in [0, 1).
fn random(
    seed: u64,
    in_dim: usize,
    hidden: &[usize],
    k: usize,
    rows: usize,
) -> (NativeModel, Vec<f32>) {
    let spec = ModelSpec::mlp(in_dim, hidden, Activation::Relu, Task::Classification, k);
    let mut next = rng(seed);
    let mut w = TensorStore::default();
    for (i, l) in spec.layers.iter().enumerate() {
        let s = 2.0 / (l.in_dim as f32).sqrt();
        w.insert_f32(
            &format!("layers.{i}.weight"),
            vec![l.in_dim, l.out_dim],
            (0..l.in_dim * l.out_dim).map(|_| next() * s).collect(),
        );
        w.insert_f32(
            &format!("layers.{i}.bias"),
            vec![l.out_dim],
            (0..l.out_dim).map(|_| next() * 0.1).collect(),
        );
    }
    let x = (0..rows * in_dim).map(|_| (next() + 1.0) / 2.0).collect();
    (NativeModel::new(spec, w).unwrap(), x)
}

/// The int8 (dynamic, per-channel) variant of an fp32 model, as kiln-optimize makes it.
fn int8(m: &NativeModel) -> NativeModel {
    let mut w = TensorStore::default();
    for (i, l) in m.spec.layers.iter().enumerate() {
        let (q, s) = quantize_weights_symmetric(
            m.weights.f32(&format!("layers.{i}.weight")).unwrap(),
            l.in_dim,
            l.out_dim,
            true,
        );
        w.insert_i8(&format!("layers.{i}.weight"), vec![l.in_dim, l.out_dim], q);
        w.insert_f32(&format!("layers.{i}.weight_scale"), vec![s.len()], s);
        w.insert_f32(
            &format!("layers.{i}.bias"),
            vec![l.out_dim],
            m.weights.f32(&format!("layers.{i}.bias")).unwrap().to_vec(),
        );
        // layer norm parameters stay f32
        for key in ["norm_weight", "norm_bias"] {
            let name = format!("layers.{i}.{key}");
            if let Ok(v) = m.weights.f32(&name) {
                w.insert_f32(&name, vec![l.out_dim], v.to_vec());
            }
        }
    }
    let spec = ModelSpec {
        quantization: Some(Quantization {
            dtype: kiln_core::WeightType::Int8,
            scheme: kiln_core::Scheme::Dynamic,
            per_channel: true,
        }),
        ..m.spec.clone()
    };
    NativeModel::new(spec, w).unwrap()
}

/// Static int8: the dynamic model's weights plus each layer's input range seen on the
/// first `rows` rows of `x` through the fp32 layers (rows after them may fall outside it
/// and saturate, as they do in ONNX Runtime's QuantizeLinear).
fn int8_static(m: &NativeModel, x: &[f32], rows: usize) -> NativeModel {
    let q = int8(m);
    let mut w = q.weights.clone();
    let mut h = x[..rows * m.spec.input_dim].to_vec();
    for (i, l) in m.spec.layers.iter().enumerate() {
        let (lo, hi) = h
            .iter()
            .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
        let (s, z) = kiln_core::forward::u8_params(lo, hi);
        w.insert_f32(&format!("layers.{i}.input_scale"), vec![1], vec![s]);
        w.insert_f32(
            &format!("layers.{i}.input_zero_point"),
            vec![1],
            vec![f32::from(z)],
        );
        h = kiln_core::forward::dense_f32(
            &h,
            rows,
            m.weights.f32(&format!("layers.{i}.weight")).unwrap(),
            m.weights.f32(&format!("layers.{i}.bias")).unwrap(),
            l.in_dim,
            l.out_dim,
            l.activation,
        );
    }
    let mut spec = q.spec.clone();
    spec.quantization.as_mut().unwrap().scheme = kiln_core::Scheme::Static;
    NativeModel::new(spec, w).unwrap()
}

/// Asymmetric int8 weights (a zero point per scale), dynamic activations.
fn int8_asym(m: &NativeModel, per_channel: bool) -> NativeModel {
    let q = int8(m);
    let mut w = q.weights.clone();
    for (i, l) in m.spec.layers.iter().enumerate() {
        let (wq, s, z) = kiln_core::forward::quantize_weights_asymmetric(
            m.weights.f32(&format!("layers.{i}.weight")).unwrap(),
            l.in_dim,
            l.out_dim,
            per_channel,
        );
        w.insert_i8(&format!("layers.{i}.weight"), vec![l.in_dim, l.out_dim], wq);
        w.insert_f32(&format!("layers.{i}.weight_scale"), vec![s.len()], s);
        w.insert_f32(&format!("layers.{i}.weight_zero_point"), vec![z.len()], z);
    }
    NativeModel::new(q.spec.clone(), w).unwrap()
}

/// fp16 weights: rounded to half precision, kept as f32 values; biases unchanged.
fn fp16(m: &NativeModel) -> NativeModel {
    let mut w = m.weights.clone();
    for (i, l) in m.spec.layers.iter().enumerate() {
        let k = format!("layers.{i}.weight");
        let v: Vec<f32> = w
            .f32(&k)
            .unwrap()
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        w.insert_f32(&k, vec![l.in_dim, l.out_dim], v);
    }
    let spec = ModelSpec {
        quantization: Some(Quantization {
            dtype: kiln_core::WeightType::Fp16,
            scheme: kiln_core::Scheme::Weights,
            per_channel: false,
        }),
        ..m.spec.clone()
    };
    NativeModel::new(spec, w).unwrap()
}

fn schema_and_test(m: &NativeModel, x: Vec<f32>) -> (Schema, Dataset) {
    let names: Vec<String> = (0..m.spec.input_dim).map(|i| format!("f{i}")).collect();
    let k = m.spec.output_dim();
    let schema = Schema {
        version: 1,
        input_columns: names.clone(),
        feature_names: names.clone(),
        target: "y".into(),
        task: Task::Classification,
        image: None,
        class_labels: (0..k).map(|i| format!("c{i}")).collect(),
        transforms: vec![],
    };
    let rows = x.len() / m.spec.input_dim;
    let test = Dataset {
        feature_names: names,
        target: "y".into(),
        features: x,
        labels: (0..rows).map(|i| (i % k) as u32).collect(),
        values: vec![],
    };
    (schema, test)
}

/// The variants a deploy stage gets after int8 compression: `fp32` and `int8`.
fn fp32_and_int8(m: &NativeModel, q: NativeModel) -> [Variant; 2] {
    [
        Variant {
            name: "fp32".into(),
            model: m.clone(),
        },
        Variant {
            name: "int8".into(),
            model: q,
        },
    ]
}

/// Adds 0.5 to the first value of initializer `layers.0.weight` in an encoded model.
fn perturb(bytes: &[u8]) -> Vec<u8> {
    let mut model = ModelProto::decode(bytes).unwrap();
    let g = model.graph.as_mut().unwrap();
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == "layers.0.weight")
        .unwrap();
    let mut v = w.f32_values().unwrap();
    v[0] += 0.5;
    w.set_f32_values(&v);
    model.encode_to_vec()
}

#[test]
fn writer_matches_a_forward_pass_worked_by_hand() {
    let m = small();
    let meta = ExportMeta {
        class_labels: vec!["a".into(), "b".into()],
        feature_names: vec!["x0".into(), "x1".into(), "x2".into()],
        pipeline_hash: "feedbeef".into(),
        ..Default::default()
    };
    let bytes = export(&m.spec, &m.weights, &meta).unwrap();
    let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
    assert_eq!((ort.n_features(), ort.n_outputs()), (3, 2));
    // x = [1, 2, 3]: hidden = x @ W0 + b0 = [1+0+3, -1+4+0, 0.5-1+0, 0+2-3] + [0, 0.5, 0, 0.25]
    //               = [4, 3.5, -0.5, -0.75] -> relu [4, 3.5, 0, 0];
    //   logits = [4*1 + 3.5*0, 4*0 + 3.5*1] + [0.1, -0.1] = [4.1, 3.4].
    // x = [0, 0, 1]: hidden = [1, 0, 0, -1] + b0 = [1, 0.5, 0, -0.75] -> [1, 0.5, 0, 0];
    //   logits = [1, 0.5] + [0.1, -0.1] = [1.1, 0.4].
    let p = ort.predict(&[1.0, 2.0, 3.0, 0.0, 0.0, 1.0], 2).unwrap();
    let want = [4.1f32, 3.4, 1.1, 0.4];
    for (got, want) in p.logits.iter().zip(want) {
        assert!((got - want).abs() <= 1e-6, "{:?}", p.logits);
    }
    // softmax([4.1, 3.4])[0] = 1 / (1 + e^-0.7); softmax([1.1, 0.4]) is the same.
    let p0 = 1.0 / (1.0 + (-0.7f32).exp());
    for (got, want) in p.probabilities.iter().zip([p0, 1.0 - p0, p0, 1.0 - p0]) {
        assert!((got - want).abs() <= 1e-6, "{:?}", p.probabilities);
    }
    assert_eq!(p.argmax(), vec![0, 0]);
    // The native reference agrees with the same hand-computed numbers.
    let native = m
        .clone()
        .predict(&[1.0, 2.0, 3.0, 0.0, 0.0, 1.0], 2)
        .unwrap();
    for (got, want) in native.logits.iter().zip(want) {
        assert!((got - want).abs() <= 1e-6, "{:?}", native.logits);
    }

    // Metadata as ONNX Runtime reads it.
    assert_eq!(
        ort.metadata("class_labels").as_deref(),
        Some(r#"["a","b"]"#)
    );
    assert_eq!(
        ort.metadata("feature_names").as_deref(),
        Some(r#"["x0","x1","x2"]"#)
    );
    assert_eq!(ort.metadata("pipeline_hash").as_deref(), Some("feedbeef"));
    assert_eq!(
        ort.metadata("kiln_version").as_deref(),
        Some(kiln_core::KILN_VERSION)
    );

    let model = decode(&bytes).unwrap();
    let g = model.graph.as_ref().unwrap();
    assert_eq!(
        (model.ir_version(), model.opset_import[0].version()),
        (8, 17)
    );
    assert_eq!(g.input[0].name(), "features");
    assert_eq!(
        g.output.iter().map(|o| o.name()).collect::<Vec<_>>(),
        ["logits", "probabilities"]
    );

    // A wrong row width is an error, not a crash.
    let e = ort.predict(&[1.0, 2.0], 1).unwrap_err();
    assert!(e.to_string().contains("takes 3 per row"), "{e}");
}

#[test]
fn fp32_and_int8_match_the_reference_within_1e5() {
    let (m, x) = random(0x2545_f491_4f6c_dd1d, 20, &[16, 8], 5, 300);
    let q = int8(&m);
    // calibrated on 30 rows: later rows saturate in some layers, on both sides alike
    let st = int8_static(&m, &x, 30);
    let half = fp16(&m);
    let (asym_c, asym_t) = (int8_asym(&m, true), int8_asym(&m, false));
    for model in [&m, &q, &st, &half, &asym_c, &asym_t] {
        let bytes = export(&model.spec, &model.weights, &meta(5)).unwrap();
        let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
        // Batches of 100 and one ragged batch of 300 % 128 = 44 rows.
        for batch in [100, 128] {
            let r = check_parity(&mut model.clone(), &mut ort, &x, 300, batch, 1e-5).unwrap();
            assert!(r.passed, "{r:?}");
            assert!(r.max_abs_prob <= 1e-5, "{r:?}");
            assert!(r.max_abs_logit <= 1e-4, "{r:?}");
            assert_eq!(r.argmax_agreement, 1.0);
            assert_eq!(
                (r.n_rows, r.batch, r.onnx.as_str()),
                (300, batch, "onnxruntime")
            );
        }
    }
    // The int8 model really is quantized: it differs from fp32, a little.
    let fp = m.clone().predict(&x, 300).unwrap();
    let qp = q.clone().predict(&x, 300).unwrap();
    let d = kiln_deploy::compare(&fp, &qp, 300, 0.0);
    assert!(d.max_abs_logit > 1e-4 && d.max_abs_logit < 0.5, "{d:?}");

    // The int8 file holds int8 weights and MatMulInteger nodes, one per layer, no MatMul.
    let g = decode(&export(&q.spec, &q.weights, &meta(5)).unwrap())
        .unwrap()
        .graph
        .unwrap();
    let count = |op: &str| g.node.iter().filter(|n| n.op_type() == op).count();
    assert_eq!(
        (
            count("MatMulInteger"),
            count("DynamicQuantizeLinear"),
            count("MatMul")
        ),
        (3, 3, 0)
    );
    // The fp16 file holds float16 weights (half the bytes) cast to float once.
    let gh = decode(&export(&half.spec, &half.weights, &meta(5)).unwrap())
        .unwrap()
        .graph
        .unwrap();
    let f16_inits = gh
        .initializer
        .iter()
        .filter(|t| t.data_type() == dtype::FLOAT16)
        .map(|t| t.raw_data().len())
        .sum::<usize>();
    assert_eq!(f16_inits, 2 * (20 * 16 + 16 * 8 + 8 * 5));
    assert_eq!(gh.node.iter().filter(|n| n.op_type() == "Cast").count(), 3);
    // The static file quantizes with constants: QuantizeLinear, no DynamicQuantizeLinear.
    let gs = decode(&export(&st.spec, &st.weights, &meta(5)).unwrap())
        .unwrap()
        .graph
        .unwrap();
    let count_s = |op: &str| gs.node.iter().filter(|n| n.op_type() == op).count();
    assert_eq!(
        (
            count_s("MatMulInteger"),
            count_s("QuantizeLinear"),
            count_s("DynamicQuantizeLinear")
        ),
        (3, 3, 0)
    );
    let st_out = st.clone().predict(&x, 300).unwrap();
    let saturated = {
        // some rows lie outside the 30 calibration rows' range of the input layer
        let (lo, hi) = x[..600]
            .iter()
            .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
        x[600..].iter().filter(|&&v| v < lo || v > hi).count()
    };
    assert!(saturated > 0, "the test should exercise saturation");
    assert!(kiln_deploy::compare(&fp, &st_out, 300, 0.0).max_abs_logit < 1.0);
    let int8_inits: Vec<&str> = g
        .initializer
        .iter()
        .filter(|t| t.data_type() == dtype::INT8)
        .map(|t| t.name())
        .collect();
    assert_eq!(
        int8_inits,
        ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    );
    let w0 = g
        .initializer
        .iter()
        .find(|t| t.name() == "layers.0.weight")
        .unwrap();
    let want: Vec<u8> = q
        .weights
        .i8("layers.0.weight")
        .unwrap()
        .iter()
        .map(|v| *v as u8)
        .collect();
    assert_eq!(
        (w0.dims.as_slice(), w0.raw_data()),
        (&[20i64, 16][..], want.as_slice())
    );
}

/// `m` with every hidden layer's activation set to `act`, and with layer norm (seeded
/// gamma and beta) when `norm`.
fn with_activation(m: &NativeModel, act: Activation, norm: bool, seed: u64) -> NativeModel {
    let mut spec = m.spec.clone();
    let last = spec.layers.len() - 1;
    for l in &mut spec.layers[..last] {
        l.activation = act;
    }
    let mut w = m.weights.clone();
    if norm {
        spec = spec.with_norm(Some(kiln_core::Norm::Layer));
        let mut next = rng(seed);
        for (i, l) in spec.layers[..last].iter().enumerate() {
            let gamma: Vec<f32> = (0..l.out_dim).map(|_| 1.0 + 0.5 * next()).collect();
            let beta: Vec<f32> = (0..l.out_dim).map(|_| 0.2 * next()).collect();
            w.insert_f32(&format!("layers.{i}.norm_weight"), vec![l.out_dim], gamma);
            w.insert_f32(&format!("layers.{i}.norm_bias"), vec![l.out_dim], beta);
        }
    }
    NativeModel::new(spec, w).unwrap()
}

/// The deploy gate on `model` against its own export: (report, rows explained by one
/// rounding step).
fn gate(model: &NativeModel, x: &[f32], rows: usize) -> kiln_deploy::ParityReport {
    let bytes = export(&model.spec, &model.weights, &meta(model.spec.output_dim())).unwrap();
    let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
    check_model_parity(model, &mut ort, (x, x), rows, rows, 1e-5)
        .unwrap()
        .0
}

/// Every hidden activation (ReLU, tanh, sigmoid, leaky ReLU as ONNX LeakyRelu, GELU
/// spelled out with Erf for opset 17), with and without layer norm, passes the deploy
/// parity gate (1e-5 in probability) in fp32, int8 dynamic and int8 static, over 40
/// random models each. Piecewise-linear activations without norm are exact in int8 as
/// in fp32; for the others ONNX Runtime's `exp` / `tanh` / `erf` may differ in the last
/// bit, which can put an activation on the other side of the next layer's rounding
/// boundary: such rows pass only when one step of one quantized activation reproduces
/// them (`rounding_rows`), and there are few of them.
#[test]
fn every_activation_passes_the_gate_in_fp32_and_int8() {
    let mut rounding = 0;
    for act in [
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::LeakyRelu,
        Activation::Gelu,
    ] {
        for norm in [false, true] {
            for seed in 0..40 {
                let (m, x) = random(100 + seed, 12, &[10, 6], 4, 200);
                // inputs in [-2, 2] so the negative side of every activation is exercised
                let x: Vec<f32> = x.iter().map(|v| v * 4.0 - 2.0).collect();
                let m = with_activation(&m, act, norm, seed);
                let exact = !norm && matches!(act, Activation::Relu | Activation::LeakyRelu);
                for (name, model) in [
                    ("fp32", m.clone()),
                    ("int8", int8(&m)),
                    ("static", int8_static(&m, &x, 100)),
                ] {
                    let r = gate(&model, &x, 200);
                    let what = format!("{act:?} norm {norm} seed {seed} {name}");
                    assert!(r.passed, "{what}: {r:?}");
                    if name == "fp32" || exact {
                        assert!(r.rounding_rows.is_empty(), "{what}: {r:?}");
                        assert!(r.max_abs_prob <= 1e-5, "{what}: {r:?}");
                    }
                    assert!(r.rounding_rows.len() <= 3, "{what}: {r:?}");
                    rounding += r.rounding_rows.len();
                }
            }
        }
    }
    // the rule is exercised: some smooth int8 rows really do differ by one step
    assert!(rounding > 0);
}

/// The one-step rule cannot hide a wrong model: int8 with tanh whose exported weights
/// differ by one unit of one weight fails the gate, on rows no single rounding step of
/// the reference explains.
#[test]
fn one_step_rule_rejects_a_wrong_int8_weight() {
    let (m, x) = random(21, 12, &[10, 6], 4, 200);
    let x: Vec<f32> = x.iter().map(|v| v * 4.0 - 2.0).collect();
    let q = int8(&with_activation(&m, Activation::Tanh, false, 0));
    let mut wrong = q.clone();
    let mut w1 = wrong.weights.i8("layers.1.weight").unwrap().to_vec();
    w1[0] = w1[0].saturating_add(if w1[0] > 0 { -9 } else { 9 });
    wrong.weights.insert_i8("layers.1.weight", vec![10, 6], w1);
    let bytes = export(&wrong.spec, &wrong.weights, &meta(4)).unwrap();
    let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
    let (r, _) = check_model_parity(&q, &mut ort, (&x, &x), 200, 200, 1e-5).unwrap();
    assert!(!r.passed, "{r:?}");
    assert!(r.max_abs_prob > 1e-3, "{r:?}");
}

/// Layer norm after each hidden layer is exported as ONNX LayerNormalization (opset 17),
/// one node per norm, in fp32 and int8 (norm parameters in f32); opset 16 cannot express
/// it and is refused.
#[test]
fn layer_norm_is_exported_as_layer_normalization() {
    let (m, _) = random(13, 12, &[10, 6], 4, 200);
    let m = with_activation(&m, Activation::Relu, true, 5);
    for model in [m.clone(), int8(&m)] {
        let bytes = export(&model.spec, &model.weights, &meta(4)).unwrap();
        let proto = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = proto.graph.unwrap();
        let norms = graph
            .node
            .iter()
            .filter(|n| n.op_type() == "LayerNormalization")
            .count();
        assert_eq!(norms, 2);
    }
    let old = ExportMeta {
        opset: 16,
        ..meta(4)
    };
    let e = export(&m.spec, &m.weights, &old).unwrap_err().to_string();
    assert!(e.contains("opset 17"), "{e}");
}

#[test]
fn one_perturbed_weight_fails_the_parity_gate_and_the_stage() {
    let (m, x) = random(7, 20, &[16], 4, 200);
    let good = export(&m.spec, &m.weights, &meta(4)).unwrap();
    let bad = perturb(&good);
    assert_ne!(good, bad);
    let mut ort = OrtModel::from_bytes(&bad, 1).unwrap();
    let r = check_parity(&mut m.clone(), &mut ort, &x, 200, 100, 1e-5).unwrap();
    assert!(!r.passed);
    assert!(r.max_abs_prob > 1e-4, "{r:?}");
    assert_eq!(r.worst_rows.len(), 5);
    assert!(r.worst_rows.windows(2).all(|w| w[0].diff >= w[1].diff));
    assert_eq!(r.worst_rows[0].diff, r.max_abs_prob);
    // The unperturbed export passes on the same rows.
    let mut ok = OrtModel::from_bytes(&good, 1).unwrap();
    assert!(
        check_parity(&mut m.clone(), &mut ok, &x, 200, 100, 1e-5)
            .unwrap()
            .passed
    );

    // The stage: a good run ships model.onnx; a run whose export is perturbed returns an
    // error naming the worst rows, and leaves no model.onnx behind (not even the old one).
    let (schema, test) = schema_and_test(&m, x);
    let dir = tempfile::tempdir().unwrap();
    let variants = [Variant {
        name: "fp32".into(),
        model: m.clone(),
    }];
    let out = kiln_deploy::run(
        &Config::default(),
        &variants,
        &schema,
        &test,
        "h",
        dir.path(),
    )
    .unwrap();
    assert_eq!(out.variants[0].file, "model.onnx");
    assert!(dir.path().join("model.onnx").is_file());
    let err = kiln_deploy::run_with_exporter(
        &Config::default(),
        &variants,
        &schema,
        &test,
        "h",
        dir.path(),
        &|m: &NativeModel, meta: &ExportMeta| Ok(perturb(&export(&m.spec, &m.weights, meta)?)),
    )
    .unwrap_err();
    assert!(matches!(err, DeployError::Parity(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("parity check failed, nothing was deployed"),
        "{msg}"
    );
    assert!(msg.contains("fp32: ONNX Runtime differs"), "{msg}");
    assert!(
        msg.contains(&format!("worst rows: row {} ", r.worst_rows[0].row)),
        "{msg}"
    );
    assert!(!dir.path().join("model.onnx").exists());
    let parity: Parity = kiln_core::read_json(&dir.path().join("parity.json")).unwrap();
    assert!(!parity.passed);
    assert!(!parity.variants["fp32"].passed);
    assert_eq!(parity.variants["fp32"].worst_rows, r.worst_rows);
}

#[test]
fn the_stage_writes_a_reproducible_bundle_and_gates_agreement() {
    let (m, x) = random(42, 256, &[128], 10, 400);
    let q = int8(&m);
    let (schema, test) = schema_and_test(&m, x);
    let variants = fp32_and_int8(&m, q.clone());
    let config = Config {
        parity_batch: 128,
        ..Config::default()
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut outs = Vec::new();
    for d in &dirs {
        outs.push(kiln_deploy::run(&config, &variants, &schema, &test, "abc", d.path()).unwrap());
    }
    let out = &outs[0];
    let files: Vec<(&str, &str)> = out
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.file.as_str()))
        .collect();
    assert_eq!(files, [("fp32", "model.onnx"), ("int8", "model.int8.onnx")]);
    let dir = dirs[0].path();
    for v in &out.variants {
        assert_eq!(
            std::fs::metadata(dir.join(&v.file)).unwrap().len() as usize,
            v.bytes
        );
        assert!(v.parity.passed && v.parity.max_abs_prob <= 1e-5, "{v:?}");
        assert_eq!((v.parity.n_rows, v.parity.batch), (400, 128));
    }
    // int8: at most 30 % of the fp32 file, and agreeing with fp32 on >= 99.5 % of rows.
    let (fp_bytes, q_bytes) = (out.variants[0].bytes, out.variants[1].bytes);
    assert!(q_bytes * 10 <= fp_bytes * 3, "{q_bytes} vs {fp_bytes}");
    let agreement = out.variants[1].agreement_with_fp32.unwrap();
    assert!(agreement >= 0.995, "{agreement}");
    assert_eq!(out.variants[0].agreement_with_fp32, None);

    // parity.json and schema.json on disk.
    let parity: Parity = kiln_core::read_json(&dir.join("parity.json")).unwrap();
    assert_eq!(&parity, &out.parity);
    assert!(parity.passed);
    assert_eq!(parity.agreement_with_fp32["int8"], agreement);
    assert_eq!(parity.variants.keys().collect::<Vec<_>>(), ["fp32", "int8"]);
    let back: Schema = kiln_core::read_json(&dir.join("schema.json")).unwrap();
    assert_eq!(back, schema);

    // The files load from disk and carry the stage's metadata.
    let mut from_file = OrtModel::from_file(&dir.join("model.int8.onnx"), 1).unwrap();
    assert_eq!(from_file.metadata("pipeline_hash").as_deref(), Some("abc"));
    let p = from_file.predict(test.row(0), 1).unwrap();
    assert_eq!(p.n_outputs, 10);
    // ... and predict what kiln's int8 forward pass predicts
    let want = q.clone().predict(test.row(0), 1).unwrap();
    assert_eq!(p.probabilities.len(), 10);
    for (a, b) in p.probabilities.iter().zip(&want.probabilities) {
        assert!(
            (a - b).abs() <= 1e-5,
            "{:?} vs {:?}",
            p.probabilities,
            want.probabilities
        );
    }
    assert_eq!(p.argmax(), want.argmax());

    // Same inputs, same bytes: every file of the two runs is identical.
    for f in [
        "model.onnx",
        "model.int8.onnx",
        "parity.json",
        "schema.json",
        "bundle.json",
    ] {
        assert_eq!(
            std::fs::read(dirs[0].path().join(f)).unwrap(),
            std::fs::read(dirs[1].path().join(f)).unwrap(),
            "{f}"
        );
    }

    // An "int8" variant that is really another model disagrees with fp32: refused.
    let (other, _) = random(43, 256, &[128], 10, 1);
    let bad_dir = tempfile::tempdir().unwrap();
    let err = kiln_deploy::run(
        &config,
        &[
            variants[0].clone(),
            Variant {
                name: "int8".into(),
                model: int8(&other),
            },
        ],
        &schema,
        &test,
        "abc",
        bad_dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("int8: argmax agreement with fp32"), "{err}");
    assert!(!bad_dir.path().join("model.onnx").exists());
    assert!(!bad_dir.path().join("model.int8.onnx").exists());
}

/// The official tools: onnx.checker (full_check) and Python onnxruntime 1.31 on both
/// files. `cargo xtask test` provides them (KILN_PYTHON); without them the test fails.
#[test]
fn official_checker_and_python_onnxruntime_accept_both_files() {
    let python = kiln_python("import onnx, onnxruntime, numpy");
    let (m, x) = random(99, 12, &[10], 3, 50);
    let dir = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    for (name, model) in [
        ("fp32", m.clone()),
        ("int8", int8(&m)),
        ("static", int8_static(&m, &x, 20)),
        ("fp16", fp16(&m)),
        ("asym", int8_asym(&m, true)),
    ] {
        let path = dir.path().join(format!("{name}.onnx"));
        let meta = ExportMeta {
            class_labels: vec!["a".into(), "b".into(), "c".into()],
            feature_names: (0..12).map(|i| format!("f{i}")).collect(),
            pipeline_hash: "0123abcd".into(),
            ..Default::default()
        };
        std::fs::write(&path, export(&model.spec, &model.weights, &meta).unwrap()).unwrap();
        // One batch of all 50 rows, as the Python session runs them.
        let p = model.clone().predict(&x, 50).unwrap();
        models.push(serde_json::json!({
            "path": path,
            "int8": name != "fp32" && name != "fp16",
            "fp16": name == "fp16",
            "asym": name == "asym",
            "static": name == "static",
            "probabilities": p.probabilities,
            "argmax": p.argmax(),
        }));
    }
    let spec = serde_json::json!({
        "x": x, "rows": 50, "cols": 12, "models": models, "tol": 1e-5,
        "kiln_version": kiln_core::KILN_VERSION,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
spec = json.load(open(sys.argv[1]))
assert ort.__version__ == "1.31.1", ort.__version__
x = np.array(spec["x"], dtype=np.float32).reshape(spec["rows"], spec["cols"])
for m in spec["models"]:
    onnx.checker.check_model(m["path"], full_check=True)
    model = onnx.load(m["path"])
    assert model.ir_version == 8, model.ir_version
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)], model.opset_import
    assert model.producer_name == "kiln"
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_labels"]) == ["a", "b", "c"], props
    assert json.loads(props["feature_names"]) == ["f%d" % i for i in range(12)], props
    assert props["kiln_version"] == spec["kiln_version"] and props["pipeline_hash"] == "0123abcd", props
    ops = [n.op_type for n in model.graph.node]
    int8 = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    if m["int8"]:
        assert ops.count("MatMulInteger") == 2 and "MatMul" not in ops, ops
        zps = [n for n in int8 if n.endswith("weight_zero_point")]
        assert len(zps) == (2 if m["asym"] else 0), zps
        int8 = [n for n in int8 if n not in zps]
        assert int8 == ["layers.0.weight", "layers.1.weight"], int8
        q = "QuantizeLinear" if m["static"] else "DynamicQuantizeLinear"
        assert ops.count(q) == 2, ops
    else:
        assert ops.count("MatMul") == 2 and not int8, ops
        f16 = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
        assert len(f16) == (2 if m["fp16"] else 0), f16
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [["batch", 12]], dims
    s = ort.InferenceSession(m["path"], providers=["CPUExecutionProvider"])
    logits, probs = s.run(["logits", "probabilities"], {"features": x})
    want = np.array(m["probabilities"], dtype=np.float32).reshape(probs.shape)
    diff = float(np.abs(probs - want).max())
    assert diff <= spec["tol"], (m["path"], diff)
    assert (probs.argmax(1) == np.array(m["argmax"])).all(), m["path"]
    print(m["path"], "ok", diff)
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches(" ok ").count(),
        5,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(Path::new(&spec_path).is_file());
}

/// Without the library, loading a model fails with a message naming both places looked at
/// and the command that installs it (checked in a child process, whose environment and
/// process-wide ONNX Runtime state are its own).
#[test]
fn a_missing_runtime_library_is_an_error_naming_both_places() {
    const NAME: &str = "a_missing_runtime_library_is_an_error_naming_both_places";
    if std::env::var_os("KILN_DEPLOY_TEST_CHILD").is_some() {
        let e = OrtModel::from_bytes(b"", 1).unwrap_err();
        println!("CHILD-ERROR: {e}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("KILN_DEPLOY_TEST_CHILD", "1")
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .env("KILN_CACHE_DIR", "/nonexistent-kiln-cache")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let want = "CHILD-ERROR: onnxruntime: ONNX Runtime 1.31.1 library not found: \
        ORT_DYLIB_PATH is `/nonexistent/libonnxruntime.so` (no such file) and \
        `/nonexistent-kiln-cache/onnxruntime-1.31.1/libonnxruntime.so` does not exist; \
        run `cargo xtask setup`";
    assert!(stdout.contains(want), "{stdout}");
}

/// The python of `KILN_PYTHON`, checked to run `imports`; the test fails, naming the
/// command that installs it, when it is missing (`cargo xtask test` sets it up).
fn kiln_python(imports: &str) -> String {
    let python = std::env::var("KILN_PYTHON").unwrap_or_else(|_| {
        panic!("KILN_PYTHON is unset: this test needs a python with onnx and onnxruntime; run the suite with `cargo xtask test`, which installs them")
    });
    let ok = std::process::Command::new(&python)
        .args(["-c", imports])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "KILN_PYTHON={python} cannot run `{imports}`; run `cargo xtask setup` to rebuild its venv"
    );
    python
}

/// The bundle as a library opens it: raw rows in, ONNX Runtime's predictions out, equal
/// to the reference forward pass; bundle.json names its files and format. A bundle from
/// before bundle.json existed still loads, one of a newer format is refused with how to
/// re-export it, and a path that is no bundle says what --model takes.
#[test]
fn bundles_open_predict_and_say_which_format_they_are() {
    let (m, x) = random(5, 12, &[10], 3, 60);
    let (schema, test) = schema_and_test(&m, x.clone());
    let dir = tempfile::tempdir().unwrap();
    let variants = [Variant {
        name: "fp32".into(),
        model: m.clone(),
    }];
    kiln_deploy::run(
        &Config::default(),
        &variants,
        &schema,
        &test,
        "h1",
        dir.path(),
    )
    .unwrap();
    let manifest: kiln_core::artifact::bundle::BundleManifest =
        kiln_core::artifact::load(dir.path()).unwrap();
    assert_eq!(manifest.stage_hash, "h1");
    assert_eq!(manifest.models.len(), 1);
    assert_eq!(manifest.models[0].file, "model.onnx");
    assert_eq!(
        manifest.models[0].bytes,
        std::fs::metadata(dir.path().join("model.onnx"))
            .unwrap()
            .len()
    );
    let mut bundle = kiln_deploy::Bundle::open(dir.path()).unwrap();
    assert!(bundle.manifest.is_some() && !bundle.baked);
    // the schema here has no transforms: raw rows are the features
    let rows = kiln_core::Rows {
        n_rows: 60,
        values: x.clone(),
        text: vec![],
    };
    let got = bundle.predict(&rows).unwrap();
    let want = m.clone().predict(&x, 60).unwrap();
    for (a, b) in got.probabilities.iter().zip(&want.probabilities) {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
    assert_eq!(bundle.labels(&got)[0], format!("c{}", want.argmax()[0]));
    // a NaN cell is an error naming the row and feature
    let mut bad = rows.clone();
    bad.values[12 * 7 + 3] = f32::NAN;
    let e = bundle.predict(&bad).unwrap_err().to_string();
    assert!(
        e.contains("row 7 column `f3` is not a finite number"),
        "{e}"
    );

    // written before bundle.json existed: loads
    std::fs::remove_file(dir.path().join("bundle.json")).unwrap();
    let old = kiln_deploy::Bundle::open(dir.path()).unwrap();
    assert!(old.manifest.is_none());
    // a newer format: refused, saying how to re-export
    std::fs::write(
        dir.path().join("bundle.json"),
        r#"{"kind": "kiln.bundle", "format_version": 9, "kiln_version": "9.0.0", "stage_hash": "x", "models": [], "preprocessing_baked": false}"#,
    )
    .unwrap();
    let e = kiln_deploy::Bundle::open(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is format 9 of `kiln.bundle`, written by a newer kiln"),
        "{e}"
    );
    assert!(
        e.contains("re-export the bundle with this kiln: `kiln run"),
        "{e}"
    );
    // not a bundle, or nothing at all
    let empty = tempfile::tempdir().unwrap();
    let e = kiln_deploy::Bundle::open(empty.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds no schema.json, so it is not a kiln bundle"),
        "{e}"
    );
    let e = kiln_deploy::Bundle::open(&empty.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nope: No such file") && e.contains("--model takes a deploy folder"),
        "{e}"
    );
}

/// The test split streamed from shards of 30 rows: parity is checked part by part and
/// the reports merged, so the gate sees every row: a good export passes with the same
/// figures as in memory, and a perturbed one fails naming the same rows (numbered in
/// the whole split).
#[test]
fn a_streamed_test_split_gates_like_one_in_memory() {
    use kiln_core::dataset::SplitData;
    use kiln_core::dataset::shards::{self, Shards, Split};
    let (m, x) = random(7, 20, &[16], 4, 200);
    let (schema, test) = schema_and_test(&m, x);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let empty = Dataset {
        features: vec![],
        labels: vec![],
        ..test.clone()
    };
    shards::write(&data, [&empty, &empty, &test], 30).unwrap();
    let s = Shards::open(&data).unwrap();
    assert_eq!(s.manifest.test.shards.len(), 7);
    let variants = fp32_and_int8(&m, int8(&m));
    let good = |m: &NativeModel, meta: &ExportMeta| export(&m.spec, &m.weights, meta);
    let run =
        |split: SplitData<'_>,
         out: &str,
         exporter: &dyn Fn(&NativeModel, &ExportMeta) -> kiln_deploy::Result<Vec<u8>>| {
            let config = Config {
                parity_batch: 16,
                ..Config::default()
            };
            let r = kiln_deploy::run_split(
                &config,
                &variants,
                &schema,
                split,
                "h",
                &dir.path().join(out),
                exporter,
            );
            let parity: Parity =
                kiln_core::read_json(&dir.path().join(out).join("parity.json")).unwrap();
            (r, parity)
        };
    let (memory, pm) = run(SplitData::Memory(&test), "memory", &good);
    let (streamed, ps) = run(SplitData::Shards(&s, Split::Test), "streamed", &good);
    assert!(memory.is_ok() && streamed.is_ok() && pm.passed && ps.passed);
    for v in ["fp32", "int8"] {
        let (a, b) = (&pm.variants[v], &ps.variants[v]);
        assert_eq!((a.n_rows, b.n_rows), (200, 200));
        assert_eq!(a.argmax_agreement, b.argmax_agreement);
        assert!(b.max_abs_prob <= b.tolerance, "{v}: {b:?}");
        assert!(b.worst_rows.iter().all(|r| r.row < 200));
    }
    // dynamic int8 takes its ranges from each batch, and a shard's batches are not the
    // whole split's: a row near a class boundary may flip
    let (a, b) = (
        pm.agreement_with_fp32["int8"],
        ps.agreement_with_fp32["int8"],
    );
    assert!(a >= 0.99 && b >= 0.99 && (a - b).abs() <= 0.01, "{a} {b}");

    // fp32's export perturbed (int8's weights are not floats)
    let bad = |m: &NativeModel, meta: &ExportMeta| {
        let bytes = export(&m.spec, &m.weights, meta)?;
        Ok(match m.weights.f32("layers.0.weight") {
            Ok(_) => perturb(&bytes),
            Err(_) => bytes,
        })
    };
    let (memory, pm) = run(SplitData::Memory(&test), "memory-bad", &bad);
    let (streamed, ps) = run(SplitData::Shards(&s, Split::Test), "streamed-bad", &bad);
    assert!(memory.is_err() && streamed.is_err() && !ps.passed);
    let rows = |p: &Parity| -> Vec<usize> {
        p.variants["fp32"]
            .worst_rows
            .iter()
            .map(|r| r.row)
            .collect()
    };
    assert_eq!(rows(&pm), rows(&ps));
    // rows beyond the first shard are named by their place in the split
    assert!(rows(&ps).iter().any(|&r| r >= 30), "{:?}", rows(&ps));
    for (a, b) in pm.variants["fp32"]
        .worst_rows
        .iter()
        .zip(&ps.variants["fp32"].worst_rows)
    {
        assert!((a.diff - b.diff).abs() <= 1e-6, "{a:?} {b:?}");
    }
}
