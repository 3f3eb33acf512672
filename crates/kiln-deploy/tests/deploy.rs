//! Tests of kiln-deploy against the real ONNX Runtime: the writer reproduces a forward pass
//! worked by hand, fp32 and int8 exports match kiln's reference within 1e-5, a perturbed
//! weight fails the parity gate, and the official onnx checker and Python onnxruntime
//! accept both files.

use kiln_core::forward::quantize_weights_symmetric;
use kiln_core::{
    Activation, Dataset, ModelSpec, NativeModel, Predictor, Quantization, Schema, Task, TensorStore,
};
use kiln_deploy::onnx::{ModelProto, dtype};
use kiln_deploy::{Config, ExportMeta, OrtModel, Variant, check_parity, decode, export};
use prost::Message;

fn meta() -> ExportMeta {
    ExportMeta {
        opset: 17,
        class_labels: vec!["a".into(), "b".into()],
        ..Default::default()
    }
}

/// 3 -> 4 (relu) -> 2 with small integer-ish weights, so the forward pass can be worked by hand.
fn small() -> NativeModel {
    let spec = ModelSpec::mlp(3, &[4], Activation::Relu, Task::Classification, 2);
    let mut w = TensorStore::default();
    w.insert_f32(
        "layers.0.weight",
        vec![3, 4],
        vec![
            1.0, -1.0, 0.5, 0.0, 0.0, 2.0, -0.5, 1.0, 1.0, 0.0, 0.0, -1.0,
        ],
    );
    w.insert_f32("layers.0.bias", vec![4], vec![0.0, 0.5, 0.0, 0.25]);
    w.insert_f32(
        "layers.1.weight",
        vec![4, 2],
        vec![1.0, 0.0, 0.0, 1.0, 2.0, -1.0, -1.0, 0.5],
    );
    w.insert_f32("layers.1.bias", vec![2], vec![0.1, -0.1]);
    NativeModel::new(spec, w).unwrap()
}

/// Deterministic pseudo-random model and data.
fn random(in_dim: usize, hidden: &[usize], k: usize, rows: usize) -> (NativeModel, Vec<f32>) {
    let spec = ModelSpec::mlp(in_dim, hidden, Activation::Relu, Task::Classification, k);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut w = TensorStore::default();
    for (i, l) in spec.layers.iter().enumerate() {
        let s = 1.0 / (l.in_dim as f32).sqrt();
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
    }
    let spec = ModelSpec {
        quantization: Some(Quantization {
            dtype: "int8".into(),
            scheme: "dynamic".into(),
            per_channel: true,
        }),
        ..m.spec.clone()
    };
    NativeModel::new(spec, w).unwrap()
}

#[test]
fn writer_matches_a_forward_pass_worked_by_hand() {
    let m = small();
    let bytes = export(&m.spec, &m.weights, &meta()).unwrap();
    let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
    // x = [1, 2, 3]: hidden pre = [1+0+3, -1+4+0, 0.5-1+0, 0+2-3] + b = [4, 3.5, -0.5, -0.75]
    // relu -> [4, 3.5, 0, 0]; logits = [4 + 0.1, 3.5 - 0.1] = [4.1, 3.4]
    let p = ort.predict(&[1.0, 2.0, 3.0], 1).unwrap();
    assert!(
        (p.logits[0] - 4.1).abs() < 1e-6 && (p.logits[1] - 3.4).abs() < 1e-6,
        "{:?}",
        p.logits
    );
    let e = (0.7f32).exp();
    assert!(
        (p.probabilities[0] - e / (1.0 + e)).abs() < 1e-6,
        "{:?}",
        p.probabilities
    );
    let model = decode(&bytes).unwrap();
    let g = model.graph.unwrap();
    assert_eq!(model.opset_import[0].version, 17);
    assert_eq!(g.input[0].name, "features");
    assert_eq!(
        g.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        ["logits", "probabilities"]
    );
    assert!(
        model
            .metadata_props
            .iter()
            .any(|p| p.key == "class_labels" && p.value == r#"["a","b"]"#)
    );
}

#[test]
fn fp32_and_int8_match_the_reference_within_1e5() {
    let (m, x) = random(20, &[16, 8], 5, 300);
    for model in [m.clone(), int8(&m)] {
        let bytes = export(&model.spec, &model.weights, &meta()).unwrap();
        let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
        let mut native = model.clone();
        let r = check_parity(&mut native, &mut ort, &x, 300, 100, 1e-5).unwrap();
        assert!(r.passed, "{r:?}");
        assert_eq!(r.argmax_agreement, 1.0);
        assert!(r.max_abs_prob <= 1e-5);
    }
    let q = export(&int8(&m).spec, &int8(&m).weights, &meta()).unwrap();
    let g = decode(&q).unwrap().graph.unwrap();
    assert_eq!(
        g.node
            .iter()
            .filter(|n| n.op_type == "MatMulInteger")
            .count(),
        3
    );
    assert_eq!(
        g.node
            .iter()
            .filter(|n| n.op_type == "DynamicQuantizeLinear")
            .count(),
        3
    );
    assert_eq!(
        g.initializer
            .iter()
            .filter(|t| t.data_type == dtype::INT8)
            .count(),
        3
    );
    let fp = decode(&export(&m.spec, &m.weights, &meta()).unwrap())
        .unwrap()
        .graph
        .unwrap();
    let weight_bytes = |g: &kiln_deploy::onnx::GraphProto| -> usize {
        g.initializer
            .iter()
            .filter(|t| t.name.ends_with(".weight"))
            .map(|t| t.raw_data.len())
            .sum()
    };
    assert_eq!(
        weight_bytes(&g) * 4,
        weight_bytes(&fp),
        "int8 weights take a quarter of fp32's bytes"
    );
}

fn perturb(bytes: &[u8]) -> Vec<u8> {
    let mut model = ModelProto::decode(bytes).unwrap();
    let g = model.graph.as_mut().unwrap();
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.name == "layers.0.weight")
        .unwrap();
    let v = f32::from_le_bytes(w.raw_data[0..4].try_into().unwrap()) + 0.5;
    w.raw_data[0..4].copy_from_slice(&v.to_le_bytes());
    model.encode_to_vec()
}

#[test]
fn one_perturbed_weight_fails_the_parity_gate() {
    let (m, x) = random(20, &[16], 4, 200);
    let bytes = perturb(&export(&m.spec, &m.weights, &meta()).unwrap());
    let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
    let r = check_parity(&mut m.clone(), &mut ort, &x, 200, 100, 1e-5).unwrap();
    assert!(!r.passed);
    assert!(r.max_abs_prob > 1e-3, "{r:?}");
    assert_eq!(r.worst_rows.len(), 5);

    // The stage refuses to deploy a model whose reference disagrees, and writes no ONNX file.
    let mut bad = m.clone();
    let w = bad.weights.f32_mut("layers.0.weight").unwrap();
    w[0] = f32::NAN;
    let schema = Schema {
        version: 1,
        input_columns: (0..20).map(|i| format!("f{i}")).collect(),
        feature_names: (0..20).map(|i| format!("f{i}")).collect(),
        target: "y".into(),
        task: Task::Classification,
        class_labels: (0..4).map(|i| i.to_string()).collect(),
        transforms: vec![],
    };
    let test = Dataset {
        feature_names: schema.feature_names.clone(),
        target: "y".into(),
        features: x,
        labels: vec![0; 200],
    };
    let dir = tempfile::tempdir().unwrap();
    let ok = kiln_deploy::run(
        &Config::default(),
        &[Variant {
            name: "fp32".into(),
            model: m.clone(),
        }],
        &schema,
        &test,
        "h",
        &dir.path().join("ok"),
    )
    .unwrap();
    assert_eq!(ok.files[0].0, "model.onnx");
    assert!(dir.path().join("ok/model.onnx").is_file());
    let err = kiln_deploy::run(
        &Config::default(),
        &[Variant {
            name: "fp32".into(),
            model: bad,
        }],
        &schema,
        &test,
        "h",
        &dir.path().join("bad"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("parity check failed"), "{err}");
    assert!(!dir.path().join("bad/model.onnx").exists());
    assert!(dir.path().join("bad/parity.json").is_file());
}

/// The official tools: onnx.checker (full_check) and Python onnxruntime 1.31 on both
/// files. `cargo xtask test` provides them (KILN_PYTHON); under CI=true their absence fails.
#[test]
fn official_checker_and_python_onnxruntime_accept_both_files() {
    let python = std::env::var("KILN_PYTHON").ok().filter(|p| {
        std::process::Command::new(p)
            .args(["-c", "import onnx, onnxruntime"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    let Some(python) = python else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "KILN_PYTHON with onnx + onnxruntime is required under CI=true; run `cargo xtask setup`"
            );
        }
        eprintln!(
            "note: KILN_PYTHON (onnx + onnxruntime) not available; run `cargo xtask test` to include this check"
        );
        return;
    };
    let (m, x) = random(12, &[10], 3, 50);
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for (name, model) in [("fp32", m.clone()), ("int8", int8(&m))] {
        let path = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&path, export(&model.spec, &model.weights, &meta()).unwrap()).unwrap();
        let p = model.clone().predict(&x, 50).unwrap();
        expected.push(serde_json::json!({ "path": path, "probabilities": p.probabilities, "argmax": p.argmax(), "tol": 1e-5 }));
    }
    let spec = serde_json::json!({ "x": x, "rows": 50, "cols": 12, "models": expected });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = r#"
import json, sys, numpy as np, onnx, onnxruntime as ort
spec = json.load(open(sys.argv[1]))
x = np.array(spec["x"], dtype=np.float32).reshape(spec["rows"], spec["cols"])
assert ort.__version__ == "1.31.1", ort.__version__
for m in spec["models"]:
    onnx.checker.check_model(m["path"], full_check=True)
    s = ort.InferenceSession(m["path"], providers=["CPUExecutionProvider"])
    logits, probs = s.run(["logits", "probabilities"], {"features": x})
    want = np.array(m["probabilities"], dtype=np.float32).reshape(probs.shape)
    diff = float(np.abs(probs - want).max())
    assert diff <= m["tol"], (m["path"], diff)
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
        2
    );
}
