//! Image models through compression and ONNX Runtime: the convolutions stay f32 through
//! int8 (dynamic and static), fp16 and both prunings of the dense layers, ONNX Runtime's
//! `Conv` / `MaxPool` / `AveragePool` / `GlobalAveragePool` reproduce kiln's reference
//! within the deploy gate's 1e-5, and the official checker and Python onnxruntime accept
//! the files.

mod common;

use common::{conv_weights, dense_weights, fp32_and_int8_files, python_check, rng};

use kiln_core::{
    Activation, ConvStep, Dataset, ImageShape, ModelSpec, NativeModel, Predictor, Task, TensorStore,
};
use kiln_deploy::{ExportMeta, OrtModel, check_model_parity, export};
use kiln_optimize::prune::{Scope, magnitude, remove_units, units_to_keep};
use kiln_optimize::quantize::{Scheme, fp16, quantize};

/// A 2 x 8 x 8 image: a padded ReLU convolution, a max pool, a strided GELU convolution,
/// an overlapping average pool, a leaky-ReLU 1 x 1 convolution and the global average
/// pool, then 5 ReLU units and 3 classes; weights seeded.
fn model() -> NativeModel {
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
    let spec = ModelSpec::mlp(128, &[5], Activation::Relu, Task::Classification, 3).with_conv(
        image,
        vec![
            conv(4, 3, 1, 1, Activation::Relu),
            ConvStep::MaxPool {
                kernel: 2,
                stride: None,
            },
            conv(6, 3, 2, 1, Activation::Gelu),
            ConvStep::AvgPool {
                kernel: 2,
                stride: Some(1),
            },
            conv(5, 1, 1, 0, Activation::LeakyRelu),
            ConvStep::GlobalAvgPool,
        ],
    );
    spec.validate().unwrap();
    let mut next = rng(0x5851_f42d_4c95_7f2d);
    let mut w = TensorStore::default();
    conv_weights(&spec, &mut next, &mut w);
    dense_weights(&spec, &mut next, &mut w);
    NativeModel::new(spec, w).unwrap()
}

fn images(n: usize) -> Vec<f32> {
    let mut next = rng(11);
    (0..n * 128).map(|_| (next() + 1.0) / 2.0).collect()
}

/// Every compressed form keeps the convolutions as they were, and ONNX Runtime agrees
/// with kiln's reference on every one within 1e-5.
#[test]
fn every_compressed_image_model_passes_parity() {
    let m = model();
    let n = 96;
    let x = images(n);
    let data = Dataset {
        feature_names: (0..128).map(|i| format!("pixel_{i}")).collect(),
        target: "y".into(),
        features: x.clone(),
        labels: vec![0; n],
        values: vec![],
    };
    let (pruned, _) = magnitude(&m, 0.5, Scope::Global).unwrap();
    let narrow = remove_units(&m, &units_to_keep(&m, &[3]).unwrap(), 0.4).unwrap();
    let forms = [
        ("fp32", m.clone()),
        ("int8", quantize(&m, Scheme::Dynamic, true, None).unwrap()),
        (
            "static",
            quantize(&m, Scheme::Static, true, Some((&data, 30))).unwrap(),
        ),
        ("fp16", fp16(&m).unwrap()),
        ("magnitude", pruned),
        ("structured", narrow),
    ];
    for (name, form) in &forms {
        assert_eq!(
            (form.spec.image, &form.spec.conv),
            (m.spec.image, &m.spec.conv),
            "{name}"
        );
        for key in ["conv.0.weight", "conv.2.bias", "conv.4.weight"] {
            assert_eq!(
                form.weights.f32(key).unwrap(),
                m.weights.f32(key).unwrap(),
                "{name}"
            );
        }
        let bytes = export(&form.spec, &form.weights, &ExportMeta::default()).unwrap();
        let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
        let (r, _) = check_model_parity(form, &mut ort, (&x, &x), n, 32, 1e-5).unwrap();
        assert!(r.passed && r.max_abs_prob <= 1e-5, "{name}: {r:?}");
    }
    // the model is not degenerate: its outputs vary across images
    let p = m.clone().predict(&x, n).unwrap();
    let first: Vec<f32> = p.logits.iter().step_by(3).copied().collect();
    let (lo, hi) = first
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    assert!(hi - lo > 0.01, "{first:?}");
}

/// A conv2d, worked by hand through ONNX Runtime: a 1 x 3 x 3 image, one 2 x 2 filter,
/// no padding, then the global average pool and an identity dense layer.
#[test]
fn a_convolution_worked_by_hand() {
    let image = ImageShape {
        channels: 1,
        height: 3,
        width: 3,
    };
    let spec = ModelSpec::mlp(9, &[], Activation::Identity, Task::Regression, 1).with_conv(
        image,
        vec![
            ConvStep::Conv2d {
                channels: 1,
                kernel: 2,
                stride: 1,
                padding: 0,
                activation: Activation::Identity,
            },
            ConvStep::GlobalAvgPool,
        ],
    );
    let mut w = TensorStore::default();
    // filter [[1, 2], [3, 4]] (rows: kernel row, kernel column), bias 0.5
    w.insert_f32("conv.0.weight", vec![4, 1], vec![1.0, 2.0, 3.0, 4.0]);
    w.insert_f32("conv.0.bias", vec![1], vec![0.5]);
    w.insert_f32("layers.0.weight", vec![1, 1], vec![1.0]);
    w.insert_f32("layers.0.bias", vec![1], vec![0.0]);
    let m = NativeModel::new(spec, w).unwrap();
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    // windows [1 2 4 5] [2 3 5 6] [4 5 7 8] [5 6 8 9]: 37, 47, 67, 77 (+ 0.5), mean 57.5
    let want = 57.5;
    assert_eq!(m.clone().predict(&x, 1).unwrap().logits, [want]);
    let bytes = export(&m.spec, &m.weights, &ExportMeta::default()).unwrap();
    let got = OrtModel::from_bytes(&bytes, 1)
        .unwrap()
        .predict(&x, 1)
        .unwrap();
    assert_eq!(got.logits, [want]);
}

/// The official checker (full_check) and Python onnxruntime 1.31 accept the fp32 and
/// int8 image files and compute kiln's probabilities.
#[test]
fn official_checker_and_python_onnxruntime_accept_image_models() {
    let m = model();
    let n = 20;
    let x = images(n);
    let dir = tempfile::tempdir().unwrap();
    let files = fp32_and_int8_files(&m, &x, n, dir.path());
    let spec = serde_json::json!({"x": x, "rows": n, "files": files});
    let script = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
spec = json.load(open(sys.argv[1]))
x = np.array(spec["x"], dtype=np.float32).reshape(spec["rows"], 128)
for f in spec["files"]:
    onnx.checker.check_model(f["path"], full_check=True)
    model = onnx.load(f["path"])
    ops = [n.op_type for n in model.graph.node]
    for op, k in [("Conv", 3), ("MaxPool", 1), ("AveragePool", 1), ("GlobalAveragePool", 1), ("Flatten", 1), ("Reshape", 1)]:
        assert ops.count(op) == k, (op, ops)
    w = {t.name: list(t.dims) for t in model.graph.initializer if t.name.startswith("conv.") and t.name.endswith(".weight")}
    assert w == {"conv.0.weight": [4, 2, 3, 3], "conv.2.weight": [6, 4, 3, 3], "conv.4.weight": [5, 6, 1, 1]}, w
    s = ort.InferenceSession(f["path"], providers=["CPUExecutionProvider"])
    (probs,) = s.run(["probabilities"], {"features": x})
    want = np.array(f["probabilities"], dtype=np.float32).reshape(probs.shape)
    diff = float(np.abs(probs - want).max())
    assert diff <= 1e-5, (f["path"], diff)
    print(f["path"], "ok", diff)
"#;
    let out = python_check(script, &spec, dir.path());
    assert_eq!(out.matches(" ok ").count(), 2, "{out}");
}

/// A 3 x 10 x 10 image through a GELU convolution to 8 channels, a padded ReLU
/// convolution to 12 (8 inputs, some negative: int8), a max pool, a GELU convolution to 6 (12 inputs: int8) and the global
/// average pool, then 5 ReLU units and 3 classes; weights seeded.
fn wide_model() -> NativeModel {
    let conv = |channels, padding, activation| ConvStep::Conv2d {
        channels,
        kernel: 3,
        stride: 1,
        padding,
        activation,
    };
    let image = ImageShape {
        channels: 3,
        height: 10,
        width: 10,
    };
    let spec = ModelSpec::mlp(300, &[5], Activation::Relu, Task::Classification, 3).with_conv(
        image,
        vec![
            conv(8, 1, Activation::Gelu),
            conv(12, 1, Activation::Relu),
            ConvStep::MaxPool {
                kernel: 2,
                stride: None,
            },
            conv(6, 0, Activation::Gelu),
            ConvStep::GlobalAvgPool,
        ],
    );
    spec.validate().unwrap();
    let mut next = rng(0x2545_f491_4f6c_dd1d);
    let mut w = TensorStore::default();
    conv_weights(&spec, &mut next, &mut w);
    dense_weights(&spec, &mut next, &mut w);
    NativeModel::new(spec, w).unwrap()
}

/// Static int8 quantizes the convolutions that read 8 channels or more (`QLinearConv`):
/// int8 weights within half a step per output channel, calibrated input and output
/// ranges (a ReLU output's zero point is 0), ONNX Runtime computing kiln's reference
/// within the parity gate's 1e-5, and the outputs near fp32's. Dynamic int8 keeps every
/// convolution f32.
#[test]
fn static_int8_quantizes_wide_convolutions() {
    let m = wide_model();
    let n = 64;
    let mut next = rng(5);
    let x: Vec<f32> = (0..n * 300).map(|_| (next() + 1.0) / 2.0).collect();
    let data = Dataset {
        feature_names: (0..300).map(|i| format!("pixel_{i}")).collect(),
        target: "y".into(),
        features: x.clone(),
        labels: vec![0; n],
        values: vec![],
    };
    let q = quantize(&m, Scheme::Static, true, Some((&data, n))).unwrap();
    // the 3-channel convolution stays f32
    assert_eq!(
        q.weights.f32("conv.0.weight").unwrap(),
        m.weights.f32("conv.0.weight").unwrap()
    );
    for (i, k2, out) in [(1, 72, 12), (3, 108, 6)] {
        let wq = q.weights.i8(&format!("conv.{i}.weight")).unwrap();
        let s = q.weights.f32(&format!("conv.{i}.weight_scale")).unwrap();
        assert_eq!((wq.len(), s.len()), (k2 * out, out));
        let w = m.weights.f32(&format!("conv.{i}.weight")).unwrap();
        for (j, (&a, &b)) in w.iter().zip(wq).enumerate() {
            let sc = s[j % out];
            assert!(
                (f32::from(b) * sc - a).abs() <= sc / 2.0 + 1e-7,
                "conv.{i}[{j}]"
            );
        }
        // every channel uses the full 7-bit range: its largest weight is +-63
        for c in 0..out {
            let top = (0..k2).map(|r| wq[r * out + c].unsigned_abs()).max();
            assert_eq!(top, Some(63), "conv.{i} channel {c}");
        }
    }
    // conv 1 reads conv 0's GELU output (negative values too: a zero point above 0, so
    // its padding is that zero point), and its ReLU output range starts at 0
    let v = |k: &str| q.weights.f32(k).unwrap()[0];
    let mut seen = Vec::new();
    kiln_core::conv::conv_features_traced(&m.spec, &m.weights, &x, n, &mut |i, s| {
        seen.push((i, s))
    })
    .unwrap();
    let conv1 = seen.iter().find(|(i, _)| *i == 1).unwrap().1;
    let (lo, hi) = conv1.input;
    assert!(lo < 0.0 && hi > 0.0, "{lo} {hi}");
    assert_eq!(v("conv.1.input_scale"), (hi - lo) / 255.0);
    assert_eq!(
        v("conv.1.input_zero_point"),
        (-lo / v("conv.1.input_scale")).round_ties_even()
    );
    assert!(v("conv.1.input_zero_point") > 0.0);
    assert_eq!(v("conv.1.output_zero_point"), 0.0);
    assert_eq!(v("conv.1.output_scale"), conv1.pre_activation.1 / 255.0);
    // conv 3 is a GELU: its pre-activation range holds negative values, zero point > 0
    assert!(v("conv.3.output_zero_point") > 0.0);

    // ONNX Runtime's QLinearConv computes kiln's reference
    let bytes = export(&q.spec, &q.weights, &ExportMeta::default()).unwrap();
    let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
    let (r, got) = check_model_parity(&q, &mut ort, (&x, &x), n, 32, 1e-5).unwrap();
    assert!(r.passed && r.max_abs_prob <= 1e-5, "{r:?}");
    // and int8 stays near fp32, without being fp32
    let want = m.clone().predict(&x, n).unwrap();
    let worst = got
        .probabilities
        .iter()
        .zip(&want.probabilities)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst > 0.0 && worst < 0.05, "{worst}");

    // dynamic int8 leaves every convolution f32
    let d = quantize(&m, Scheme::Dynamic, true, None).unwrap();
    for i in [0, 1, 3] {
        let k = format!("conv.{i}.weight");
        assert_eq!(d.weights.f32(&k).unwrap(), m.weights.f32(&k).unwrap());
    }
}

/// Structured pruning of the convolutions: half of each one's channels removed, the ONNX
/// file smaller with narrower `Conv` weights, and ONNX Runtime computing kiln's reference
/// of the pruned model within 1e-5.
#[test]
fn channel_pruning_shrinks_the_file_and_passes_parity() {
    use kiln_optimize::channels::{channels_to_keep, conv_widths, remove_channels};
    let m = model();
    let half: Vec<Option<usize>> = conv_widths(&m.spec)
        .iter()
        .map(|w| w.map(|w| w - w / 2))
        .collect();
    let small = remove_channels(&m, &channels_to_keep(&m, &half).unwrap()).unwrap();
    assert_eq!(
        conv_widths(&small.spec),
        [Some(2), None, Some(3), None, Some(3), None]
    );
    let full = export(&m.spec, &m.weights, &ExportMeta::default()).unwrap();
    let bytes = export(&small.spec, &small.weights, &ExportMeta::default()).unwrap();
    assert!(
        bytes.len() < full.len(),
        "{} vs {}",
        bytes.len(),
        full.len()
    );
    let g = kiln_deploy::decode(&bytes).unwrap().graph.unwrap();
    let dims: Vec<Vec<i64>> = ["conv.0.weight", "conv.2.weight", "conv.4.weight"]
        .iter()
        .map(|k| {
            g.initializer
                .iter()
                .find(|t| t.name() == *k)
                .unwrap()
                .dims
                .clone()
        })
        .collect();
    assert_eq!(dims, [vec![2, 2, 3, 3], vec![3, 2, 3, 3], vec![3, 3, 1, 1]]);
    let n = 40;
    let x = images(n);
    let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
    let (r, _) = check_model_parity(&small, &mut ort, (&x, &x), n, 20, 1e-5).unwrap();
    assert!(r.passed && r.max_abs_prob <= 1e-5, "{r:?}");
}

/// A batch norm between a convolution and its ReLU, and one after a pool: ONNX
/// `BatchNormalization` over the running statistics computes kiln's reference within
/// 1e-5 in fp32 and in static int8 (the batch norms stay float around `QLinearConv`),
/// and after structured pruning removed half the channels with their batch norm entries.
#[test]
fn batch_norm_exports_and_passes_parity() {
    let conv = |channels, activation| ConvStep::Conv2d {
        channels,
        kernel: 3,
        stride: 1,
        padding: 1,
        activation,
    };
    let image = ImageShape {
        channels: 3,
        height: 8,
        width: 8,
    };
    let bn = |activation| ConvStep::BatchNorm { activation };
    let spec = ModelSpec::mlp(192, &[5], Activation::Relu, Task::Classification, 3).with_conv(
        image,
        vec![
            conv(8, Activation::Identity),
            bn(Activation::Relu),
            ConvStep::MaxPool {
                kernel: 2,
                stride: None,
            },
            conv(6, Activation::Identity),
            bn(Activation::Gelu),
        ],
    );
    spec.validate().unwrap();
    let mut next = rng(77);
    let mut w = TensorStore::default();
    conv_weights(&spec, &mut next, &mut w);
    dense_weights(&spec, &mut next, &mut w);
    for (i, c) in [(1, 8), (4, 6)] {
        let v = |next: &mut dyn FnMut() -> f32, base: f32, spread: f32| -> Vec<f32> {
            (0..c).map(|_| base + spread * next()).collect()
        };
        w.insert_f32(
            &format!("conv.{i}.weight"),
            vec![1, c],
            v(&mut next, 1.0, 0.3),
        );
        w.insert_f32(&format!("conv.{i}.bias"), vec![c], v(&mut next, 0.0, 0.2));
        w.insert_f32(
            &format!("conv.{i}.running_mean"),
            vec![c],
            v(&mut next, 0.0, 0.5),
        );
        w.insert_f32(
            &format!("conv.{i}.running_var"),
            vec![c],
            v(&mut next, 1.0, 0.5),
        );
    }
    let m = NativeModel::new(spec, w).unwrap();
    assert_eq!(
        m.spec.conv_params(),
        3 * 9 * 8 + 8 + 2 * 8 + 8 * 9 * 6 + 6 + 2 * 6
    );
    let n = 48;
    let mut next = rng(5);
    let x: Vec<f32> = (0..n * 192).map(|_| (next() + 1.0) / 2.0).collect();
    let data = Dataset {
        feature_names: (0..192).map(|i| format!("pixel_{i}")).collect(),
        target: "y".into(),
        features: x.clone(),
        labels: vec![0; n],
        values: vec![],
    };
    let q = quantize(&m, Scheme::Static, true, Some((&data, n))).unwrap();
    assert!(q.weights.i8("conv.3.weight").is_ok());
    for (name, form) in [("fp32", &m), ("static", &q)] {
        let bytes = export(&form.spec, &form.weights, &ExportMeta::default()).unwrap();
        let g = kiln_deploy::decode(&bytes).unwrap().graph.unwrap();
        let count = g
            .node
            .iter()
            .filter(|n| n.op_type() == "BatchNormalization")
            .count();
        assert_eq!(count, 2, "{name}");
        let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
        let (r, _) = check_model_parity(form, &mut ort, (&x, &x), n, 16, 1e-5).unwrap();
        assert!(r.passed && r.max_abs_prob <= 1e-5, "{name}: {r:?}");
    }
    // the reference's batch norm, worked for one value: channel 0 of image 0 at (0, 0)
    // after the first convolution
    let c0 = {
        let mut one = m.spec.clone();
        one.conv.truncate(1);
        kiln_core::conv::conv_features(&one, &m.weights, &x[..192], 1).unwrap()[0]
    };
    let mut two = m.spec.clone();
    two.conv.truncate(2);
    let got = kiln_core::conv::conv_features(&two, &m.weights, &x[..192], 1).unwrap()[0];
    let f = |k: &str| m.weights.f32(&format!("conv.1.{k}")).unwrap()[0];
    let want = ((c0 - f("running_mean")) / (f("running_var") + 1e-5).sqrt() * f("weight")
        + f("bias"))
    .max(0.0);
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    // structured pruning removes half of each convolution's channels with their batch
    // norm entries; ONNX Runtime runs the smaller file as the reference does
    let half: Vec<Option<usize>> = kiln_optimize::channels::conv_widths(&m.spec)
        .iter()
        .map(|w| w.map(|w| w / 2))
        .collect();
    let kept = kiln_optimize::channels::channels_to_keep(&m, &half).unwrap();
    let small = kiln_optimize::channels::remove_channels(&m, &kept).unwrap();
    assert_eq!(small.weights.f32("conv.1.running_var").unwrap().len(), 4);
    assert_eq!(small.weights.f32("conv.4.weight").unwrap().len(), 3);
    let bytes = export(&small.spec, &small.weights, &ExportMeta::default()).unwrap();
    assert!(
        bytes.len()
            < export(&m.spec, &m.weights, &ExportMeta::default())
                .unwrap()
                .len()
    );
    let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
    let (r, _) = check_model_parity(&small, &mut ort, (&x, &x), n, 16, 1e-5).unwrap();
    assert!(r.passed && r.max_abs_prob <= 1e-5, "pruned: {r:?}");
}
