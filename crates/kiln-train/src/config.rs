//! The training stage's configuration (the `[stages.<id>]` table of `uses = "train"`).

use crate::ModelConfig;
use serde::{Deserialize, Serialize};

/// Configuration of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The network; left out, it is sized to the training rows as `kiln init` sizes it
    /// ([`crate::Sizing`]: hidden widths and dropout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelConfig>,
    /// Loss function (default `auto`: `cross_entropy` for classification, `mse` for
    /// regression).
    #[serde(default)]
    pub loss: Loss,
    /// `huber`: where the loss turns from quadratic to linear, in standardized target
    /// units (default 1).
    #[serde(default = "default_huber_delta")]
    pub huber_delta: f64,
    /// Optimizer and learning rate.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule (default constant, no warmup).
    #[serde(default)]
    pub schedule: Schedule,
    /// Maximum number of passes over the training split (default 10).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Rows per gradient step (default 64; a batch larger than the train split is the
    /// whole split).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Stop when the validation metric has not improved for `patience` epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// `cpu` (default) or `cuda` (needs the `cuda` cargo feature).
    #[serde(default)]
    pub device: Device,
    /// Write a checkpoint every N epochs (0 = never; default 1).
    #[serde(default = "default_every")]
    pub checkpoint_every: usize,
    /// Continue from a checkpoint left by an interrupted run (default true).
    #[serde(default = "default_true")]
    pub resume: bool,
    /// Seed of weight initialisation, shuffling and dropout (the pipeline fills it from
    /// its top-level `seed`).
    #[serde(default)]
    pub seed: u64,
    /// Hyperparameter search: train one model per combination and keep the best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::Sweep>,
    /// Whether the splits are held in memory or streamed from their shards.
    #[serde(default, skip_serializing_if = "crate::DataConfig::is_default")]
    pub data: crate::DataConfig,
}

/// Where training runs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// The CPU (dfdx's CPU device, two half-batch pools).
    #[default]
    Cpu,
    /// An NVIDIA GPU through dfdx's CUDA device (kiln built with the `cuda` feature).
    Cuda,
}

impl Default for Config {
    /// An MLP with one hidden layer of 64 units, Adam at 1e-3, 10 epochs of batches of 64,
    /// on the CPU.
    fn default() -> Self {
        Config {
            model: Some(ModelConfig::default()),
            loss: Loss::Auto,
            huber_delta: default_huber_delta(),
            optimizer: OptimizerConfig::default(),
            schedule: Schedule::default(),
            epochs: default_epochs(),
            batch_size: default_batch(),
            early_stopping: None,
            device: Device::Cpu,
            checkpoint_every: default_every(),
            resume: true,
            seed: 0,
            sweep: None,
            data: crate::DataConfig::default(),
        }
    }
}

/// The widest hidden layer kiln builds.
pub const MAX_WIDTH: usize = 1 << 16;

/// The widest embedding row kiln builds.
pub const MAX_EMBEDDING_DIM: usize = 256;

/// The most rows an embedding table may have (categories seen in training, plus one).
pub const MAX_EMBEDDING_ROWS: usize = 1_000_000;
/// The most parameters (weights, biases, norm parameters) a network may have: training
/// keeps about six copies of them (weights, gradients, two Adam moments, the best
/// epoch's, host copies), so 100M parameters need about 2.4 GB.
pub const MAX_PARAMS: usize = 100_000_000;
/// The most epochs a train stage runs.
pub const MAX_EPOCHS: usize = 1_000_000;

impl Config {
    /// The network trained on `train_rows` rows: `model` as written, or
    /// [`crate::Sizing`]'s.
    pub fn model_for(&self, train_rows: usize) -> ModelConfig {
        self.model
            .clone()
            .unwrap_or_else(|| crate::Sizing::for_rows(train_rows).model())
    }

    /// This config with `model` filled in for `train_rows` training rows.
    pub fn resolved(&self, train_rows: usize) -> Config {
        Config {
            model: Some(self.model_for(train_rows)),
            ..self.clone()
        }
    }

    /// This config [`resolved`](Config::resolved) for `train_rows` rows of a dataset
    /// prepared with `schema`, with `model.embeddings.columns` filled in where it was
    /// left out: every ordinal-encoded feature of the schema.
    pub fn for_schema(&self, schema: &kiln_core::Schema, train_rows: usize) -> Config {
        let mut c = self.resolved(train_rows);
        if let Some(m) = c.model.as_mut()
            && m.embeddings.columns.is_none()
        {
            m.embeddings.columns = Some(schema.ordinal_features());
        }
        c
    }

    /// The number of parameters of the network for `train_rows` rows of `inputs` features
    /// and `outputs` outputs (saturating, so an absurd width cannot overflow).
    pub fn parameters(&self, train_rows: usize, inputs: usize, outputs: usize) -> usize {
        let model = self.model_for(train_rows);
        let mut total = 0usize;
        let mut prev = inputs;
        if let Some(image) = model.image_shape() {
            let spec = kiln_core::ModelSpec::mlp(
                inputs,
                &[],
                kiln_core::Activation::Identity,
                kiln_core::Task::Regression,
                1,
            )
            .with_conv(image, model.conv.clone());
            total = spec.conv_params();
            prev = spec.first_input_dim();
        }
        let norm = usize::from(model.norm.is_some()) * 2;
        for &h in model.hidden.iter().chain([&outputs]) {
            let layer = prev
                .saturating_mul(h)
                .saturating_add(h.saturating_mul(1 + norm));
            total = total.saturating_add(layer);
            prev = h;
        }
        total
    }

    /// Values out of range, as (key path, message) pairs; empty when the config is usable.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let unsized_model = ModelConfig::default();
        let model = self.model.as_ref().unwrap_or(&unsized_model);
        p.extend(model.shape_problems());
        let mut bad = |k: &str, m: String| p.push((k.to_string(), m));
        if let Some(w) = model.hidden.iter().find(|&&w| w > MAX_WIDTH) {
            bad(
                "model.hidden",
                format!("a hidden layer of {w} units is wider than kiln builds ({MAX_WIDTH})"),
            );
        }
        if self.data.window == 0 {
            bad(
                "data.window",
                "0 shards cannot be shuffled together; use 1 or more (default 4)".into(),
            );
        }
        if self.epochs > MAX_EPOCHS {
            bad(
                "epochs",
                format!(
                    "{} epochs is more than kiln runs ({MAX_EPOCHS})",
                    self.epochs
                ),
            );
        }
        if model.hidden.contains(&0) {
            bad(
                "model.hidden",
                "a hidden layer has width 0; widths must be at least 1".into(),
            );
        }
        if !(0.0..1.0).contains(&model.dropout) {
            bad(
                "model.dropout",
                format!("dropout {} must be in [0, 1)", model.dropout),
            );
        }
        if !(self.optimizer.lr > 0.0 && self.optimizer.lr.is_finite()) {
            bad(
                "optimizer.lr",
                format!(
                    "learning rate {} must be a positive number",
                    self.optimizer.lr
                ),
            );
        }
        if self.optimizer.weight_decay < 0.0 {
            bad(
                "optimizer.weight_decay",
                format!(
                    "weight decay {} must not be negative",
                    self.optimizer.weight_decay
                ),
            );
        }
        if !(0.0..1.0).contains(&self.optimizer.momentum) {
            bad(
                "optimizer.momentum",
                format!("momentum {} must be in [0, 1)", self.optimizer.momentum),
            );
        }
        if self.optimizer.nesterov
            && (self.optimizer.kind != OptimizerKind::Sgd || self.optimizer.momentum <= 0.0)
        {
            bad(
                "optimizer.nesterov",
                "nesterov applies to kind = \"sgd\" with momentum > 0".into(),
            );
        }
        if self.optimizer.clip_grad_norm.is_some() && self.device == Device::Cuda {
            bad(
                "optimizer.clip_grad_norm",
                "gradient clipping runs on the cpu device only for now".into(),
            );
        }
        if let Some(c) = self.optimizer.clip_grad_norm
            && !(c > 0.0 && c.is_finite())
        {
            bad(
                "optimizer.clip_grad_norm",
                format!("clip_grad_norm {c} must be a positive number"),
            );
        }
        if self.schedule.kind == ScheduleKind::Step
            && !(self.schedule.gamma > 0.0 && self.schedule.gamma <= 1.0)
        {
            bad(
                "schedule.gamma",
                format!("gamma {} must be in (0, 1]", self.schedule.gamma),
            );
        }
        if self.optimizer.lr > 0.0
            && (self.schedule.min_lr < 0.0 || self.schedule.min_lr > self.optimizer.lr)
        {
            bad(
                "schedule.min_lr",
                format!("min_lr {} must be in [0, lr]", self.schedule.min_lr),
            );
        }
        if self.schedule.warmup_epochs >= self.epochs.max(1) && self.schedule.warmup_epochs > 0 {
            bad(
                "schedule.warmup_epochs",
                format!(
                    "{} warmup epochs leave no training after warmup; use fewer than `epochs`",
                    self.schedule.warmup_epochs
                ),
            );
        }
        if !(self.huber_delta > 0.0 && self.huber_delta.is_finite()) {
            bad(
                "huber_delta",
                format!("huber_delta {} must be a positive number", self.huber_delta),
            );
        }
        if self.epochs == 0 {
            bad("epochs", "epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            bad("batch_size", "batch_size must be at least 1".into());
        }
        if let Some(es) = &self.early_stopping
            && es.patience == 0
        {
            bad(
                "early_stopping.patience",
                "patience must be at least 1".into(),
            );
        }
        if let Some(sw) = &self.sweep {
            p.extend(sw.problems(self));
        }
        p
    }
}

fn default_huber_delta() -> f64 {
    1.0
}
fn default_every() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_epochs() -> usize {
    10
}
fn default_batch() -> usize {
    64
}

/// Loss functions.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// `cross_entropy` for a classification target, `mse` for a regression target.
    #[default]
    Auto,
    /// Softmax cross-entropy on logits (classification).
    CrossEntropy,
    /// Binary cross-entropy on one logit (two classes; the saved model holds the
    /// equivalent two logits `[0, s]`).
    BinaryCrossEntropy,
    /// Mean squared error on the standardized target (regression).
    Mse,
    /// Huber loss with `huber_delta` on the standardized target (regression).
    Huber,
}

impl Loss {
    /// The loss actually used for a task.
    pub fn resolve(self, task: kiln_core::Task) -> Loss {
        match (self, task) {
            (Loss::Auto, kiln_core::Task::Classification) => Loss::CrossEntropy,
            (Loss::Auto, kiln_core::Task::Regression) => Loss::Mse,
            (l, _) => l,
        }
    }
}

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// `adam` (default), `adamw` or `sgd`.
    #[serde(default = "default_opt")]
    pub kind: OptimizerKind,
    /// Learning rate (default 1e-3).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// L2 penalty (adam, sgd) or decoupled decay (adamw); default 0.
    #[serde(default)]
    pub weight_decay: f64,
    /// Momentum for sgd (default 0).
    #[serde(default)]
    pub momentum: f64,
    /// Nesterov momentum for sgd (default false; needs `momentum` > 0).
    #[serde(default)]
    pub nesterov: bool,
    /// Clip the gradient of every step to this global L2 norm (over all weights and
    /// biases) before the optimizer sees it (default: no clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
}

fn default_opt() -> OptimizerKind {
    OptimizerKind::Adam
}
fn default_lr() -> f64 {
    1e-3
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: default_lr(),
            weight_decay: 0.0,
            momentum: 0.0,
            nesterov: false,
            clip_grad_norm: None,
        }
    }
}

/// How the learning rate changes over training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// `constant` (default), `step` or `cosine`.
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Epochs of linear warmup from lr / steps to lr (default 0).
    #[serde(default)]
    pub warmup_epochs: usize,
    /// `step`: multiply the rate by `gamma` every `step_epochs` epochs (default 1).
    #[serde(default = "default_step_epochs")]
    pub step_epochs: usize,
    /// `step`: the factor (default 0.1).
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// `cosine`: the rate at the end of training (default 0).
    #[serde(default)]
    pub min_lr: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            kind: ScheduleKind::Constant,
            warmup_epochs: 0,
            step_epochs: default_step_epochs(),
            gamma: default_gamma(),
            min_lr: 0.0,
        }
    }
}

fn default_step_epochs() -> usize {
    1
}
fn default_gamma() -> f64 {
    0.1
}

/// Schedule shapes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The optimizer's `lr` throughout (after warmup).
    #[default]
    Constant,
    /// Multiplied by `gamma` every `step_epochs` epochs.
    Step,
    /// Half a cosine from `lr` down to `min_lr` over the steps after warmup.
    Cosine,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based) when training runs `epochs`
    /// epochs of `per_epoch` steps with base rate `lr`. A pure function of its arguments,
    /// so a resumed run continues the same curve.
    pub fn lr_at(&self, lr: f64, step: usize, per_epoch: usize, epochs: usize) -> f64 {
        let per_epoch = per_epoch.max(1);
        let warm = self.warmup_epochs * per_epoch;
        if step < warm {
            return lr * (step + 1) as f64 / warm as f64;
        }
        match self.kind {
            ScheduleKind::Constant => lr,
            ScheduleKind::Step => {
                let epoch = (step - warm) / per_epoch;
                lr * self.gamma.powi((epoch / self.step_epochs.max(1)) as i32)
            }
            ScheduleKind::Cosine => {
                let total = (epochs * per_epoch).saturating_sub(warm).max(1);
                let t = (step - warm) as f64 / total as f64;
                self.min_lr + (lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

/// Optimizer algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba).
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
    /// Stochastic gradient descent, optional momentum.
    Sgd,
}

impl Config {
    /// What chooses the kept epoch: `early_stopping.metric` (`auto` also without early
    /// stopping: the task's metric, ties broken by the validation loss).
    pub fn kept_by(&self) -> kiln_core::artifact::history::KeptBy {
        use kiln_core::artifact::history::KeptBy;
        match self
            .early_stopping
            .as_ref()
            .map_or(StopMetric::Auto, |e| e.metric)
        {
            StopMetric::Loss => KeptBy::Loss,
            StopMetric::Auto | StopMetric::Accuracy | StopMetric::R2 => KeptBy::Metric,
        }
    }
}

/// Early stopping on a validation metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// `auto` (default: `accuracy` for classification, `r2` for regression), `accuracy`,
    /// `r2` (higher is better; of equal values the lower validation loss wins) or `loss`
    /// (lower is better). It also chooses the epoch whose weights are kept.
    #[serde(default)]
    pub metric: StopMetric,
    /// Smallest change that counts as an improvement (default 0).
    #[serde(default)]
    pub min_delta: f64,
}

/// What early stopping (and the choice of the kept epoch) watches on the validation
/// split.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StopMetric {
    /// `accuracy` for classification, `r2` for regression (ties broken by the loss).
    #[default]
    Auto,
    /// Validation accuracy (higher is better; classification); of epochs with the same
    /// accuracy, the lower validation loss wins — on a small validation split accuracy
    /// saturates within a few epochs, and the first epoch to reach it is under-trained.
    Accuracy,
    /// Validation R² (higher is better; regression).
    R2,
    /// Validation loss (lower is better).
    Loss,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_give_the_expected_rate_per_step() {
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        // 4 epochs of 10 steps, base rate 0.1
        let c = Schedule::default();
        close(c.lr_at(0.1, 0, 10, 4), 0.1);
        close(c.lr_at(0.1, 39, 10, 4), 0.1);
        let w = Schedule {
            warmup_epochs: 1,
            ..Default::default()
        };
        close(w.lr_at(0.1, 0, 10, 4), 0.01);
        close(w.lr_at(0.1, 4, 10, 4), 0.05);
        close(w.lr_at(0.1, 9, 10, 4), 0.1);
        close(w.lr_at(0.1, 10, 10, 4), 0.1);
        let st = Schedule {
            kind: ScheduleKind::Step,
            step_epochs: 2,
            gamma: 0.5,
            ..Default::default()
        };
        close(st.lr_at(0.1, 19, 10, 4), 0.1);
        close(st.lr_at(0.1, 20, 10, 4), 0.05);
        close(st.lr_at(0.1, 39, 10, 4), 0.05);
        let cos = Schedule {
            kind: ScheduleKind::Cosine,
            warmup_epochs: 1,
            min_lr: 0.0,
            ..Default::default()
        };
        close(cos.lr_at(0.1, 10, 10, 4), 0.1); // start of the cosine
        close(cos.lr_at(0.1, 25, 10, 4), 0.05); // halfway through its 30 steps
        close(cos.lr_at(0.1, 40, 10, 4), 0.0);
    }
}
