//! kiln-train: trains a network described at run time (an MLP of any depth) with dfdx,
//! for classification (softmax cross-entropy) or regression (MSE / Huber on the
//! standardized target, folded back into the output layer), keeps the weights of the best
//! validation epoch and writes the model artifact: `spec.json`, `weights.safetensors`,
//! `history.json` (and the same as `history.csv`).
//!
//! ```
//! use kiln_core::{Dataset, NativeModel, NoProgress, Predictor};
//! use kiln_train::{Config, ModelConfig, run};
//! // Two separable blobs: class = (x0 + x1 > 0).
//! let mut features = Vec::new();
//! let mut labels = Vec::new();
//! for i in 0..200 {
//!     let (a, b) = ((i % 17) as f32 / 8.0 - 1.0, (i % 13) as f32 / 6.0 - 1.0);
//!     features.extend([a, b]);
//!     labels.push(u32::from(a + b > 0.0));
//! }
//! let data = Dataset { feature_names: vec!["x0".into(), "x1".into()], target: "y".into(), features, labels, values: vec![] };
//! let config = Config {
//!     model: ModelConfig { hidden: vec![8], ..Default::default() },
//!     optimizer: kiln_train::OptimizerConfig { lr: 0.05, ..Default::default() },
//!     epochs: 20,
//!     batch_size: 16,
//!     seed: 1,
//!     ..Default::default()
//! };
//! let out_dir = std::env::temp_dir().join("kiln-train-doc");
//! let out = run(&config, &data, &data, 2, &out_dir, &NoProgress).unwrap();
//! assert!(out.best_valid_metric > 0.9); // accuracy
//! let mut model = NativeModel::load(&out_dir).unwrap();
//! assert_eq!(model.predict(&[1.0, 1.0], 1).unwrap().argmax(), vec![1]);
//! ```

mod config;
mod finetune;
mod net;
mod sweep;

pub use finetune::{Finetune, finetune};
pub use sweep::{MAX_TRIALS, Strategy, Sweep, SweepResults, Trial};

pub use config::{
    Config, Device, EarlyStopping, Loss, ModelConfig, ModelKind, OptimizerConfig, OptimizerKind,
    Schedule, ScheduleKind, StopMetric,
};

use dfdx::prelude::*;
use kiln_core::{Dataset, ModelSpec, NativeModel, Predictor, Progress, Task, TensorStore};
use net::Mlp;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Errors of the training stage.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration cannot be used with this data or build.
    #[error("{0}")]
    Config(String),
    /// The device (CPU allocator or CUDA) failed.
    #[error("device error: {0}")]
    Device(String),
    /// Training diverged (NaN or infinite loss).
    #[error("training diverged at epoch {epoch}: the loss became {loss}; lower the learning rate")]
    Diverged {
        /// Epoch (1-based) where it happened.
        epoch: usize,
        /// The loss value.
        loss: f32,
    },
    /// Training was stopped on purpose after an epoch (see [`run_until`]); its checkpoint
    /// is on disk and a later [`run`] resumes from it.
    #[error("training halted after epoch {epoch}; run again to resume from its checkpoint")]
    Halted {
        /// The last completed epoch.
        epoch: usize,
    },
    /// Reading or writing artifacts failed.
    #[error(transparent)]
    Core(#[from] kiln_core::CoreError),
}

/// Result alias for this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub use kiln_core::artifact::history::{EpochRecord, History};

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The trained model (best validation epoch).
    pub model: NativeModel,
    /// Per-epoch history.
    pub history: History,
    /// Validation metric (accuracy or R²) of the kept weights.
    pub best_valid_metric: f64,
    /// Training rows processed per second (wall clock, informational only).
    pub samples_per_sec: f64,
    /// Set when training continued from a checkpoint written after this epoch.
    pub resumed_from_epoch: Option<usize>,
}

/// Trains on `train`, selects on `valid`, writes the model artifact into `out_dir`.
/// With `resume` (the default) a checkpoint left in `out_dir/checkpoint` by an interrupted
/// run of the same config and data is continued, ending with the same bytes.
pub fn run(
    config: &Config,
    train: &Dataset,
    valid: &Dataset,
    n_classes: usize,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<Output> {
    run_until(config, train, valid, n_classes, out_dir, progress, None)
}

/// [`run`], stopping with [`TrainError::Halted`] after epoch `halt_after` (its checkpoint
/// written) — what an interrupted run leaves behind, for tests and for callers that
/// train in slices.
pub fn run_until(
    config: &Config,
    train: &Dataset,
    valid: &Dataset,
    n_classes: usize,
    out_dir: &Path,
    progress: &dyn Progress,
    halt_after: Option<usize>,
) -> Result<Output> {
    if let Some(sw) = &config.sweep {
        if let Some((key, msg)) = config.problems().into_iter().next() {
            return Err(TrainError::Config(format!("{key}: {msg}")));
        }
        return sweep::run_sweep(sw, config, train, valid, n_classes, out_dir, progress);
    }
    let task = if train.is_regression() {
        Task::Regression
    } else {
        Task::Classification
    };
    check(config, task, train, valid, n_classes)?;
    let outputs = match task {
        Task::Classification => n_classes,
        Task::Regression => 1,
    };
    let spec = ModelSpec::mlp(
        train.n_features(),
        &config.model.hidden,
        config.model.activation,
        task,
        outputs,
    )
    .with_norm(config.model.norm);
    match config.device {
        // (dfdx's buffer cache stays off: its pop races when two threads share the device)
        Device::Cpu => net::on_half_pool(|| train_on(Cpu::seed_from_u64(config.seed), spec, config, train, valid, out_dir, progress, halt_after)),
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            let dev = Cuda::try_seed_from_u64(config.seed).map_err(|e| TrainError::Device(format!("cuda: {e:?}")))?;
            train_on(dev, spec, config, train, valid, out_dir, progress, halt_after)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(TrainError::Config(
            "device = \"cuda\" needs kiln built with the `cuda` feature (cargo build --release -p kiln-cli --features kiln-train/cuda); kiln never falls back to the cpu silently".into(),
        )),
    }
}

fn check(
    config: &Config,
    task: Task,
    train: &Dataset,
    valid: &Dataset,
    n_classes: usize,
) -> Result<()> {
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(TrainError::Config(format!("{key}: {msg}")));
    }
    let bad = |m: String| Err(TrainError::Config(m));
    if train.is_regression() != valid.is_regression() {
        return bad("train and valid splits disagree on the task (labels vs values)".into());
    }
    let loss = config.loss.resolve(task);
    let metric = config.early_stopping.as_ref().map(|e| e.metric);
    match task {
        Task::Regression => {
            if loss == Loss::CrossEntropy {
                return bad("loss: cross_entropy needs a class target, and this dataset has a regression target; use \"mse\" or \"huber\"".into());
            }
            if metric == Some(StopMetric::Accuracy) {
                return bad("early_stopping.metric: accuracy needs a class target; use \"r2\" or \"loss\" for regression".into());
            }
            if train.values.len() < 2 {
                return bad(format!(
                    "regression needs at least 2 training rows, got {}",
                    train.values.len()
                ));
            }
            return shape_check(train, valid);
        }
        Task::Classification => {
            if loss == Loss::BinaryCrossEntropy && n_classes != 2 {
                return bad(format!(
                    "loss: binary_cross_entropy needs exactly 2 classes, the target has {n_classes}; use \"cross_entropy\" (or `positive_class` in the preprocess stage to make one class against the rest)"
                ));
            }
            if matches!(loss, Loss::Mse | Loss::Huber) {
                return bad(format!("loss: {loss:?} needs a regression target, and this dataset has class labels; use \"cross_entropy\"").to_lowercase());
            }
            if metric == Some(StopMetric::R2) {
                return bad("early_stopping.metric: r2 needs a regression target; use \"accuracy\" or \"loss\"".into());
            }
        }
    }
    if n_classes < 2 {
        return bad(format!(
            "classification needs at least 2 classes, the schema has {n_classes}"
        ));
    }
    shape_check(train, valid)?;
    if let Some(l) = train
        .labels
        .iter()
        .chain(&valid.labels)
        .find(|&&l| l as usize >= n_classes)
    {
        return bad(format!("label {l} is out of range for {n_classes} classes"));
    }
    Ok(())
}

fn shape_check(train: &Dataset, valid: &Dataset) -> Result<()> {
    if train.n_rows() == 0 || valid.n_rows() == 0 {
        return Err(TrainError::Config(format!(
            "train has {} rows and valid {}; both need rows",
            train.n_rows(),
            valid.n_rows()
        )));
    }
    if train.n_features() != valid.n_features() {
        return Err(TrainError::Config(
            "train and valid splits have different feature columns".into(),
        ));
    }
    Ok(())
}

/// Mean and standard deviation (ddof 0; 1 where it is 0) of the regression target on the
/// training split: the network learns `(y - mean) / std`, and [`fold_target_scale`] puts
/// the scale back into the output layer so the saved model predicts `y` itself.
fn target_scale(values: &[f32]) -> (f32, f32) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = if var > 0.0 { var.sqrt() } else { 1.0 };
    (mean as f32, std as f32)
}

/// Turns the single logit `s` of a binary cross-entropy head into the two logits
/// `[0, s]` of the saved spec: their softmax is `[1 - sigmoid(s), sigmoid(s)]`, the
/// same probabilities, so evaluation, int8 and ONNX export treat it as any classifier.
fn widen_binary_logit(spec: &ModelSpec, store: &mut TensorStore) {
    let last = spec.layers.len() - 1;
    let l = &spec.layers[last];
    let (wk, bk) = (
        format!("layers.{last}.weight"),
        format!("layers.{last}.bias"),
    );
    if let (Ok(w), Ok(b)) = (store.f32(&wk), store.f32(&bk)) {
        let w: Vec<f32> = w.iter().flat_map(|&v| [0.0, v]).collect();
        let b = vec![0.0, b.first().copied().unwrap_or(0.0)];
        store.insert_f32(&wk, vec![l.in_dim, 2], w);
        store.insert_f32(&bk, vec![2], b);
    }
}

/// Rewrites the output layer `z` into `z * std + mean`: weights times `std`, bias times
/// `std` plus `mean`.
fn fold_target_scale(spec: &ModelSpec, store: &mut TensorStore, (mean, std): (f32, f32)) {
    let last = spec.layers.len() - 1;
    let l = &spec.layers[last];
    let (wk, bk) = (
        format!("layers.{last}.weight"),
        format!("layers.{last}.bias"),
    );
    if let (Ok(w), Ok(b)) = (store.f32(&wk), store.f32(&bk)) {
        let w: Vec<f32> = w.iter().map(|v| v * std).collect();
        let b: Vec<f32> = b.iter().map(|v| v * std + mean).collect();
        store.insert_f32(&wk, vec![l.in_dim, l.out_dim], w);
        store.insert_f32(&bk, vec![l.out_dim], b);
    }
}

fn dev_err<E: std::fmt::Debug>(e: E) -> TrainError {
    TrainError::Device(format!("{e:?}"))
}

/// checkpoint/state.json: where an interrupted run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    /// The config and data shape the checkpoint belongs to.
    fingerprint: String,
    /// Last completed epoch.
    epoch: usize,
    /// Optimizer steps taken.
    step: i32,
    /// Epochs since the best one.
    since_best: usize,
    /// Best epoch so far, its accuracy and loss.
    best: (usize, f64, f64),
    /// History so far.
    history: Vec<EpochRecord>,
}

fn fingerprint(config: &Config, train: &Dataset, valid: &Dataset) -> String {
    let mut c = config.clone();
    c.epochs = 0; // more epochs may continue the same run
    let text = format!(
        "{}|{}x{}|{}|{}",
        serde_json::to_string(&c).unwrap_or_default(),
        train.n_rows(),
        train.n_features(),
        valid.n_rows(),
        kiln_core::KILN_VERSION
    );
    kiln_core::hash_bytes(text.as_bytes())
}

/// The newest complete checkpoint in `out_dir`: `checkpoint/`, or `checkpoint.tmp/` when a
/// kill came after the old checkpoint was deleted and before the new one was renamed
/// (`state.json` is written last, so a folder that has it is complete).
fn newest_checkpoint(
    out_dir: &Path,
    fp: &str,
) -> Option<(CheckpointState, TensorStore, TensorStore)> {
    ["checkpoint", "checkpoint.tmp"]
        .iter()
        .filter_map(|d| load_checkpoint(&out_dir.join(d), fp))
        .max_by_key(|(s, ..)| s.epoch)
}

fn load_checkpoint(dir: &Path, fp: &str) -> Option<(CheckpointState, TensorStore, TensorStore)> {
    let state: CheckpointState = kiln_core::read_json(&dir.join("state.json")).ok()?;
    if state.fingerprint != fp {
        tracing::warn!(dir = %dir.display(), "checkpoint belongs to another config or data; starting afresh");
        return None;
    }
    let params = TensorStore::load(&dir.join("params.safetensors")).ok()?;
    let best = TensorStore::load(&dir.join("best.safetensors")).ok()?;
    Some((state, params, best))
}

/// Writes the checkpoint folder atomically: into `checkpoint.tmp` (state.json last), then
/// renamed over `checkpoint` ([`newest_checkpoint`] finds either after a kill).
fn save_checkpoint(
    out_dir: &Path,
    state: &CheckpointState,
    params: &TensorStore,
    best: &TensorStore,
) -> Result<()> {
    let tmp = out_dir.join("checkpoint.tmp");
    let dir = out_dir.join("checkpoint");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| TrainError::Core(kiln_core::CoreError::io(p, e))
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    params.save(&tmp.join("params.safetensors"))?;
    best.save(&tmp.join("best.safetensors"))?;
    kiln_core::write_json(&tmp.join("state.json"), state)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))
}

#[allow(clippy::too_many_arguments)]
fn train_on<D: dfdx::prelude::Device<f32> + net::Backend>(
    dev: D,
    spec: ModelSpec,
    config: &Config,
    train: &Dataset,
    valid: &Dataset,
    out_dir: &Path,
    progress: &dyn Progress,
    halt_after: Option<usize>,
) -> Result<Output> {
    let w = train.n_features();
    let regression = spec.task == Task::Regression;
    let loss_kind = config.loss.resolve(spec.task);
    let binary = loss_kind == Loss::BinaryCrossEntropy;
    // The network trained: one logit for binary cross-entropy, else the saved shape.
    let mut net_spec = spec.clone();
    if binary && let Some(last) = net_spec.layers.last_mut() {
        last.out_dim = 1;
    }
    let k = net_spec.output_dim();
    let scale = target_scale(&train.values);
    let metric_name = if regression { "r2" } else { "accuracy" };
    let store = |net: &Mlp<D>| {
        let mut s = net.to_store();
        if regression {
            fold_target_scale(&spec, &mut s, scale);
        }
        if binary {
            widen_binary_logit(&spec, &mut s);
        }
        s
    };
    let mut net = Mlp::new(&dev, net_spec, config.model.dropout, config.seed).map_err(dev_err)?;
    let bs = config.batch_size;
    let n_batches = train.n_rows().div_ceil(bs);
    let mut history = Vec::new();
    let mut best: Option<(f64, f64, usize, TensorStore)> = None; // (acc, loss, epoch, weights)
    let mut since_best = 0usize;
    let mut stopped_early = false;
    let mut first_epoch = 1;
    let mut resumed_from_epoch = None;
    let fp = fingerprint(config, train, valid);
    let ckpt_dir = out_dir.join("checkpoint");
    let checkpoint = if config.resume {
        newest_checkpoint(out_dir, &fp)
    } else {
        None
    };
    if let Some((state, params, best_w)) = checkpoint
        && net.import_state(&dev, &params, state.step).is_some()
    {
        tracing::info!(epoch = state.epoch, "resuming from checkpoint");
        first_epoch = state.epoch + 1;
        resumed_from_epoch = Some(state.epoch);
        since_best = state.since_best;
        history = state.history;
        best = Some((state.best.1, state.best.2, state.best.0, best_w));
    }
    let started = std::time::Instant::now();
    let mut xb = Vec::with_capacity(bs * w);
    let mut yb = Vec::with_capacity(bs * k);
    let mut epochs_run = 0usize;
    for epoch in first_epoch..=config.epochs {
        let _span = tracing::info_span!("epoch", epoch).entered();
        // One seeded stream per epoch (shuffle, then dropout masks): a resumed run draws
        // exactly what an uninterrupted one would.
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed_5eed_5eed_5eed);
        rng.set_stream(epoch as u64);
        let mut order: Vec<usize> = (0..train.n_rows()).collect();
        order.shuffle(&mut rng);
        progress.start(
            &format!("epoch {epoch}/{}", config.epochs),
            n_batches as u64,
        );
        // correct predictions (classification) or squared error of the standardized
        // target (regression)
        let (mut loss_sum, mut correct, mut sse) = (0.0f64, 0usize, 0.0f64);
        for chunk in order.chunks(bs) {
            xb.clear();
            yb.clear();
            for &r in chunk {
                xb.extend_from_slice(train.row(r));
                if regression {
                    yb.push((train.values[r] - scale.0) / scale.1);
                } else if binary {
                    yb.push(train.labels[r] as f32);
                } else {
                    let mut onehot = vec![0.0f32; k];
                    onehot[train.labels[r] as usize] = 1.0;
                    yb.extend(onehot);
                }
            }
            // the batch's dropout masks are drawn in the pass (each half of the batch its
            // own rows, at once), from here in the epoch's stream, which then moves past them
            let batch = net::Batch {
                x: &xb,
                y: &yb,
                rows: chunk.len(),
                masks: Vec::new(),
                mask_stream: Some(net::MaskStream {
                    rng: rng.clone(),
                    rows: chunk.len(),
                    first_row: 0,
                }),
            };
            rng.set_word_pos(rng.get_word_pos() + net.mask_values(chunk.len()));
            let lossfn = net::LossFn {
                kind: loss_kind,
                huber_delta: config.huber_delta as f32,
            };
            let net::Step {
                mut grads,
                more,
                loss: lv,
                outputs: out,
            } = dev.batch_step(&net, &batch, lossfn).map_err(dev_err)?;
            if regression {
                sse += out
                    .iter()
                    .zip(&yb)
                    .map(|(p, t)| ((p - t) as f64).powi(2))
                    .sum::<f64>();
            } else {
                for (row, &r) in out.chunks_exact(k).zip(chunk) {
                    let class = if binary {
                        usize::from(row[0] > 0.0)
                    } else {
                        argmax(row)
                    };
                    if class == train.labels[r] as usize {
                        correct += 1;
                    }
                }
            }
            if !lv.is_finite() {
                return Err(TrainError::Diverged { epoch, loss: lv });
            }
            loss_sum += lv as f64 * chunk.len() as f64;
            let lr = config.schedule.lr_at(
                config.optimizer.lr,
                net.step() as usize,
                n_batches,
                config.epochs,
            );
            net.update_with(&mut grads, more, &config.optimizer, lr)
                .map_err(dev_err)?;
            progress.advance(1);
        }
        epochs_run += 1;
        let weights = store(&net);
        let (valid_loss, valid_metric) = {
            let _span = tracing::info_span!("validate", rows = valid.n_rows()).entered();
            evaluate(&spec, &weights, valid)?
        };
        let n_train = train.n_rows() as f64;
        let rec = EpochRecord {
            epoch,
            train_loss: loss_sum / n_train,
            // the standardized target has variance 1, so R² = 1 - MSE
            train_metric: if regression {
                1.0 - sse / n_train
            } else {
                correct as f64 / n_train
            },
            valid_loss,
            valid_metric,
        };
        progress.message(&format!(
            "loss {:.4} valid {} {:.4}",
            rec.train_loss, metric_name, rec.valid_metric
        ));
        progress.finish();
        tracing::info!(
            epoch,
            train_loss = rec.train_loss,
            valid_metric,
            valid_loss,
            "epoch done"
        );
        progress.epoch(&kiln_core::artifact::progress::EpochPoint {
            epoch,
            of: config.epochs,
            train_loss: rec.train_loss,
            valid_loss: rec.valid_loss,
            valid_metric: rec.valid_metric,
        });
        history.push(rec);
        let metric_loss = config
            .early_stopping
            .as_ref()
            .is_some_and(|e| e.metric == StopMetric::Loss);
        let min_delta = config.early_stopping.as_ref().map_or(0.0, |e| e.min_delta);
        let improved = match &best {
            None => true,
            Some((m, loss, _, _)) => {
                if metric_loss {
                    valid_loss < loss - min_delta
                } else {
                    valid_metric > m + min_delta
                }
            }
        };
        if improved {
            best = Some((valid_metric, valid_loss, epoch, weights));
            since_best = 0;
        } else {
            since_best += 1;
            if let Some(es) = &config.early_stopping
                && since_best >= es.patience
            {
                stopped_early = epoch < config.epochs;
                tracing::info!(epoch, "early stopping");
                break;
            }
        }
        let every = config.checkpoint_every;
        if every > 0
            && epoch % every == 0
            && epoch < config.epochs
            && let (Some(params), Some((acc, loss, be, bw))) = (net.export_state(&dev), &best)
        {
            let state = CheckpointState {
                fingerprint: fp.clone(),
                epoch,
                step: net.step(),
                since_best,
                best: (*be, *acc, *loss),
                history: history.clone(),
            };
            let _span = tracing::info_span!("checkpoint").entered();
            save_checkpoint(out_dir, &state, &params, bw)?;
        }
        if halt_after == Some(epoch) {
            return Err(TrainError::Halted { epoch });
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let samples = epochs_run * train.n_rows();
    let Some((best_acc, _, best_epoch, weights)) = best else {
        return Err(TrainError::Config("no epoch was run".into()));
    };
    let model = NativeModel::new(spec, weights)?;
    let history = History {
        metric: metric_name.to_string(),
        epochs: history,
        best_epoch,
        stopped_early,
    };
    std::fs::create_dir_all(out_dir).map_err(|e| kiln_core::CoreError::io(out_dir, e))?;
    model.save(out_dir)?;
    kiln_core::artifact::save(out_dir, &history)?;
    kiln_core::atomic_write(&out_dir.join("history.csv"), history.to_csv().as_bytes())?;
    for d in [ckpt_dir.clone(), out_dir.join("checkpoint.tmp")] {
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| kiln_core::CoreError::io(&d, e))?;
        }
    }
    Ok(Output {
        model,
        history,
        best_valid_metric: best_acc,
        samples_per_sec: samples as f64 / elapsed.max(1e-9),
        resumed_from_epoch,
    })
}

/// The mean loss of a batch: `out` are the network's outputs, `y` the one-hot classes
/// (cross-entropy), 0/1 (binary cross-entropy) or standardized targets (MSE, Huber).
pub(crate) fn batch_loss<D: dfdx::prelude::Device<f32>, T: Tape<f32, D>>(
    kind: Loss,
    out: Tensor<(usize, usize), f32, D, T>,
    y: Tensor<(usize, usize), f32, D>,
    huber_delta: f32,
) -> Tensor<(), f32, D, T> {
    match kind {
        Loss::Mse => dfdx::losses::mse_loss(out, y),
        Loss::Huber => dfdx::losses::huber_loss(out, y, huber_delta),
        Loss::BinaryCrossEntropy => dfdx::losses::binary_cross_entropy_with_logits_loss(out, y),
        Loss::CrossEntropy | Loss::Auto => dfdx::losses::cross_entropy_with_logits_loss(out, y),
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best
}

/// Loss and metric of `weights` on `data`, with kiln-core's reference forward pass:
/// cross-entropy and accuracy (classification), or MSE and R² (regression; R² is 1 for
/// an exact fit of a constant target and 0 for any other fit of one).
pub fn evaluate(spec: &ModelSpec, weights: &TensorStore, data: &Dataset) -> Result<(f64, f64)> {
    let mut model = NativeModel::new(spec.clone(), weights.clone())?;
    let p = model.predict(&data.features, data.n_rows())?;
    if spec.task == Task::Regression {
        let n = data.values.len().max(1) as f64;
        let sse: f64 = p
            .logits
            .iter()
            .zip(&data.values)
            .map(|(p, &t)| (f64::from(*p) - f64::from(t)).powi(2))
            .sum();
        return Ok((sse / n, data.r2(&p.logits)));
    }
    let k = p.n_outputs;
    let mut loss = 0.0f64;
    let mut correct = 0usize;
    for (i, row) in p.probabilities.chunks_exact(k).enumerate() {
        let l = data.labels[i] as usize;
        loss -= (row[l].max(1e-12) as f64).ln();
        if argmax(row) == l {
            correct += 1;
        }
    }
    let n = data.n_rows().max(1) as f64;
    Ok((loss / n, correct as f64 / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each loss on fixed numbers, worked by hand.
    #[test]
    fn losses_match_hand_computed_values() {
        let dev = Cpu::default();
        let value = |kind: Loss, out: Vec<f32>, y: Vec<f32>, shape: (usize, usize)| {
            let o = dev.tensor_from_vec(out, shape);
            let t = dev.tensor_from_vec(y, shape);
            f64::from(batch_loss(kind, o, t, 1.0).as_vec()[0])
        };
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        // MSE of errors 1 and -2: (1 + 4) / 2
        close(
            value(Loss::Mse, vec![1.0, 2.0], vec![0.0, 4.0], (2, 1)),
            2.5,
        );
        // Huber (delta 1) of errors 1 and -2: (0.5 * 1^2 + 1 * (2 - 0.5)) / 2
        close(
            value(Loss::Huber, vec![1.0, 2.0], vec![0.0, 4.0], (2, 1)),
            1.0,
        );
        // BCE with logits 0 (target 1) and 2 (target 0): (ln 2 + ln(1 + e^2)) / 2
        let bce = (2f64.ln() + (1.0 + 2f64.exp()).ln()) / 2.0;
        close(
            value(
                Loss::BinaryCrossEntropy,
                vec![0.0, 2.0],
                vec![1.0, 0.0],
                (2, 1),
            ),
            bce,
        );
        // Softmax cross-entropy of logits [0, ln 3] with class 1: -ln(3/4)
        let ce = value(
            Loss::CrossEntropy,
            vec![0.0, 3f32.ln()],
            vec![0.0, 1.0],
            (1, 2),
        );
        close(ce, -(0.75f64).ln());
    }

    #[test]
    fn folding_keeps_the_function() {
        use kiln_core::{Activation, Predictor};
        // a 1-input linear regressor y = 2x + 1 learned as (y - 10) / 4
        let spec = ModelSpec::mlp(1, &[], Activation::Identity, Task::Regression, 1);
        let mut s = TensorStore::default();
        s.insert_f32("layers.0.weight", vec![1, 1], vec![0.5]);
        s.insert_f32("layers.0.bias", vec![1], vec![-2.25]);
        fold_target_scale(&spec, &mut s, (10.0, 4.0));
        let mut m = NativeModel::new(spec, s).unwrap();
        // x = 3: (0.5 * 3 - 2.25) * 4 + 10 = 7 = 2 * 3 + 1
        assert_eq!(m.predict(&[3.0], 1).unwrap().logits, vec![7.0]);

        let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
        let mut s = TensorStore::default();
        s.insert_f32("layers.0.weight", vec![2, 1], vec![1.0, -1.0]);
        s.insert_f32("layers.0.bias", vec![1], vec![0.5]);
        widen_binary_logit(&spec, &mut s);
        assert_eq!(s.f32("layers.0.weight").unwrap(), &[0.0, 1.0, 0.0, -1.0]);
        let p = NativeModel::new(spec, s)
            .unwrap()
            .predict(&[2.0, 1.0], 1)
            .unwrap();
        // s = 2 - 1 + 0.5 = 1.5: p(1) = sigmoid(1.5)
        let sig = 1.0 / (1.0 + (-1.5f32).exp());
        assert!((p.probabilities[1] - sig).abs() < 1e-7);
    }
}
