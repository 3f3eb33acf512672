//! The kiln side of `cargo xtask bench train`: one epoch of MNIST (784-128-64-10, Adam
//! 1e-3, batch 64, no dropout) on data already in memory, timed inside the process, and a
//! large sgemm on the same threads as the practical peak. Prints one JSON line.
//!
//! Threads: dfdx's matmul runs on rayon's global pool, so the caller sets
//! `RAYON_NUM_THREADS`. Usage: `bench_train <mnist train prefix> [--sgemm N]`.

use dfdx::prelude::*;
use kiln_core::{Dataset, NoProgress};
use kiln_train::{Config, ModelConfig, OptimizerConfig};
use std::path::PathBuf;
use std::time::Instant;

/// The kiln binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--sgemm") {
        let n: usize = args.get(i + 1).map_or(Ok(2048), |s| s.parse())?;
        return sgemm(n);
    }
    let prefix = PathBuf::from(
        args.first()
            .ok_or("usage: bench_train <mnist train prefix>")?,
    );
    let (img, lab) = kiln_preprocess::idx::idx_pair(&prefix)?;
    let images = kiln_preprocess::idx::read_idx(&img)?;
    let labels = kiln_preprocess::idx::read_idx(&lab)?;
    let w = images.dims[1] * images.dims[2];
    let train = Dataset {
        feature_names: (0..w).map(|j| format!("pixel_{j}")).collect(),
        target: "label".into(),
        features: images.data.iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels: labels.data.iter().map(|&l| u32::from(l)).collect(),
        values: vec![],
    };
    // a token validation split, so the per-epoch evaluation costs next to nothing
    let valid = Dataset {
        features: train.features[..64 * w].to_vec(),
        labels: train.labels[..64].to_vec(),
        ..train.clone()
    };
    let config = Config {
        model: Some(ModelConfig {
            kind: kiln_train::ModelKind::Mlp,
            hidden: vec![128, 64],
            activation: kiln_core::Activation::Relu,
            dropout: 0.0,
            norm: None,
            embeddings: Default::default(),
            image: None,
            conv: Vec::new(),
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
        "{{\"samples_per_sec\": {:.1}, \"rows\": {}, \"train_accuracy\": {:.4}}}",
        o.samples_per_sec,
        train.n_rows(),
        o.history.epochs[0].train_metric
    );
    Ok(())
}

/// GFLOP/s of an n x n x n f32 matmul with dfdx (best of 5, after a warm-up).
fn sgemm(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dev = Cpu::seed_from_u64(0);
    let a: Tensor<(usize, usize), f32, Cpu> = dev.sample_uniform_like(&(n, n));
    let b: Tensor<(usize, usize), f32, Cpu> = dev.sample_uniform_like(&(n, n));
    let _ = a.clone().matmul(b.clone());
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let c = a.clone().matmul(b.clone());
        std::hint::black_box(c);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gflops = 2.0 * (n as f64).powi(3) / best / 1e9;
    println!("{{\"sgemm_gflops\": {gflops:.2}, \"n\": {n}}}");
    Ok(())
}
