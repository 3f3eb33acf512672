//! Shared by kiln-optimize's integration tests: seeded weights, and the official checker
//! and Python onnxruntime run over exported files.

// each test crate uses its own part of these helpers
#![allow(dead_code)]

use kiln_core::{ModelSpec, NativeModel, Predictor, TensorStore};
use kiln_optimize::quantize::{Scheme, quantize};
use std::path::Path;

/// xorshift64 values in [-1, 1).
pub fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Seeded filters (scaled by 2 / sqrt(fan-in)) and small biases for every convolution
/// of `spec`, into `w`.
pub fn conv_weights(spec: &ModelSpec, next: &mut impl FnMut() -> f32, w: &mut TensorStore) {
    let Some(image) = spec.image else { return };
    let mut channels = image.channels;
    for (i, step) in spec.conv.iter().enumerate() {
        if let kiln_core::ConvStep::Conv2d {
            channels: out,
            kernel,
            ..
        } = *step
        {
            let k2 = channels * kernel * kernel;
            let s = 2.0 / (k2 as f32).sqrt();
            w.insert_f32(
                &format!("conv.{i}.weight"),
                vec![k2, out],
                (0..k2 * out).map(|_| next() * s).collect(),
            );
            w.insert_f32(
                &format!("conv.{i}.bias"),
                vec![out],
                (0..out).map(|_| next() * 0.1).collect(),
            );
            channels = out;
        }
    }
}

/// Seeded weights (scaled by 2 / sqrt(fan-in)) and small biases for every dense layer
/// of `spec`, into `w`.
pub fn dense_weights(spec: &ModelSpec, next: &mut impl FnMut() -> f32, w: &mut TensorStore) {
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
}

/// Runs `script` (Python, reading the JSON `spec` from the path in `sys.argv[1]`) with
/// `KILN_PYTHON`, which `cargo xtask test` provides with onnx and onnxruntime; fails the
/// test with the script's output when it fails. Returns its standard output.
pub fn python_check(script: &str, spec: &serde_json::Value, dir: &Path) -> String {
    let python = std::env::var("KILN_PYTHON").unwrap_or_else(|_| {
        panic!("KILN_PYTHON is unset: this test needs a python with onnx and onnxruntime; run the suite with `cargo xtask test`, which installs them")
    });
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&spec_path)
        .output()
        .unwrap_or_else(|e| {
            panic!("KILN_PYTHON={python} does not run: {e}; run `cargo xtask setup`")
        });
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `m` and its int8 (dynamic, per channel) form exported into `dir` as fp32.onnx and
/// int8.onnx, with kiln's probabilities on the `n` rows `x`: the `files` of the Python
/// checks' spec.
pub fn fp32_and_int8_files(
    m: &NativeModel,
    x: &[f32],
    n: usize,
    dir: &Path,
) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    for (name, form) in [
        ("fp32", m.clone()),
        ("int8", quantize(m, Scheme::Dynamic, true, None).unwrap()),
    ] {
        let path = dir.join(format!("{name}.onnx"));
        let meta = kiln_deploy::ExportMeta::default();
        std::fs::write(
            &path,
            kiln_deploy::export(&form.spec, &form.weights, &meta).unwrap(),
        )
        .unwrap();
        let p = form.clone().predict(x, n).unwrap();
        files.push(serde_json::json!({"path": path, "probabilities": p.probabilities}));
    }
    files
}
