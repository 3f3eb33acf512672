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
//!     model: Some(ModelConfig { hidden: vec![8], ..Default::default() }),
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

mod checkpoint;
mod config;
mod data;
mod data_config;
mod embed;
mod finetune;
mod head;
mod model_config;
mod net;
mod sizing;
mod sweep;
mod train_loop;

pub use data::{Data, Streamed};
pub use data_config::{DataConfig, Load};
pub use finetune::{Finetune, finetune, finetune_on};
pub use sweep::{MAX_TRIALS, Strategy, Sweep, SweepResults, Trial};

pub use config::{
    Config, Device, EarlyStopping, Loss, MAX_EMBEDDING_DIM, MAX_EMBEDDING_ROWS, MAX_EPOCHS,
    MAX_PARAMS, MAX_WIDTH, OptimizerConfig, OptimizerKind, Schedule, ScheduleKind, StopMetric,
};
pub use model_config::{EmbeddingConfig, ModelConfig, ModelKind};
pub use sizing::Sizing;

use dfdx::prelude::*;
use kiln_core::{Dataset, ModelSpec, NativeModel, Predictor, Progress, Schema, Task, TensorStore};
use std::path::Path;
use train_loop::train_on;

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

pub use kiln_core::artifact::history::{EpochRecord, History, KeptBy};

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
    /// The fitted preprocessing the model expects its inputs through, when trained with
    /// [`fit_with_schema`]: raw rows in, predictions out ([`Output::predict_raw`]).
    pub schema: Option<Schema>,
}

impl Output {
    /// Writes the model artifact into `dir`: spec.json, weights.safetensors,
    /// history.json and history.csv, and schema.json when the model carries one.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| kiln_core::CoreError::io(dir, e))?;
        self.model.save(dir)?;
        if let Some(schema) = &self.schema {
            kiln_core::write_json(&dir.join("schema.json"), schema)?;
        }
        kiln_core::artifact::save(dir, &self.history)?;
        kiln_core::atomic_write(&dir.join("history.csv"), self.history.to_csv().as_bytes())?;
        Ok(())
    }
}

/// Trains on `train`, selects on `valid`, in memory: no checkpoint, nothing written
/// ([`Output::save`] writes the artifact). A sweep keeps every trial on disk, so it
/// needs [`run`].
pub fn fit(
    config: &Config,
    train: &Dataset,
    valid: &Dataset,
    n_classes: usize,
    progress: &dyn Progress,
) -> Result<Output> {
    if config.sweep.is_some() {
        return Err(TrainError::Config(
            "sweep: a sweep keeps every trial's model in a folder; use kiln_train::run".into(),
        ));
    }
    let (train, valid) = (&Data::Memory(train), &Data::Memory(valid));
    train_until(
        &resolve(config, train),
        train,
        valid,
        n_classes,
        None,
        progress,
        None,
    )
}

/// `config` with its network sized to `train` when the file left `model` out (logged, so
/// the run shows what was built).
fn resolve(config: &Config, train: &Data<'_>) -> Config {
    if config.model.is_none() {
        let m = config.model_for(train.n_rows());
        tracing::info!(
            hidden = ?m.hidden,
            dropout = %m.dropout,
            train_rows = train.n_rows(),
            "no `model` given: sized to the training rows"
        );
    }
    config.resolved(train.n_rows())
}

/// [`fit`] on splits prepared with `schema` (what `kiln_preprocess::prepare` returns):
/// the class count comes from the schema and the model keeps it, so [`Output::save`]
/// writes a folder that predicts raw rows alone, and [`Output::predict_raw`] does so in
/// memory.
pub fn fit_with_schema(
    config: &Config,
    schema: &Schema,
    train: &Dataset,
    valid: &Dataset,
    progress: &dyn Progress,
) -> Result<Output> {
    for (split, d) in [("train", train), ("valid", valid)] {
        if d.feature_names != schema.feature_names {
            return Err(TrainError::Config(format!(
                "the {split} split's {} features are not the schema's {}; pass the splits prepared with this schema",
                d.feature_names.len(),
                schema.n_features()
            )));
        }
    }
    let config = &config.for_schema(schema, train.n_rows());
    let mut out = fit(config, train, valid, schema.n_classes(), progress)?;
    out.schema = Some(schema.clone());
    Ok(out)
}

impl Output {
    /// Predicts raw `rows` (the schema's input columns, as `kiln predict` reads them)
    /// through the schema's fitted preprocessing and the model's reference forward pass,
    /// like `kiln_deploy::Bundle::predict` does through ONNX Runtime; an error when the
    /// model was trained without a schema or a row is not finite after preprocessing.
    pub fn predict_raw(&self, rows: &kiln_core::Rows) -> Result<kiln_core::Predictions> {
        let Some(schema) = &self.schema else {
            return Err(TrainError::Config(
                "this model carries no schema; train it with kiln_train::fit_with_schema".into(),
            ));
        };
        let features = schema
            .features(rows)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let mut model = self.model.clone();
        Ok(model.predict(&features, rows.n_rows)?)
    }
}

/// Trains on `train`, selects on `valid`, writes the model artifact into `out_dir`.
/// With `resume` (the default) a checkpoint left in `out_dir/checkpoint` by an interrupted
/// Training images a batch norm's running statistics are computed over after each epoch
/// (the first ones of the train split, as one batch).
pub const BATCH_NORM_ROWS: usize = 2048;

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
    run_with(
        config,
        &Data::Memory(train),
        &Data::Memory(valid),
        n_classes,
        out_dir,
        progress,
        halt_after,
    )
}

/// [`run_until`] on splits held in memory or streamed from their shards ([`Data`]).
pub fn run_with(
    config: &Config,
    train: &Data<'_>,
    valid: &Data<'_>,
    n_classes: usize,
    out_dir: &Path,
    progress: &dyn Progress,
    halt_after: Option<usize>,
) -> Result<Output> {
    let config = &resolve(config, train);
    if let Some(sw) = &config.sweep {
        if let Some((key, msg)) = config.problems().into_iter().next() {
            return Err(TrainError::Config(format!("{key}: {msg}")));
        }
        return sweep::run_sweep(sw, config, train, valid, n_classes, out_dir, progress);
    }
    train_until(
        config,
        train,
        valid,
        n_classes,
        Some(out_dir),
        progress,
        halt_after,
    )
}

/// One network (no sweep), checkpointed into and saved to `out_dir` when given.
fn train_until(
    config: &Config,
    train: &Data<'_>,
    valid: &Data<'_>,
    n_classes: usize,
    out_dir: Option<&Path>,
    progress: &dyn Progress,
    halt_after: Option<usize>,
) -> Result<Output> {
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
    let model = config.model_for(train.n_rows());
    let spec = ModelSpec::mlp(
        train.n_features(),
        &model.hidden,
        model.activation,
        task,
        outputs,
    )
    .with_norm(model.norm);
    let spec = match model.image_shape() {
        Some(image) => {
            if image.len() != train.n_features() {
                return Err(TrainError::Config(format!(
                    "model.image: {image} = {} values per image, but the dataset has {} features; give the shape its preprocess stage makes",
                    image.len(),
                    train.n_features()
                )));
            }
            spec.with_conv(image, model.conv.clone())
        }
        None => spec.with_embeddings(embed::embedding_specs(&model, train)?),
    };
    spec.validate()
        .map_err(|e| TrainError::Config(format!("model: {e}")))?;
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
    train: &Data<'_>,
    valid: &Data<'_>,
    n_classes: usize,
) -> Result<()> {
    if let Some((key, msg)) = config.problems().into_iter().next() {
        return Err(TrainError::Config(format!("{key}: {msg}")));
    }
    let bad = |m: String| Err(TrainError::Config(m));
    let outputs = if task == Task::Regression {
        1
    } else {
        n_classes
    };
    let params = config.parameters(train.n_rows(), train.n_features(), outputs);
    if params > MAX_PARAMS {
        return bad(format!(
            "model.hidden: the network has {params} parameters for {} input features; kiln trains at most {MAX_PARAMS} (narrow the hidden layers)",
            train.n_features()
        ));
    }
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
            if train.n_values() < 2 {
                return bad(format!(
                    "regression needs at least 2 training rows, got {}",
                    train.n_values()
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
    if let Some(l) = [train.label_max(), valid.label_max()]
        .into_iter()
        .flatten()
        .find(|&l| l as usize >= n_classes)
    {
        return bad(format!("label {l} is out of range for {n_classes} classes"));
    }
    Ok(())
}

fn shape_check(train: &Data<'_>, valid: &Data<'_>) -> Result<()> {
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

fn dev_err<E: std::fmt::Debug>(e: E) -> TrainError {
    TrainError::Device(format!("{e:?}"))
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
    Data::Memory(data).evaluate(spec, weights)
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
}
