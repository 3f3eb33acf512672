//! Models with learned embeddings through every compression and ONNX Runtime: the tables
//! stay f32 through int8 (dynamic and static), fp16 and both prunings, the exported
//! `Gather` lookups reproduce kiln's reference within 1e-5 on every code (unseen,
//! fractional, out of range, NaN and infinite ones included), and the official checker
//! and Python onnxruntime accept the files.

mod common;

use common::{dense_weights, fp32_and_int8_files, python_check, rng};

use kiln_core::{
    Activation, Dataset, EmbeddingSpec, ModelSpec, NativeModel, Predictor, Task, TensorStore,
};
use kiln_deploy::{ExportMeta, OrtModel, check_model_parity, export};
use kiln_optimize::prune::{Scope, magnitude, remove_units, units_to_keep};
use kiln_optimize::quantize::{Scheme, fp16, quantize};

/// Features `[a, city, b, size, c]`: `city` (5 categories, a 6 × 3 table) and `size`
/// (3 categories, a 4 × 2 table) embedded, then 8 ReLU units and 3 classes.
fn model() -> NativeModel {
    let e = |feature, rows, dim| EmbeddingSpec { feature, rows, dim };
    let spec = ModelSpec::mlp(5, &[8], Activation::Relu, Task::Classification, 3)
        .with_embeddings(vec![e(1, 6, 3), e(3, 4, 2)]);
    let mut next = rng(0x9e37_79b9_7f4a_7c15);
    let mut w = TensorStore::default();
    for (j, e) in spec.embeddings.iter().enumerate() {
        let t = (0..e.rows * e.dim).map(|_| next() * 1.5).collect();
        w.insert_f32(&ModelSpec::embedding_key(j), vec![e.rows, e.dim], t);
    }
    dense_weights(&spec, &mut next, &mut w);
    NativeModel::new(spec, w).unwrap()
}

/// `rows` rows: numbers in [0, 1), every code of both columns (-1 included) and, on some
/// rows, a code the tables do not have: a fraction, the first code past the table, a
/// code below -1, a large one.
fn rows(rows: usize) -> Vec<f32> {
    let mut next = rng(7);
    (0..rows)
        .flat_map(|r| {
            let city = if r % 7 == 6 {
                [5.5, 5.0, -4.0, 9.0][r % 4]
            } else {
                (r % 6) as f32 - 1.0
            };
            let size = if r % 7 == 5 {
                [3.0, 2.5, -2.0, 9.0][r % 4]
            } else {
                (r % 4) as f32 - 1.0
            };
            let mut u = || (next() + 1.0) / 2.0;
            [u(), city, u(), size, u()]
        })
        .collect()
}

fn dataset(x: &[f32], n: usize) -> Dataset {
    Dataset {
        feature_names: ["a", "city", "b", "size", "c"].map(String::from).to_vec(),
        target: "y".into(),
        features: x.to_vec(),
        labels: vec![0; n],
        values: vec![],
    }
}

/// Every compressed form keeps the tables as they were, and ONNX Runtime agrees with
/// kiln's reference on every one within the deploy gate's 1e-5.
#[test]
fn every_compressed_form_keeps_the_tables_and_passes_parity() {
    let m = model();
    let n = 140;
    let x = rows(n);
    let data = dataset(&x, n);
    let (pruned, _) = magnitude(&m, 0.5, Scope::Global).unwrap();
    let narrow = remove_units(&m, &units_to_keep(&m, &[5]).unwrap(), 0.375).unwrap();
    assert_eq!(narrow.spec.layers[0].out_dim, 5);
    let forms = [
        ("fp32", m.clone()),
        ("int8", quantize(&m, Scheme::Dynamic, true, None).unwrap()),
        (
            "static",
            quantize(&m, Scheme::Static, true, Some((&data, 40))).unwrap(),
        ),
        ("fp16", fp16(&m).unwrap()),
        ("magnitude", pruned),
        ("structured", narrow),
    ];
    for (name, form) in &forms {
        assert_eq!(form.spec.embeddings, m.spec.embeddings, "{name}");
        for j in 0..2 {
            let key = ModelSpec::embedding_key(j);
            assert_eq!(
                form.weights.f32(&key).unwrap(),
                m.weights.f32(&key).unwrap(),
                "{name}"
            );
        }
        let bytes = export(&form.spec, &form.weights, &ExportMeta::default()).unwrap();
        let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
        let (r, _) = check_model_parity(form, &mut ort, (&x, &x), n, 64, 1e-5).unwrap();
        assert!(r.passed && r.max_abs_prob <= 1e-5, "{name}: {r:?}");
    }
    // an unseen city code (5.5) looks up the row of a missing one (-1)
    let mut fp = m.clone();
    let mut a = x[..5].to_vec();
    a[1] = -1.0;
    let mut b = a.clone();
    b[1] = 5.5;
    let (pa, pb) = (fp.predict(&a, 1).unwrap(), fp.predict(&b, 1).unwrap());
    assert_eq!(pa.logits, pb.logits);
    let mut c = a.clone();
    c[1] = 2.0;
    assert_ne!(fp.predict(&c, 1).unwrap().logits, pa.logits);
}

/// Codes that are not numbers take row 0 in ONNX Runtime as in kiln: NaN, ±infinity and
/// a huge value (outside what the deploy gate feeds, so compared here directly).
#[test]
fn codes_that_are_no_numbers_take_the_unseen_row_in_onnx_runtime() {
    let m = model();
    let bytes = export(&m.spec, &m.weights, &ExportMeta::default()).unwrap();
    let mut ort = OrtModel::from_bytes(&bytes, 1).unwrap();
    let odd = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e38, -0.0, 4.0];
    let x: Vec<f32> = odd.iter().flat_map(|&c| [0.2, c, 0.4, -1.0, 0.6]).collect();
    let want = m.clone().predict(&x, odd.len()).unwrap();
    let got = ort.predict(&x, odd.len()).unwrap();
    for (a, b) in want.probabilities.iter().zip(&got.probabilities) {
        assert!((a - b).abs() <= 1e-6, "{want:?} vs {got:?}");
    }
    // NaN, the infinities and 3e38 take one row (row 0): the same logits
    for r in 1..4 {
        assert_eq!(&want.logits[r * 3..r * 3 + 3], &want.logits[..3], "row {r}");
    }
    // -0.0 is code 0 (row 1) and 4.0 city's last category (row 5): not row 0
    assert_ne!(&want.logits[12..15], &want.logits[..3]);
    assert_ne!(&want.logits[15..18], &want.logits[..3]);
}

/// The official checker (full_check) and Python onnxruntime 1.31 accept the fp32 and
/// int8 files and compute kiln's probabilities. `cargo xtask test` provides them.
#[test]
fn official_checker_and_python_onnxruntime_accept_embedding_files() {
    let m = model();
    let n = 40;
    let x = rows(n);
    let dir = tempfile::tempdir().unwrap();
    let files = fp32_and_int8_files(&m, &x, n, dir.path());
    let spec = serde_json::json!({"x": x, "rows": n, "files": files});
    let script = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
spec = json.load(open(sys.argv[1]))
x = np.array(spec["x"], dtype=np.float32).reshape(spec["rows"], 5)
for f in spec["files"]:
    onnx.checker.check_model(f["path"], full_check=True)
    model = onnx.load(f["path"])
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gather") == 5 and ops.count("Concat") == 1, ops
    tables = {t.name: list(t.dims) for t in model.graph.initializer if t.name.startswith("embeddings.") and t.name.endswith(".weight")}
    assert tables == {"embeddings.0.weight": [6, 3], "embeddings.1.weight": [4, 2]}, tables
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
