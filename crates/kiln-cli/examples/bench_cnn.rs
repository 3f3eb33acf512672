//! The kiln side of `cargo xtask bench cnn`. Training: one epoch over the first `rows`
//! MNIST images (Adam 1e-3, batch 64, no dropout) of one of two nets — `pipeline`
//! (mnist-cnn.toml's conv16-pool-conv32-pool-fc128) or `examples` (PyTorch's
//! examples/mnist: conv32-conv64-pool-fc128) — timed inside the process. `--onnx`:
//! the pipeline net after that epoch, exported as fp32 and as static int8 (calibrated on
//! 1,000 training images), each timed in ONNX Runtime at batch 256 on the given threads,
//! and their test accuracy over `rows` test images. Prints one JSON line per result.
//!
//! Threads: dfdx's matmul runs on rayon's global pool, so the caller sets
//! `RAYON_NUM_THREADS`. Usage: `bench_cnn <mnist prefix> <pipeline|examples> <rows>
//! [--onnx <test prefix> <threads>]`.

use kiln_core::{ConvStep, Dataset, NoProgress, Predictor};
use kiln_train::{Config, ModelConfig, OptimizerConfig};
use std::path::Path;
use std::time::Instant;

/// The kiln binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_cnn <mnist prefix> <pipeline|examples> <rows> [--onnx <test prefix> <threads>]";
    let (prefix, net, rows) = match &args[..] {
        [p, n, r, ..] => (p, n.as_str(), r.parse::<usize>()?),
        _ => return Err(usage.into()),
    };
    let train = mnist(Path::new(prefix), rows)?;
    let conv = |channels, padding| ConvStep::Conv2d {
        channels,
        kernel: 3,
        stride: 1,
        padding,
        activation: kiln_core::Activation::Relu,
    };
    let pool = ConvStep::MaxPool {
        kernel: 2,
        stride: None,
    };
    let steps = match net {
        "pipeline" => vec![conv(16, 1), pool, conv(32, 1), pool],
        "examples" => vec![conv(32, 0), conv(64, 0), pool],
        _ => return Err(usage.into()),
    };
    // a token validation split, so the per-epoch evaluation costs next to nothing
    let valid = Dataset {
        features: train.features[..64 * 784].to_vec(),
        labels: train.labels[..64].to_vec(),
        ..train.clone()
    };
    let config = Config {
        model: Some(ModelConfig {
            kind: kiln_train::ModelKind::Mlp,
            hidden: vec![128],
            activation: kiln_core::Activation::Relu,
            dropout: 0.0,
            norm: None,
            embeddings: Default::default(),
            image: Some([1, 28, 28]),
            conv: steps,
        }),
        loss: Default::default(),
        huber_delta: 1.0,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..Default::default()
        },
        schedule: Default::default(),
        epochs: 1,
        batch_size: 64,
        early_stopping: None,
        device: kiln_train::Device::Cpu,
        checkpoint_every: 0,
        resume: false,
        sweep: None,
        data: Default::default(),
        seed: 42,
    };
    let out = tempfile::tempdir()?;
    let o = kiln_train::run(&config, &train, &valid, 10, out.path(), &NoProgress)?;
    println!(
        "{{\"net\": \"{net}\", \"samples_per_sec\": {:.1}, \"rows\": {}, \"train_accuracy\": {:.4}}}",
        o.samples_per_sec,
        train.n_rows(),
        o.history.epochs[0].train_metric
    );
    if let [_, _, _, flag, test, threads] = &args[..]
        && flag == "--onnx"
    {
        let threads: usize = threads.parse()?;
        let test = mnist(Path::new(test), rows)?;
        let fp32 = kiln_core::NativeModel::load(out.path())?;
        let int8 = kiln_optimize::quantize::quantize(
            &fp32,
            kiln_optimize::quantize::Scheme::Static,
            true,
            Some((&train, 1000)),
        )?;
        for (variant, m) in [("fp32", &fp32), ("int8-static", &int8)] {
            let bytes = kiln_deploy::export(&m.spec, &m.weights, &Default::default())?;
            let mut ort = kiln_deploy::OrtModel::from_bytes(&bytes, threads)?;
            let batch = 256;
            let x = &test.features[..batch * 784];
            ort.predict(x, batch)?;
            let mut best = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                std::hint::black_box(ort.predict(x, batch)?);
                best.push(t.elapsed().as_secs_f64());
            }
            best.sort_by(f64::total_cmp);
            let p = ort.predict(&test.features, test.n_rows())?;
            let correct = p
                .argmax()
                .iter()
                .zip(&test.labels)
                .filter(|(a, y)| a == y)
                .count();
            println!(
                "{{\"variant\": \"{variant}\", \"threads\": {threads}, \"batch256_rows_per_s\": {:.1}, \"test_accuracy\": {:.5}, \"onnx_bytes\": {}}}",
                batch as f64 / best[best.len() / 2],
                correct as f64 / test.n_rows() as f64,
                bytes.len()
            );
        }
    }
    Ok(())
}

/// The first `rows` images of an MNIST IDX pair, scaled to [0, 1].
fn mnist(prefix: &Path, rows: usize) -> Result<Dataset, Box<dyn std::error::Error>> {
    let (img, lab) = kiln_preprocess::idx::idx_pair(prefix)?;
    let images = kiln_preprocess::idx::read_idx(&img)?;
    let labels = kiln_preprocess::idx::read_idx(&lab)?;
    let n = rows.min(labels.data.len());
    Ok(Dataset {
        feature_names: (0..784).map(|j| format!("pixel_{j}")).collect(),
        target: "label".into(),
        features: images.data[..n * 784]
            .iter()
            .map(|&p| f32::from(p) / 255.0)
            .collect(),
        labels: labels.data[..n].iter().map(|&l| u32::from(l)).collect(),
        values: vec![],
    })
}
