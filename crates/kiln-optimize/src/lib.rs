//! kiln-optimize: compresses a trained model. Candidates — int8 quantization (dynamic or
//! static activations, weights per channel or per tensor), magnitude pruning to an exact
//! sparsity, structured pruning that removes hidden units, optionally in steps with
//! fine-tuning between them, and combinations — are each scored on the validation split,
//! exported to ONNX for their size and timed in ONNX Runtime at batch 1 and 1024; the
//! smallest one within `max_accuracy_drop` is chosen (latency never decides, so reruns
//! agree) and written as the stage's model.
//!
//! ```
//! use kiln_core::{Activation, Dataset, ModelSpec, NativeModel, Task, TensorStore};
//! use kiln_optimize::{Config, QuantizeConfig, run};
//! let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
//! let mut w = TensorStore::default();
//! w.insert_f32("layers.0.weight", vec![2, 2], vec![1.0, -1.0, -0.5, 0.5]);
//! w.insert_f32("layers.0.bias", vec![2], vec![0.0, 0.0]);
//! let model = NativeModel::new(spec, w).unwrap();
//! let valid = Dataset { feature_names: vec!["a".into(), "b".into()], target: "y".into(),
//!     features: vec![1.0, 0.0, 0.0, 1.0], labels: vec![0, 1], values: vec![] };
//! let config = Config { quantize: Some(QuantizeConfig::default()), max_accuracy_drop: Some(0.0),
//!     latency: false, ..Default::default() };
//! let out = run(&config, &model, &valid, &valid, &std::env::temp_dir().join("kiln-optimize-doc")).unwrap();
//! assert_eq!(out.candidates[0].valid_accuracy, 1.0);
//! assert_eq!(out.chosen, "int8");
//! assert!(out.model.spec.quantization.is_some());
//! ```

mod build;
pub mod channels;
mod config;
mod latency;
pub mod prune;
pub mod quantize;

pub use build::build;
pub use config::{CandidateConfig, Config, FinetuneConfig, QuantizeConfig, QuantizeMode};
pub use latency::LATENCY_FILE;
pub use prune::Scope;
pub use quantize::Scheme;

use kiln_core::dataset::{Moments, SplitData};
use kiln_core::{Dataset, EVAL_BATCH, ModelSpec, NativeModel, Predictor};
use kiln_train::Data;
use std::path::Path;

/// Errors of the optimization stage.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    /// The configuration cannot be applied.
    #[error("{0}")]
    Config(String),
    /// No candidate stayed within the accuracy budget (candidates.json and every
    /// candidate's model are still written).
    #[error("no candidate is within max_accuracy_drop = {budget}:\n{table}")]
    OverBudget {
        /// The budget.
        budget: f64,
        /// One line per candidate.
        table: String,
    },
    /// Reading or writing artifacts failed.
    #[error(transparent)]
    Core(#[from] kiln_core::CoreError),
    /// Fine-tuning failed.
    #[error("fine-tuning: {0}")]
    Train(#[from] kiln_train::TrainError),
    /// Exporting or timing a candidate in ONNX Runtime failed.
    #[error("{0}")]
    Deploy(#[from] kiln_deploy::DeployError),
}

/// Result alias for this crate.
pub type Result<T, E = OptimizeError> = std::result::Result<T, E>;

pub use kiln_core::artifact::candidates::{Candidate, Candidates, Latency, Timings};

/// What the stage produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The chosen (compressed) model.
    pub model: NativeModel,
    /// Name of the chosen candidate.
    pub chosen: String,
    /// Every candidate evaluated, the reference fp32 first.
    pub candidates: Vec<Candidate>,
    /// Their latency, when measured (same order).
    pub latency: Vec<Latency>,
}

/// The budget's score of `model` on `data`, predicted in batches of [`EVAL_BATCH`] rows:
/// accuracy for class labels, R² for regression targets (so `max_accuracy_drop` bounds
/// the loss of R² there).
pub fn score(model: &mut NativeModel, data: &Dataset) -> Result<f64> {
    let p = model.predict_batched(&data.features, data.n_rows(), EVAL_BATCH)?;
    if data.is_regression() {
        return Ok(data.r2(&p.logits));
    }
    let correct = p
        .argmax()
        .iter()
        .zip(&data.labels)
        .filter(|(a, b)| a == b)
        .count();
    Ok(correct as f64 / data.n_rows().max(1) as f64)
}

/// [`score`] of a split held in memory or streamed shard by shard: R² from the sums of
/// the parts (the targets' spread merged part by part).
pub fn score_split(model: &mut NativeModel, data: &SplitData<'_>) -> Result<f64> {
    if let SplitData::Memory(d) = data {
        return score(model, d);
    }
    let (mut correct, mut sse, mut targets) = (0usize, 0.0f64, Moments::default());
    data.for_each_part(&mut |part: &Dataset, _| -> Result<()> {
        let p = model.predict_batched(&part.features, part.n_rows(), EVAL_BATCH)?;
        correct += p
            .argmax()
            .iter()
            .zip(&part.labels)
            .filter(|(a, b)| a == b)
            .count();
        sse += p
            .logits
            .iter()
            .zip(&part.values)
            .map(|(&y, &t)| (f64::from(y) - f64::from(t)).powi(2))
            .sum::<f64>();
        targets = targets.merge(Moments::of(part.values.iter().map(|&v| f64::from(v))));
        Ok(())
    })?;
    if !data.is_regression() {
        return Ok(correct as f64 / data.n_rows().max(1) as f64);
    }
    Ok(if targets.m2 > 0.0 {
        1.0 - sse / targets.m2
    } else if sse == 0.0 {
        1.0
    } else {
        0.0
    })
}

/// Runs the stage: builds the candidates, scores them on `valid`, exports each for its
/// size (and time, with `config.latency`), picks the smallest ONNX file within the
/// budget (ties: the higher score, then the earlier candidate) and writes it
/// (spec.json, weights.safetensors) plus candidates.json, latency.timings.json and every
/// candidate's model under `candidates/<name>/`.
pub fn run(
    config: &Config,
    model: &NativeModel,
    train: &Dataset,
    valid: &Dataset,
    out_dir: &Path,
) -> Result<Output> {
    run_on(
        config,
        model,
        &Data::Memory(train),
        &Data::Memory(valid),
        out_dir,
    )
}

/// [`run`] on splits held in memory or streamed from their shards ([`Data`]): scoring
/// and fine-tuning read them part by part; calibration and latency take their first
/// rows.
pub fn run_on(
    config: &Config,
    model: &NativeModel,
    train: &Data<'_>,
    valid: &Data<'_>,
    out_dir: &Path,
) -> Result<Output> {
    let _span = tracing::info_span!("optimize").entered();
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(OptimizeError::Config(format!("{key}: {msg}")));
    }
    if model.spec.quantization.is_some() {
        return Err(OptimizeError::Config(
            "the input model is already quantized; optimize a trained fp32 model".into(),
        ));
    }
    let meta = kiln_deploy::ExportMeta {
        feature_names: valid.feature_names().to_vec(),
        ..Default::default()
    };
    let export = |m: &NativeModel| kiln_deploy::export(&m.spec, &m.weights, &meta);
    let mut fp32 = model.clone();
    let base = score_split(&mut fp32, &valid.split_data())?;
    let fp32_bytes = export(model)?;
    let count = |m: &NativeModel| -> usize {
        (0..m.spec.layers.len())
            .map(|i| {
                let w = format!("layers.{i}.weight");
                let nz_w = match m.weights.f32(&w) {
                    Ok(v) => v.iter().filter(|x| **x != 0.0).count(),
                    Err(_) => m
                        .weights
                        .i8(&w)
                        .map_or(0, |v| v.iter().filter(|x| **x != 0).count()),
                };
                let b = m.weights.f32(&format!("layers.{i}.bias"));
                nz_w + b.map_or(0, |v| v.iter().filter(|x| **x != 0.0).count())
            })
            .sum::<usize>()
            + (0..m.spec.embeddings.len())
                .map(|j| {
                    m.weights
                        .f32(&ModelSpec::embedding_key(j))
                        .map_or(0, |v| v.iter().filter(|x| **x != 0.0).count())
                })
                .sum::<usize>()
    };
    let mut candidates = vec![Candidate {
        name: "fp32".into(),
        params: model.spec.n_params(),
        nonzeros: count(model),
        weight_bytes: model.weights.data_bytes(),
        onnx_bytes: fp32_bytes.len(),
        valid_accuracy: base,
        accuracy_drop: 0.0,
        chosen: false,
        reason: "reference".into(),
    }];
    let mut built = vec![(model.clone(), fp32_bytes)];
    for c in config.all_candidates() {
        let name = c.resolved_name();
        let _span = tracing::info_span!("candidate", %name).entered();
        let mut m = build(&c, model, config, train, valid)?;
        let acc = score_split(&mut m, &valid.split_data())?;
        let bytes = export(&m)?;
        tracing::info!(acc, drop = base - acc, bytes = bytes.len(), "candidate");
        candidates.push(Candidate {
            name,
            params: m.spec.n_params(),
            nonzeros: count(&m),
            weight_bytes: m.weights.data_bytes(),
            onnx_bytes: bytes.len(),
            valid_accuracy: acc,
            accuracy_drop: base - acc,
            chosen: false,
            reason: String::new(),
        });
        built.push((m, bytes));
    }
    // the choice: smallest ONNX file within budget, never a timing
    let within = |c: &Candidate| {
        config
            .max_accuracy_drop
            .is_none_or(|b| c.accuracy_drop <= b + 1e-12)
    };
    let mut order: Vec<usize> = (1..candidates.len())
        .filter(|&i| within(&candidates[i]))
        .collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&candidates[a], &candidates[b]);
        x.onnx_bytes
            .cmp(&y.onnx_bytes)
            .then(y.valid_accuracy.total_cmp(&x.valid_accuracy))
            .then(a.cmp(&b))
    });
    let chosen = order.first().copied();
    for i in 1..candidates.len() {
        let c = &candidates[i];
        let reason = if Some(i) == chosen {
            "smallest within budget".to_string()
        } else if !within(c) {
            format!(
                "drop {:.4} over budget {:.4}",
                c.accuracy_drop,
                config.max_accuracy_drop.unwrap_or(0.0)
            )
        } else {
            let ch = &candidates[chosen.unwrap_or(i)];
            format!("larger ({} B vs {} B)", c.onnx_bytes, ch.onnx_bytes)
        };
        candidates[i].reason = reason;
        candidates[i].chosen = Some(i) == chosen;
    }
    let lat = if config.latency {
        latency::measure(&built, &candidates, &*valid.split_data().head(1024)?)?
    } else {
        Vec::new()
    };
    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    for ((m, _), c) in built.iter().zip(&candidates).skip(1) {
        m.save(&out_dir.join("candidates").join(&c.name))?;
    }
    kiln_core::artifact::save(
        out_dir,
        &Candidates {
            candidates: candidates.clone(),
        },
    )?;
    if !lat.is_empty() {
        kiln_core::artifact::save(
            out_dir,
            &Timings {
                latency: lat.clone(),
            },
        )?;
    }
    let Some(ci) = chosen else {
        return Err(OptimizeError::OverBudget {
            budget: config.max_accuracy_drop.unwrap_or(0.0),
            table: table(&candidates, &lat),
        });
    };
    let model = built.swap_remove(ci).0;
    model.save(out_dir)?;
    tracing::info!(chosen = %candidates[ci].name, "optimized");
    Ok(Output {
        model,
        chosen: candidates[ci].name.clone(),
        candidates,
        latency: lat,
    })
}

/// The candidates as text lines (the over-budget error).
pub fn table(candidates: &[Candidate], latency: &[Latency]) -> String {
    candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let t = latency
                .get(i)
                .map(|l| {
                    format!(
                        ", {:.3} ms at batch 1, {:.2} ms at 1024",
                        l.batch1_ms, l.batch1024_ms
                    )
                })
                .unwrap_or_default();
            format!(
                "  {}: accuracy {:.4} (drop {:.4}), {} non-zeros, {} ONNX bytes{t}: {}",
                c.name, c.valid_accuracy, c.accuracy_drop, c.nonzeros, c.onnx_bytes, c.reason
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::toml_like;
    use kiln_core::{Activation, ModelSpec, Task, TensorStore};

    /// 20 -> 64 -> 3: large enough that weight bytes, not graph nodes, decide ONNX sizes.
    fn model() -> NativeModel {
        let spec = ModelSpec::mlp(20, &[64], Activation::Relu, Task::Classification, 3);
        let mut w = TensorStore::default();
        let w0: Vec<f32> = (0..20 * 64)
            .map(|i| (i as f32 * 0.37).sin() * 0.5)
            .collect();
        let w1: Vec<f32> = (0..64 * 3).map(|i| (i as f32 * 0.71).cos() * 0.5).collect();
        w.insert_f32("layers.0.weight", vec![20, 64], w0);
        w.insert_f32(
            "layers.0.bias",
            vec![64],
            (0..64).map(|i| (i as f32 * 0.1).sin() * 0.1).collect(),
        );
        w.insert_f32("layers.1.weight", vec![64, 3], w1);
        w.insert_f32("layers.1.bias", vec![3], vec![0.0, 0.1, -0.1]);
        NativeModel::new(spec, w).unwrap()
    }

    fn data(m: &mut NativeModel) -> Dataset {
        let x: Vec<f32> = (0..200 * 20)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let labels = m.predict(&x, 200).unwrap().argmax();
        Dataset {
            feature_names: (0..20).map(|i| format!("f{i}")).collect(),
            target: "y".into(),
            features: x,
            labels,
            values: vec![],
        }
    }

    /// The budget picks the smallest candidate within it: with a generous budget the
    /// structured + int8 model (smallest file); with a zero budget only candidates that
    /// keep every validation prediction (labels are fp32's own, so fp32-equal models
    /// score 1.0) qualify.
    #[test]
    fn budget_picks_the_smallest_candidate_within_it() {
        let mut m = model();
        let valid = data(&mut m);
        let cands = vec![
            toml_like("q=dynamic"),
            toml_like("p=0.5"),
            toml_like("s=0.5,q=dynamic"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let loose = Config {
            candidates: cands.clone(),
            max_accuracy_drop: Some(1.0),
            latency: false,
            ..Default::default()
        };
        let out = run(&loose, &m, &valid, &valid, dir.path()).unwrap();
        let names: Vec<&str> = out.candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["fp32", "int8", "sparse-50", "structured-50-int8"]);
        assert_eq!(out.chosen, "structured-50-int8");
        let smallest = out.candidates[1..]
            .iter()
            .map(|c| c.onnx_bytes)
            .min()
            .unwrap();
        assert_eq!(out.candidates[3].onnx_bytes, smallest);
        // fp32 holds one zero weight (sin 0) and one zero bias per layer; sparse-50 zeroes
        // half of each layer's weights (1280, 192), the old zero among them
        assert_eq!(out.candidates[0].nonzeros, 1279 + 192 + 63 + 2);
        assert_eq!(out.candidates[2].nonzeros, 640 + 96 + 63 + 2);
        assert_eq!(out.model.spec.layers[0].out_dim, 32);
        assert!(dir.path().join("candidates/sparse-50/spec.json").is_file());
        assert!(dir.path().join("weights.safetensors").is_file());

        // zero budget: everything that changes a prediction is out; the error lists all
        let strict = Config {
            candidates: vec![toml_like("s=0.5")],
            max_accuracy_drop: Some(0.0),
            latency: false,
            ..Default::default()
        };
        let dir2 = tempfile::tempdir().unwrap();
        let r = run(&strict, &m, &valid, &valid, dir2.path());
        let cands = kiln_core::artifact::load::<Candidates>(dir2.path())
            .unwrap()
            .candidates;
        // removing half the hidden units of this fixed model keeps 73 of the 200
        // predictions (fp32's own labels), so it must be out, and with it every candidate
        assert_eq!(cands[1].name, "structured-50");
        assert_eq!(cands[1].valid_accuracy, 0.365, "{cands:?}");
        assert!((cands[1].accuracy_drop - 0.635).abs() < 1e-12, "{cands:?}");
        assert!(!cands[1].chosen && !cands[0].chosen);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("no candidate is within") && e.contains("structured-50"),
            "{e}"
        );
        assert!(!dir2.path().join("weights.safetensors").exists());
        assert!(
            dir2.path()
                .join("candidates/structured-50/spec.json")
                .is_file()
        );
    }
}
