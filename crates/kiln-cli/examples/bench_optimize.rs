//! The kiln side of `cargo xtask bench optimize`: the fp32 MNIST model of a pipeline run
//! and its compressed forms (int8 dynamic, int8 static, 50 % structured-pruned, and
//! structured + int8), each exported by kiln and run by ONNX Runtime on one thread at
//! batch 1 and 1024, alternating variant by variant in every pair. Prints one JSON line
//! per variant and pair. Usage: `bench_optimize <run dir> <pairs>`.

use kiln_core::dataset::shards::{Shards, Split};
use kiln_core::{NativeModel, Predictor};
use kiln_optimize::{CandidateConfig, Config};
use std::path::PathBuf;
use std::time::Instant;

/// The kiln binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = PathBuf::from(
        args.first()
            .ok_or("usage: bench_optimize <run dir> <pairs>")?,
    );
    let pairs: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let fp32 = NativeModel::load(&run.join("train"))?;
    let data = Shards::open(&run.join("data"))?;
    let train = data.split(Split::Train)?;
    let test = data.split(Split::Test)?;
    let cfg = Config::default();
    use kiln_optimize::QuantizeMode::{Dynamic, Static};
    let cand = |s: Option<f64>, q: Option<kiln_optimize::QuantizeMode>| CandidateConfig {
        structured: s,
        quantize: q,
        ..Default::default()
    };
    let mut variants = vec![("fp32".to_string(), fp32.clone())];
    for c in [
        cand(None, Some(Dynamic)),
        cand(None, Some(Static)),
        cand(Some(0.5), None),
        cand(Some(0.5), Some(Dynamic)),
    ] {
        // latency does not depend on fine-tuning, so none here
        let m = kiln_optimize::build(
            &c,
            &fp32,
            &cfg,
            &kiln_train::Data::Memory(&train),
            &kiln_train::Data::Memory(&test),
        )?;
        variants.push((c.resolved_name(), m));
    }
    let meta = kiln_deploy::ExportMeta::default();
    let mut sessions = Vec::new();
    for (name, m) in &variants {
        let bytes = kiln_deploy::export(&m.spec, &m.weights, &meta)?;
        sessions.push((
            name.clone(),
            bytes.len(),
            kiln_deploy::OrtModel::from_bytes(&bytes, 1)?,
        ));
    }
    let x1024 = &test.features[..1024 * test.n_features()];
    let x1 = &test.features[..test.n_features()];
    for (_, _, s) in &mut sessions {
        s.predict(x1024, 1024)?; // warm-up
    }
    for pair in 0..pairs {
        for (name, bytes, s) in &mut sessions {
            let mut t1 = Vec::new();
            for _ in 0..300 {
                let t = Instant::now();
                s.predict(x1, 1)?;
                t1.push(t.elapsed().as_secs_f64());
            }
            let mut t1024 = Vec::new();
            for _ in 0..15 {
                let t = Instant::now();
                s.predict(x1024, 1024)?;
                t1024.push(t.elapsed().as_secs_f64());
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            println!(
                "{{\"pair\": {pair}, \"variant\": \"{name}\", \"onnx_bytes\": {bytes}, \"batch1_per_s\": {}, \"batch1024_rows_per_s\": {}}}",
                1.0 / med(&mut t1),
                1024.0 / med(&mut t1024)
            );
        }
    }
    Ok(())
}
